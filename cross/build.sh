#!/usr/bin/env bash
# Builds fieldgate for a Raspberry Pi without a container engine.
#
#   bash cross/build.sh [--profile NAME] [--zig GLIBC] [TARGET...]
#
# TARGETs: aarch64-unknown-linux-gnu (64-bit Raspberry Pi OS, Pi 3/4/5, Zero 2) and
# armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS on a Pi 2 or later), the default
# being both; x86_64-unknown-linux-gnu builds natively, for the amd64 package. The binary
# lands in target/TARGET/PROFILE/fieldgate (PROFILE: release unless --profile says
# otherwise; `ci-cross` is the faster one CI uses).
#
# Default: Debian's cross compilers (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf and
# their libc6-dev-*-cross) as linkers, installed with apt-get when missing, plus `rustup
# target add`. They link against Debian bookworm's glibc 2.36, so the binaries need
# glibc >= 2.34: Raspberry Pi OS Bookworm or later.
#
# --zig GLIBC (e.g. --zig 2.31 for Raspberry Pi OS Bullseye): links with cargo-zigbuild
# and Zig instead, from PyPI into the venv target/zig-venv, against that glibc version.
# These builds get their own directory, target/glibc-GLIBC/TARGET/PROFILE/fieldgate, so
# that cargo never takes one linked against the other glibc for up to date.
#
# Idempotent: a second run installs nothing and cargo rebuilds only what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd -P)"
# Where cargo puts its output (CARGO_TARGET_DIR, if set, like cargo itself).
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# Pinned together: cargo-zigbuild follows Zig's command line, which changes between
# releases.
ZIG_PINS=(cargo-zigbuild==0.24.0 ziglang==0.17.0)
ZIG_VENV="$ROOT/target/zig-venv"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-1}"
}

# shellcheck source=tests/apt.sh
source "$ROOT/tests/apt.sh"

rust_target_add() {
    rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

zig_venv() {
    local stamp="$ZIG_VENV/.fieldgate-pins"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${ZIG_PINS[*]}" ] &&
        [ -x "$ZIG_VENV/bin/cargo-zigbuild" ]; then
        return 0
    fi
    echo "cross/build.sh: creating $ZIG_VENV with ${ZIG_PINS[*]}" >&2
    rm -rf "$ZIG_VENV"
    python3 -m venv "$ZIG_VENV"
    "$ZIG_VENV/bin/python" -m pip install -q --disable-pip-version-check "${ZIG_PINS[@]}"
    echo "${ZIG_PINS[*]}" >"$stamp"
}

profile=release
glibc=""
targets=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
    --zig) glibc="${2:?--zig needs a glibc version, e.g. 2.31}"; shift 2 ;;
    -h | --help) usage 0 ;;
    -*) echo "cross/build.sh: unknown option $1" >&2; usage ;;
    *) targets+=("$1"); shift ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# The Debian packages and linker for each target.
packages=()
for target in "${targets[@]}"; do
    case "$target" in
    aarch64-unknown-linux-gnu) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
    armv7-unknown-linux-gnueabihf) packages+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
    x86_64-unknown-linux-gnu) ;;
    *) echo "cross/build.sh: unsupported target $target" >&2; exit 1 ;;
    esac
done

if [ -n "$glibc" ]; then
    zig_venv
    export PATH="$ZIG_VENV/bin:$PATH"
elif [ "${#packages[@]}" -gt 0 ]; then
    apt_install_missing "${packages[@]}"
fi

for target in "${targets[@]}"; do
    rust_target_add "$target"
    start=$SECONDS
    if [ -n "$glibc" ]; then
        # cargo-zigbuild takes the glibc version as a suffix of the target and writes to
        # TARGET/PROFILE without it.
        binary="$TARGET_DIR/glibc-$glibc/$target/$profile/fieldgate"
        CARGO_TARGET_DIR="$TARGET_DIR/glibc-$glibc" \
            cargo zigbuild --locked --profile "$profile" --bin fieldgate --target "$target.$glibc"
    else
        binary="$TARGET_DIR/$target/$profile/fieldgate"
        case "$target" in
        aarch64-unknown-linux-gnu) gnu=aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) gnu=arm-linux-gnueabihf ;;
        *) gnu="" ;;
        esac
        env_target="$(echo "$target" | tr 'a-z-' 'A-Z_')"
        if [ -n "$gnu" ]; then
            # The linker for rustc, and the C compiler and archiver for ring's C and
            # assembly parts (the cc crate reads CC_<target>, AR_<target>).
            export "CARGO_TARGET_${env_target}_LINKER=$gnu-gcc"
            export "CC_${target//-/_}=$gnu-gcc"
            export "AR_${target//-/_}=$gnu-ar"
        fi
        cargo build --locked --profile "$profile" --bin fieldgate --target "$target"
    fi
    printf 'cross/build.sh: %s: %s bytes (%s s)\n' \
        "$binary" "$(stat -c %s "$binary")" "$((SECONDS - start))"
done
