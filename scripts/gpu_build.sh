#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on the GPU machine, into .gpu-dist (git-ignored, carried
# there): the CLI and the device tests with the `cuda` feature (../shared/gpu/build-cuda.sh,
# 10-20 min cold, about a minute after edits), and NVIDIA's compute-sanitizer for
# DEBUG_TRAIN=1 (memcheck names a faulting kernel and address; the GPU machine has the driver
# but no CUDA toolkit). About 30 MB, within what a device run can carry.
#
#   scripts/gpu_build.sh
#   bash .gpu-dist/run-on-gpu.sh bash scripts/gpu_check.sh   # on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=.gpu-dist
# Only what gpu_check.sh runs: the CLI and the device tests (packing every test binary with xz
# takes minutes on two cores).
../shared/gpu/build-cuda.sh . --bin rewardkit --test gpu
find "$DIST" -maxdepth 1 -type f ! -name rewardkit.xz ! -name test-gpu.xz ! -name run-on-gpu.sh -delete

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# 13.0.x, like the rest of the toolchain: the GPU machine's driver is CUDA 13.0.
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$WORK" nvidia-cuda-sanitizer-api==13.0.85
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$WORK"/*.whl "$WORK/wheel"
# Keep the wheel's layout (bin/ beside lib/): compute-sanitizer finds its injection libraries
# there. zipfile drops the executable bit. run-on-gpu.sh unpacks every *.xz beside it, so this
# lands as compute-sanitizer.tar.
chmod +x "$WORK/wheel/nvidia/cu13/bin/compute-sanitizer"
tar -C "$WORK/wheel/nvidia/cu13" -cf "$DIST/compute-sanitizer.tar" bin lib
xz -6 -T0 -f "$DIST/compute-sanitizer.tar"
ls -la "$DIST"
du -sh "$DIST"
