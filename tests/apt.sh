# Debian packages for the scripts that install what they need (tests/run.sh,
# cross/build.sh, cross/check.sh): sourced, not run. As root directly or through sudo,
# never interactive, waiting for another apt run's lock instead of failing on it, and
# `apt-get update` at most once per script run.

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

# Debian packages from the list that are not installed yet.
missing_packages() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii' ||
            printf '%s\n' "$pkg"
    done
}

# Installs those of the packages that are missing, saying which.
apt_install_missing() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    apt_install "${missing[@]}"
}
