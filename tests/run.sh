#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# 1. Installs the real test peers when missing: Debian's mosquitto, mosquitto-clients and
#    socat, and a Python venv at target/test-venv with pinned paho-mqtt and pymodbus.
# 2. Runs cargo fmt --check, clippy -D warnings, cargo doc (warnings are errors), the doc
#    tests and all tests, with FIELDGATE_REQUIRE_PEERS=1 so that a test never skips
#    because a peer is missing.
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

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        env DEBIAN_FRONTEND=noninteractive "$@"
    else
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    fi
}

# apt-get, waiting for a dpkg/apt lock held by another apt run instead of failing.
apt_get() {
    local attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if as_root apt-get -q -o DPkg::Lock::Timeout=300 "$@"; then
            return 0
        fi
        echo "apt-get $* failed (attempt $attempt); retrying" >&2
        sleep 15
    done
    echo "apt-get $* kept failing" >&2
    return 1
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt_get update >/dev/null
        APT_UPDATED=1
    fi
    apt_get install -y --no-install-recommends "$@"
}

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

banner "all checks passed in $((SECONDS - start)) s"
