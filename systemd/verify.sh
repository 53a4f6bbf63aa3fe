#!/usr/bin/env bash
# Checks fieldgate's systemd files statically (no running systemd needed).
#
#   bash systemd/verify.sh [--unit FILE] [--sysusers FILE] [--tmpfiles FILE] BINARY
#
# - `systemd-analyze verify` on the unit must pass and print nothing (it also warns about
#   unknown keys while exiting 0). It insists that ExecStart's program exists, so it
#   checks a copy whose /usr/bin/fieldgate is replaced by BINARY.
# - `systemd-analyze security --offline=true` prints its table and overall exposure,
#   which must stay at or below FIELDGATE_MAX_EXPOSURE (default 2.0; 10 is worst).
# - systemd-sysusers and systemd-tmpfiles apply the snippets to a scratch root, so their
#   syntax and effect (user fieldgate, group gpio, the credential file) are checked.
# Defaults: the files in systemd/. packaging/check-deb.sh runs it on a package's copies.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

unit=systemd/fieldgate.service
sysusers=systemd/fieldgate.sysusers
tmpfiles=systemd/fieldgate.tmpfiles
binary=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --unit) unit="$2"; shift 2 ;;
    --sysusers) sysusers="$2"; shift 2 ;;
    --tmpfiles) tmpfiles="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "systemd/verify.sh: unknown option $1" >&2; exit 1 ;;
    *) binary="$1"; shift ;;
    esac
done
[ -n "$binary" ] || { echo "usage: systemd/verify.sh [options] BINARY" >&2; exit 1; }
[ -x "$binary" ] || { echo "systemd/verify.sh: $binary is not an executable" >&2; exit 1; }
max_exposure="${FIELDGATE_MAX_EXPOSURE:-2.0}"

fail() {
    echo "systemd/verify.sh: FAILED: $*" >&2
    exit 1
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# The unit under its own name: verify and security derive the unit's name from the file.
grep -q '^ExecStart=/usr/bin/fieldgate ' "$unit" || fail "$unit: ExecStart is not /usr/bin/fieldgate"
sed "s|^ExecStart=/usr/bin/fieldgate |ExecStart=$(realpath "$binary") |" "$unit" \
    >"$scratch/fieldgate.service"

said="$(systemd-analyze verify "$scratch/fieldgate.service" 2>&1)" || fail "verify: $said"
[ -z "$said" ] || fail "verify passed with warnings: $said"
echo "systemd-analyze verify: ok"

systemd-analyze security --offline=true --no-pager "$scratch/fieldgate.service" \
    >"$scratch/security.txt" 2>&1 || true
exposure="$(sed -n 's/.*Overall exposure level for fieldgate.service: \([0-9.]*\).*/\1/p' \
    "$scratch/security.txt")"
[ -n "$exposure" ] || { cat "$scratch/security.txt" >&2; fail "security printed no exposure"; }
# The settings it counts as exposed (those with a weight in the last column), for the log.
awk '$NF ~ /^[0-9]+\.[0-9]+$/ && !/Overall/ { printf "  exposed: %s %s\n", $2, $NF }' \
    "$scratch/security.txt"
echo "systemd-analyze security --offline=true: overall exposure $exposure (at most $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' ||
    fail "exposure $exposure is above $max_exposure"

# A scratch root with this machine's user database, so new ids do not clash with it.
root="$scratch/root"
mkdir -p "$root/etc" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp /etc/passwd /etc/group "$root/etc/"
cp "$sysusers" "$root/usr/lib/sysusers.d/fieldgate.conf"
cp "$tmpfiles" "$root/usr/lib/tmpfiles.d/fieldgate.conf"
systemd-sysusers --root="$root" fieldgate.conf >/dev/null 2>&1 || fail "systemd-sysusers"
grep -q '^fieldgate:x:[0-9]*:[0-9]*:[^:]*:/var/lib/fieldgate:' "$root/etc/passwd" ||
    fail "sysusers made no user fieldgate with home /var/lib/fieldgate"
grep -q '^gpio:' "$root/etc/group" || fail "sysusers made no group gpio"
systemd-tmpfiles --root="$root" --create fieldgate.conf || fail "systemd-tmpfiles"
[ "$(stat -c '%a %U' "$root/etc/fieldgate/upstream-password")" = "600 root" ] ||
    fail "tmpfiles did not create /etc/fieldgate/upstream-password 0600 root"
echo "systemd-sysusers, systemd-tmpfiles: ok (user fieldgate, group gpio, credential file 0600)"
