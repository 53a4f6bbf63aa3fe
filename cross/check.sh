#!/usr/bin/env bash
# Runs cross-built fieldgate binaries under QEMU user emulation, as a smoke test that
# they link, start and serve on the target's instruction set.
#
#   bash cross/check.sh [--profile NAME] [--glibc VER] [TARGET...]
#
# For each TARGET (default: aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf)
# it takes target/TARGET/PROFILE/fieldgate (build it first with cross/build.sh, same
# --profile, default release; with --glibc VER the one `cross/build.sh --zig VER`
# built, in target/glibc-VER/) and checks that
#   - `fieldgate --version` prints the crate's version;
#   - `fieldgate check-config` accepts config/fieldgate.yaml and every config/examples file;
#   - `fieldgate run` (a broker on a free loopback port and a simulated device), started
#     as systemd would start the unit (a notify socket, a state directory), says READY=1,
#     answers an MQTT CONNECT with a CONNACK, and on SIGTERM says STOPPING=1 and exits 0.
# Installs Debian's qemu-user-static when no qemu-user binary is on PATH. The target's
# shared libraries come from the libc6-*-cross packages that cross/build.sh installs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
dir="${CARGO_TARGET_DIR:-target}"
targets=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
    --glibc) dir="${CARGO_TARGET_DIR:-target}/glibc-${2:?--glibc needs a version}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "cross/check.sh: unknown option $1" >&2; exit 1 ;;
    *) targets+=("$1"); shift ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# shellcheck source=tests/apt.sh
source tests/apt.sh

# qemu-user-static's binaries are called qemu-ARCH-static, qemu-user's qemu-ARCH.
qemu_for() {
    command -v "qemu-$1-static" 2>/dev/null || command -v "qemu-$1" 2>/dev/null
}

fail() {
    echo "cross/check.sh: FAILED: $*" >&2
    exit 1
}

if ! qemu_for aarch64 >/dev/null || ! qemu_for arm >/dev/null; then
    echo "cross/check.sh: installing Debian package qemu-user-static" >&2
    apt_install qemu-user-static
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
scratch="$(mktemp -d)"
gateway_pid=""
listener_pid=""
cleanup() {
    if [ -n "$gateway_pid" ]; then kill -KILL "$gateway_pid" 2>/dev/null || true; fi
    if [ -n "$listener_pid" ]; then kill "$listener_pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# A port nobody listens on now (the kernel's pick, released for fieldgate to bind).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# systemd's side of sd_notify: a datagram socket at $1 whose messages are appended to
# $2, one KEY=value per line, until killed (or after 120 s). Run in the background, it
# is the python process itself (exec), so that `kill $!` stops it rather than only the
# subshell around it.
notify_listener() {
    exec python3 -c '
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
sock.settimeout(120)
with open(sys.argv[2], "a") as log:
    while True:
        log.write(sock.recv(4096).decode() + "\n")
        log.flush()
' "$1" "$2"
}

# Waits up to $3 tenths of a second for the line $2 in the file $1, while $4 runs.
wait_for_line() {
    local _
    for _ in $(seq 1 "$3"); do
        grep -qx -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, empty client id) sent through
# bash's /dev/tcp; prints the first 4 bytes of the answer as hex, nothing if refused.
mqtt_connack() {
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 0
    printf '\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00' >&3
    timeout 5 head -c 4 <&3 | od -An -tx1 | tr -d ' \n'
    exec 3<&- 3>&-
}

for target in "${targets[@]}"; do
    case "$target" in
    aarch64-unknown-linux-gnu) arch=aarch64 sysroot=/usr/aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) arch=arm sysroot=/usr/arm-linux-gnueabihf ;;
    *) fail "no QEMU mapping for $target" ;;
    esac
    binary="$dir/$target/$profile/fieldgate"
    [ -x "$binary" ] || fail "$binary is missing (build it with cross/build.sh)"
    qemu="$(qemu_for "$arch")"
    # -L: where QEMU finds the target's dynamic loader and libc.
    run=("$qemu" -L "$sysroot" "$binary")

    printed="$("${run[@]}" --version)"
    [ "$printed" = "fieldgate $version" ] || fail "$target --version printed '$printed'"
    echo "$target: --version: $printed"

    for config in config/fieldgate.yaml config/examples/*.yaml; do
        "${run[@]}" check-config "$config" >/dev/null || fail "$target check-config $config"
    done
    echo "$target: check-config: config/fieldgate.yaml and $(ls config/examples/*.yaml | wc -l) examples ok"

    port="$(free_port)"
    cat >"$scratch/gateway.yaml" <<EOF
gateway:
  id: qemu-check
broker:
  listeners:
    - bind: 127.0.0.1:$port
  allow_anonymous: true
devices:
  - id: demo
    source: sim
    poll: 200ms
    points:
      - id: counter
        sim: counter
EOF
    # As systemd runs the unit: a state directory (StateDirectory=) and a notify socket.
    mkdir -p "$scratch/state-$arch"
    notify="$scratch/notify-$arch.sock" notes="$scratch/notify-$arch.log"
    : >"$notes"
    notify_listener "$notify" "$notes" &
    listener_pid=$!
    for _ in $(seq 1 50); do [ -S "$notify" ] && break; sleep 0.1; done
    [ -S "$notify" ] || fail "the notify socket $notify did not appear"
    STATE_DIRECTORY="$scratch/state-$arch" NOTIFY_SOCKET="$notify" \
        "${run[@]}" run -c "$scratch/gateway.yaml" 2>"$scratch/run-$arch.log" &
    gateway_pid=$!
    # Up to 30 s: QEMU starts slowly on a busy machine.
    if ! wait_for_line "$notes" READY=1 300 "$gateway_pid"; then
        cat "$scratch/run-$arch.log" "$notes" >&2
        fail "$target run: no READY=1"
    fi
    answer="$(mqtt_connack "$port" 2>/dev/null || true)"
    if [ "$answer" != "20020000" ]; then
        cat "$scratch/run-$arch.log" >&2
        fail "$target run: CONNECT on port $port got '${answer:-no answer}', not a CONNACK"
    fi
    kill -TERM "$gateway_pid"
    wait_for_line "$notes" STOPPING=1 100 "$gateway_pid" || true
    for _ in $(seq 1 100); do
        kill -0 "$gateway_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$gateway_pid" 2>/dev/null; then
        cat "$scratch/run-$arch.log" >&2
        fail "$target run: still running 10 s after SIGTERM"
    fi
    code=0
    wait "$gateway_pid" || code=$?
    gateway_pid=""
    kill "$listener_pid" 2>/dev/null || true
    wait "$listener_pid" 2>/dev/null || true
    listener_pid=""
    if [ "$code" -ne 0 ]; then
        cat "$scratch/run-$arch.log" >&2
        fail "$target run: exit status $code after SIGTERM"
    fi
    grep -qx STOPPING=1 "$notes" || fail "$target run: no STOPPING=1 before exiting"
    status="$(sed -n 's/^STATUS=//p' "$notes" | head -n 1)"
    echo "$target: run: READY=1 (STATUS=$status), CONNACK on 127.0.0.1:$port, STOPPING=1 and exit 0 on SIGTERM"
done
