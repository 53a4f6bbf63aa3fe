#!/usr/bin/env bash
# Inspects a fieldgate .deb made by packaging/build-deb.sh, without installing it.
#
#   bash packaging/check-deb.sh DEB
#
# Checks the control fields (name, version from Cargo.toml, architecture, Depends on
# libc6), the file list with owners and modes, that /etc/fieldgate/fieldgate.yaml is
# the one conffile, that the maintainer scripts are there, executable, parse, and do
# what the README promises (user, enable, start or restart, purge). Then it unpacks the
# package and checks that the packaged files are the repository's, that the binary is
# for the package's architecture, runs it (natively, or under qemu-user when available)
# with --version and check-config on the packaged configuration, and runs
# systemd/verify.sh on the packaged unit, sysusers and tmpfiles files.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

deb="${1:?usage: packaging/check-deb.sh DEB}"
[ -f "$deb" ] || { echo "packaging/check-deb.sh: no file $deb" >&2; exit 1; }

fail() {
    echo "packaging/check-deb.sh: FAILED: $*" >&2
    exit 1
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

field() { dpkg-deb -f "$deb" "$1"; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
arch="$(field Architecture)"
[ "$(field Package)" = fieldgate ] || fail "Package is '$(field Package)'"
[ "$(field Version)" = "$version-1" ] || fail "Version is '$(field Version)', not $version-1"
case "$arch" in
amd64) machine="Advanced Micro Devices X86-64" qemu="" sysroot="" ;;
arm64) machine="AArch64" qemu=aarch64 sysroot=/usr/aarch64-linux-gnu ;;
armhf) machine="ARM" qemu=arm sysroot=/usr/arm-linux-gnueabihf ;;
*) fail "Architecture is '$arch'" ;;
esac
field Depends | grep -Eq '(^|, )libc6 \(>= 2\.[0-9]+\)' || fail "Depends lacks libc6: $(field Depends)"
echo "control: fieldgate $(field Version) $arch; Depends: $(field Depends)"

# Every file the package must hold, with its mode and owner as dpkg-deb -c prints them.
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' >"$scratch/contents"
for expected in \
    "-rwxr-xr-x root/root ./usr/bin/fieldgate" \
    "-rw-r--r-- root/root ./lib/systemd/system/fieldgate.service" \
    "-rw-r--r-- root/root ./usr/lib/sysusers.d/fieldgate.conf" \
    "-rw-r--r-- root/root ./usr/lib/tmpfiles.d/fieldgate.conf" \
    "-rw-r--r-- root/root ./etc/fieldgate/fieldgate.yaml" \
    "-rw-r--r-- root/root ./usr/share/doc/fieldgate/copyright" \
    "-rw-r--r-- root/root ./usr/share/doc/fieldgate/README.md"; do
    grep -qxF -- "$expected" "$scratch/contents" || fail "no '$expected' in the package"
done
for example in config/examples/*.yaml; do
    grep -q " ./usr/share/doc/fieldgate/examples/$(basename "$example")\$" "$scratch/contents" ||
        fail "no example $(basename "$example")"
done
# Nothing that belongs to the machine: the credential file and the state directory are
# made on the machine (tmpfiles, StateDirectory=), never shipped.
if grep -Eq '\./(var/|etc/fieldgate/upstream-password)' "$scratch/contents"; then
    fail "the package ships state or a secret: $(grep -E '\./(var/|etc/fieldgate/up)' "$scratch/contents")"
fi
echo "contents: $(grep -vc '/$' "$scratch/contents") files as expected"

dpkg-deb -e "$deb" "$scratch/control"
[ "$(cat "$scratch/control/conffiles")" = /etc/fieldgate/fieldgate.yaml ] ||
    fail "conffiles: $(cat "$scratch/control/conffiles")"
for script in postinst prerm postrm; do
    [ -x "$scratch/control/$script" ] || fail "no executable $script"
    sh -n "$scratch/control/$script" || fail "$script does not parse"
done
# What the scripts must do, by the commands that do it.
grep -q 'systemd-sysusers fieldgate.conf' "$scratch/control/postinst" || fail "postinst makes no user"
grep -q 'systemd-tmpfiles --create fieldgate.conf' "$scratch/control/postinst" ||
    fail "postinst makes no credential file"
grep -q 'deb-systemd-helper enable' "$scratch/control/postinst" || fail "postinst enables nothing"
grep -q 'deb-systemd-invoke start' "$scratch/control/postinst" || fail "postinst starts nothing"
grep -q 'deb-systemd-invoke restart' "$scratch/control/postinst" || fail "postinst restarts nothing"
grep -q 'deb-systemd-invoke stop' "$scratch/control/prerm" || fail "prerm stops nothing"
grep -q 'deb-systemd-helper purge' "$scratch/control/postrm" || fail "postrm purges nothing"
echo "control files: conffiles /etc/fieldgate/fieldgate.yaml; postinst, prerm, postrm ok"

root="$scratch/root"
dpkg-deb -x "$deb" "$root"
for pair in \
    "systemd/fieldgate.service lib/systemd/system/fieldgate.service" \
    "systemd/fieldgate.sysusers usr/lib/sysusers.d/fieldgate.conf" \
    "systemd/fieldgate.tmpfiles usr/lib/tmpfiles.d/fieldgate.conf" \
    "config/fieldgate.yaml etc/fieldgate/fieldgate.yaml"; do
    read -r source packaged <<<"$pair"
    cmp -s "$source" "$root/$packaged" || fail "/$packaged differs from $source"
done

binary="$root/usr/bin/fieldgate"
readelf -h "$binary" | grep -q "Machine: *$machine\$" ||
    fail "the binary is not for $arch: $(readelf -h "$binary" | grep Machine)"
run=()
if [ -z "$qemu" ]; then
    [ "$(uname -m)" = x86_64 ] && run=("$binary")
elif command -v "qemu-$qemu-static" >/dev/null 2>&1 && [ -d "$sysroot" ]; then
    run=("qemu-$qemu-static" -L "$sysroot" "$binary")
fi
if [ "${#run[@]}" -gt 0 ]; then
    [ "$("${run[@]}" --version)" = "fieldgate $version" ] || fail "--version printed something else"
    "${run[@]}" check-config "$root/etc/fieldgate/fieldgate.yaml" >/dev/null ||
        fail "the packaged configuration does not pass check-config"
    echo "binary: $machine; --version and check-config /etc/fieldgate/fieldgate.yaml ok"
else
    echo "binary: $machine (not run: no way to run $arch binaries here)"
fi

bash systemd/verify.sh --unit "$root/lib/systemd/system/fieldgate.service" \
    --sysusers "$root/usr/lib/sysusers.d/fieldgate.conf" \
    --tmpfiles "$root/usr/lib/tmpfiles.d/fieldgate.conf" "$binary"
echo "packaging/check-deb.sh: $deb ok"
