#!/usr/bin/env bash
# Builds fieldgate's Debian package with dpkg-deb (no cargo-deb to build first).
#
#   bash packaging/build-deb.sh [--arch amd64|arm64|armhf] [--profile NAME] [--glibc VER]
#                               [--binary FILE] [--fast]
#
# --arch picks the Rust target (amd64: x86_64-unknown-linux-gnu, arm64:
# aarch64-unknown-linux-gnu, armhf: armv7-unknown-linux-gnueabihf; default amd64) and
# cross/build.sh builds its binary (a no-op when it is up to date). --profile defaults
# to release; CI packages its faster ci-cross build. --glibc 2.31 builds with
# cross/build.sh --zig 2.31, for Raspberry Pi OS Bullseye. --binary FILE packages that
# binary (for ARCH) instead, with its debug information stripped: CI packages the one its
# tests just built. --fast compresses with gzip -1 instead of xz: for CI, where the
# package is only inspected.
#
# The package, target/deb/fieldgate_VERSION-1_ARCH.deb, holds
#   /usr/bin/fieldgate
#   /lib/systemd/system/fieldgate.service      (systemd/fieldgate.service)
#   /usr/lib/sysusers.d/fieldgate.conf         (systemd/fieldgate.sysusers)
#   /usr/lib/tmpfiles.d/fieldgate.conf         (systemd/fieldgate.tmpfiles)
#   /etc/fieldgate/fieldgate.yaml              (a conffile: config/fieldgate.yaml)
#   /usr/share/doc/fieldgate/                  (README.md, copyright, examples/)
# and the maintainer scripts in packaging/deb. Depends: is read off the binary (the
# glibc version its symbols need, libgcc_s for unwinding). packaging/check-deb.sh
# inspects the result.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

arch=amd64
profile=release
zig=()
binary=""
compression=(-Zxz)
while [ "$#" -gt 0 ]; do
    case "$1" in
    --arch) arch="${2:?--arch needs amd64, arm64 or armhf}"; shift 2 ;;
    --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
    --glibc) zig=(--zig "${2:?--glibc needs a version, e.g. 2.31}"); shift 2 ;;
    --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
    --fast) compression=(-Zgzip -z1); shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "packaging/build-deb.sh: unknown argument $1" >&2; exit 1 ;;
    esac
done
case "$arch" in
amd64) target=x86_64-unknown-linux-gnu ;;
arm64) target=aarch64-unknown-linux-gnu ;;
armhf) target=armv7-unknown-linux-gnueabihf ;;
*) echo "packaging/build-deb.sh: unknown architecture $arch" >&2; exit 1 ;;
esac

strip_debug=""
if [ -n "$binary" ]; then
    [ -x "$binary" ] || { echo "packaging/build-deb.sh: $binary is not an executable" >&2; exit 1; }
    case "$arch" in
    amd64) strip_debug=strip ;;
    arm64) strip_debug=aarch64-linux-gnu-strip ;;
    armhf) strip_debug=arm-linux-gnueabihf-strip ;;
    esac
else
    bash cross/build.sh --profile "$profile" "${zig[@]}" "$target"
    target_dir="${CARGO_TARGET_DIR:-target}"
    binary="$target_dir/$target/$profile/fieldgate"
    [ "${#zig[@]}" -eq 0 ] || binary="$target_dir/glibc-${zig[1]}/$target/$profile/fieldgate"
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
# -1: the first packaging of that upstream version.
deb_version="$version-1"

# Dependencies from what the binary links: a shared library we cannot map fails the
# build rather than making a package that does not start.
depends=()
glibc="$(readelf -W --version-info "$binary" | sed -n 's/.*Name: GLIBC_\([0-9.]*\).*/\1/p' |
    sort -V | tail -n 1)"
while read -r needed; do
    case "$needed" in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*)
        [ -n "$glibc" ] || { echo "no GLIBC version in $binary" >&2; exit 1; }
        dep="libc6 (>= $glibc)"
        ;;
    libgcc_s.so.1) dep="libgcc-s1" ;;
    *) echo "packaging/build-deb.sh: no Debian package known for $needed" >&2; exit 1 ;;
    esac
    case " ${depends[*]:-} " in *" $dep "*) ;; *) depends+=("$dep") ;; esac
done < <(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
depends_field="$(printf '%s, ' "${depends[@]}")"
depends_field="${depends_field%, }"

out=target/deb
stage="$out/fieldgate_${deb_version}_$arch"
rm -rf "$stage"
install -d "$stage/DEBIAN"
install -D -m 0755 "$binary" "$stage/usr/bin/fieldgate"
[ -z "$strip_debug" ] || "$strip_debug" --strip-debug "$stage/usr/bin/fieldgate"
# /lib, not /usr/lib: where bookworm's and bullseye's deb-systemd-helper look first (the
# same directory where /usr is merged).
install -D -m 0644 systemd/fieldgate.service "$stage/lib/systemd/system/fieldgate.service"
install -D -m 0644 systemd/fieldgate.sysusers "$stage/usr/lib/sysusers.d/fieldgate.conf"
install -D -m 0644 systemd/fieldgate.tmpfiles "$stage/usr/lib/tmpfiles.d/fieldgate.conf"
install -D -m 0644 config/fieldgate.yaml "$stage/etc/fieldgate/fieldgate.yaml"
install -D -m 0644 README.md "$stage/usr/share/doc/fieldgate/README.md"
install -D -m 0644 packaging/deb/copyright "$stage/usr/share/doc/fieldgate/copyright"
install -d "$stage/usr/share/doc/fieldgate/examples"
install -m 0644 config/examples/*.yaml "$stage/usr/share/doc/fieldgate/examples/"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$script" "$stage/DEBIAN/$script"
done
echo /etc/fieldgate/fieldgate.yaml >"$stage/DEBIAN/conffiles"

installed_size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: fieldgate
Version: $deb_version
Architecture: $arch
Maintainer: fieldgate developers <fieldgate@invalid>
Installed-Size: $installed_size
Depends: $depends_field
Recommends: systemd
Section: net
Priority: optional
Description: edge gateway: Modbus, serial and GPIO to MQTT
 One binary that polls Modbus RTU/TCP devices, serial sensors and GPIO pins and
 publishes their readings over MQTT with its own client, keeping an on-disk queue
 while the uplink is down, with a local MQTT 3.1.1/5.0 broker for the LAN.
 .
 Runs as the systemd service fieldgate.service (user fieldgate) on
 /etc/fieldgate/fieldgate.yaml; the shipped file is the embedded default: a broker on
 127.0.0.1:1883 and a simulated device.
EOF

deb="$out/fieldgate_${deb_version}_$arch.deb"
# --root-owner-group: files owned by root in the package without fakeroot.
dpkg-deb --root-owner-group "${compression[@]}" --build "$stage" "$deb" >/dev/null
echo "packaging/build-deb.sh: $deb ($(stat -c %s "$deb") bytes; Depends: $depends_field)"
