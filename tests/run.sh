#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# 1. Installs the real test peers when missing: Debian's mosquitto, mosquitto-clients and
#    socat, and a Python venv at target/test-venv with pinned paho-mqtt and pymodbus.
# 2. Runs cargo fmt --check, clippy -D warnings, cargo doc (warnings are errors), the doc
#    tests and all tests, with FIELDGATE_REQUIRE_PEERS=1 so that a test never skips
#    because a peer is missing.
# 3. Deployment: builds the aarch64 and armv7 binaries with Debian's cross linkers
#    (cross/build.sh, the fast ci-cross profile) and runs them under qemu-user
#    (cross/check.sh), then builds the amd64, arm64 and armhf .debs and inspects them
#    (packaging/check-deb.sh, which also runs systemd-analyze verify and security on the
#    packaged unit through systemd/verify.sh).
#
# Idempotent: a second run installs nothing. Works from any directory, as root or with sudo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd -P)"

# Python test peers, pinned to versions checked to install on Debian bookworm's Python 3.11.
PY_PINS=(paho-mqtt==2.2.0 pymodbus==3.16.1 pyserial==3.5)
PY_IMPORTS="import paho.mqtt.client, pymodbus, serial"
VENV="$ROOT/target/test-venv"

banner() { printf '\n==> %s\n' "$*"; }

# shellcheck source=tests/apt.sh
source "$ROOT/tests/apt.sh"

mosquitto_path() {
    command -v mosquitto 2>/dev/null && return 0
    [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto && return 0
    return 1
}

# Tests start their own brokers on free ports; a packaged service must not linger on 1883.
stop_mosquitto_service() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        as_root systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/mosquitto ]; then
        as_root /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
        as_root update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
}

install_system_peers() {
    local missing=()
    mosquitto_path >/dev/null || missing+=(mosquitto)
    { command -v mosquitto_pub && command -v mosquitto_sub; } >/dev/null 2>&1 ||
        missing+=(mosquitto-clients)
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    if [ "${#missing[@]}" -gt 0 ]; then
        banner "installing Debian packages: ${missing[*]}"
        apt_install "${missing[@]}"
        case " ${missing[*]} " in *" mosquitto "*) stop_mosquitto_service ;; esac
    fi
}

# What the deployment stage needs: cross linkers with the targets' C libraries (which
# also serve qemu-user as the targets' root), qemu-user, systemd-analyze, dpkg-deb.
install_deploy_tools() {
    local missing=()
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
    [ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || missing+=(libc6-dev-arm64-cross)
    command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || missing+=(gcc-arm-linux-gnueabihf)
    [ -e /usr/arm-linux-gnueabihf/lib/crt1.o ] || missing+=(libc6-dev-armhf-cross)
    { command -v qemu-aarch64-static && command -v qemu-arm-static; } >/dev/null 2>&1 ||
        missing+=(qemu-user-static)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
    if [ "${#missing[@]}" -gt 0 ]; then
        banner "installing Debian packages: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# A Python that can create a venv: python3 on PATH, else Debian's, else install python3-venv.
venv_python() {
    local candidate
    for candidate in "$(command -v python3 2>/dev/null || true)" /usr/bin/python3; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            "$candidate" -c 'import ensurepip, venv' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    banner "installing Debian packages: python3 python3-venv" >&2
    apt_install python3 python3-venv >&2 || return 1
    echo /usr/bin/python3
}

install_python_peers() {
    local stamp="$VENV/.fieldgate-pins"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PY_PINS[*]}" ] &&
        "$VENV/bin/python" -c "$PY_IMPORTS" >/dev/null 2>&1; then
        return 0
    fi
    banner "creating $VENV with ${PY_PINS[*]}"
    local python
    python="$(venv_python)"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PINS[@]}"
    "$VENV/bin/python" -c "$PY_IMPORTS"
    echo "${PY_PINS[*]}" >"$stamp"
}

start=$SECONDS
banner "test peers"
install_system_peers
install_python_peers
install_deploy_tools
MOSQUITTO="$(mosquitto_path)"
export FIELDGATE_REQUIRE_PEERS=1
export FIELDGATE_TEST_PYTHON="$VENV/bin/python"
export FIELDGATE_MOSQUITTO="$MOSQUITTO"
echo "mosquitto: $MOSQUITTO; python: $FIELDGATE_TEST_PYTHON ($((SECONDS - start)) s)"

step() {
    banner "$*"
    local t=$SECONDS
    if ! "$@"; then
        echo "FAILED: $*" >&2
        exit 1
    fi
    echo "ok: $* ($((SECONDS - t)) s)"
}

step cargo fmt --check
step cargo clippy --all-targets --locked -- -D warnings
step env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
step cargo test --doc --locked
step cargo test --all-targets --locked

# Deployment. ci-cross: unoptimized, about a minute per target instead of several for the
# release profile's fat LTO; what is checked here (it links, starts, packages) is the same.
# The amd64 package takes the binary the tests above built; --fast: gzip -1, not xz.
deploy_start=$SECONDS
step bash cross/build.sh --profile ci-cross aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
step bash cross/check.sh --profile ci-cross aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
step bash packaging/build-deb.sh --arch amd64 --binary "${CARGO_TARGET_DIR:-target}/debug/fieldgate" --fast
step bash packaging/build-deb.sh --arch arm64 --profile ci-cross --fast
step bash packaging/build-deb.sh --arch armhf --profile ci-cross --fast
for arch in amd64 arm64 armhf; do
    step bash packaging/check-deb.sh "target/deb/fieldgate_${VERSION}-1_$arch.deb"
done
echo "deployment checks: $((SECONDS - deploy_start)) s"

banner "all checks passed in $((SECONDS - start)) s"
