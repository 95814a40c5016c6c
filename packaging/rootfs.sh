#!/bin/sh
# Build a minimal Debian 12 root file system as a tarball, from the mirror that
# apt on this machine is configured with (no registry, no other network host).
# The package and container tests share it; it is cached under build/.
#
#   packaging/rootfs.sh [OUT.tar] [EXTRA-PACKAGES...]
#
# OUT defaults to build/rootfs/bookworm.tar.  Exits 0 at once when OUT exists.
# Exits 3 (and says why) when it cannot be built here: not root, no mmdebstrap,
# no mirror.  Bounded: mmdebstrap is given 15 minutes.
set -eu
out=${1:-build/rootfs/bookworm.tar}
[ $# -gt 0 ] && shift
[ -f "$out" ] && [ -s "$out" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then echo "rootfs: needs root (mmdebstrap --mode=root)"; exit 3; fi
if ! command -v mmdebstrap >/dev/null 2>&1; then echo "rootfs: mmdebstrap is not installed"; exit 3; fi
# The first deb URI apt knows for Debian proper (sources.list or deb822 .sources).
mirror=$( { grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '{print $2}'; \
            grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | awk '{print $2}'; } | grep -v security | head -n1 )
if [ -z "$mirror" ]; then echo "rootfs: no Debian mirror in apt's configuration"; exit 3; fi
extra=""
for p in "$@"; do extra="$extra${extra:+,}$p"; done
mkdir -p "$(dirname "$out")"
tmp="${out%.tar}.tmp$$.tar"
trap 'rm -f "$tmp"' EXIT
timeout 900 mmdebstrap --quiet --mode=root --variant=apt \
    ${extra:+--include="$extra"} bookworm "$tmp" "$mirror"
mv "$tmp" "$out"
trap - EXIT
echo "rootfs: built $out"
