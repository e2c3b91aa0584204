import os
import subprocess

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The project's tiny reward model, built by the rewardkit CLI."""
    existing = os.environ.get("REWARDKIT_TEST_MODEL")
    if existing:
        return existing
    cli = os.environ.get("REWARDKIT_CLI", os.path.join(REPO, "target", "release", "rewardkit"))
    out = str(tmp_path_factory.mktemp("model") / "tiny-rm")
    subprocess.run([cli, "init-tiny", "--out", out, "--corpus", os.path.join(REPO, "data", "hh-rlhf", "harmless-base-test.jsonl.gz")], check=True)
    return out
