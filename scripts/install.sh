#!/usr/bin/env bash
# Installs rewardkit under a prefix: the shared and static libraries (with soname links), the C
# header, the C++ wrapper, the CLI, a pkg-config file and a CMake package.
#
#   scripts/install.sh /usr/local          # or any prefix; default /usr/local
#   pkg-config --cflags --libs rewardkit    # with PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
#   find_package(rewardkit) -> rewardkit::rewardkit   (CMAKE_PREFIX_PATH=$PREFIX)
#
# REWARDKIT_PREBUILT=DIR installs librewardkit.so/.a from DIR and REWARDKIT_CLI=FILE the CLI,
# without building (the tests use this from inside `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(mkdir -p "${1:-/usr/local}" && cd "${1:-/usr/local}" && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR=${VERSION%%.*}
MINOR=${VERSION#*.}; MINOR=${MINOR%%.*}
# The soname's ABI version (build.rs): MAJOR from 1.0 on, 0.MINOR before.
if [ "$MAJOR" = 0 ]; then ABI="0.$MINOR"; else ABI=$MAJOR; fi

if [ -n "${REWARDKIT_PREBUILT:-}" ]; then
  TARGET=$REWARDKIT_PREBUILT
else
  cargo build --release --lib --bin rewardkit
  TARGET=${CARGO_TARGET_DIR:-target}/release
fi
CLI=${REWARDKIT_CLI:-$TARGET/rewardkit}

install -d "$PREFIX/lib/pkgconfig" "$PREFIX/lib/cmake/rewardkit" "$PREFIX/include" "$PREFIX/bin"
install -m 755 "$TARGET/librewardkit.so" "$PREFIX/lib/librewardkit.so.$VERSION"
ln -sf "librewardkit.so.$VERSION" "$PREFIX/lib/librewardkit.so.$ABI"
ln -sf "librewardkit.so.$ABI" "$PREFIX/lib/librewardkit.so"
install -m 644 "$TARGET/librewardkit.a" "$PREFIX/lib/librewardkit.a"
install -m 644 include/rewardkit.h bindings/cpp/rewardkit.hpp "$PREFIX/include/"
install -m 755 "$CLI" "$PREFIX/bin/rewardkit"
subst() { sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@MAJOR@|$MAJOR|g" -e "s|@MINOR@|$MINOR|g" "$1" > "$2"; }
subst packaging/rewardkit.pc.in "$PREFIX/lib/pkgconfig/rewardkit.pc"
subst packaging/rewardkitConfig.cmake.in "$PREFIX/lib/cmake/rewardkit/rewardkitConfig.cmake"
subst packaging/rewardkitConfigVersion.cmake.in "$PREFIX/lib/cmake/rewardkit/rewardkitConfigVersion.cmake"
echo "installed rewardkit $VERSION under $PREFIX"
