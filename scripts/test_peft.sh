#!/usr/bin/env bash
# The torch + peft job, apart from the main CI (scripts/test.sh): peft loads an adapter that
# rewardkit trained and scores as rewardkit does. Installs torch, transformers and peft from
# PyPI into target/torchenv once (several GB), then runs the ignored test that needs them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/torchenv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch transformers peft safetensors
fi
export REWARDKIT_TORCH_PYTHON="$PWD/$VENV/bin/python"
cargo test --release --test it -- --ignored peft_loads_an_adapter_rewardkit_trained "$@"
