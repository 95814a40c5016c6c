#!/bin/sh
# piuparts on both packages: install, remove and purge each in a fresh Debian 12
# root (from the cached root tarball), failing on anything left behind.
#
#   packaging/deb/piuparts.sh ROOT.tar DEBDIR
#
# piuparts takes its mirror from apt's configuration here, the same one the
# root tarball was built from. Bounded: 20 minutes a package.
set -eu
tar=$(realpath "$1")
debs=$2
# piuparts reads only gzip'ed base tarballs: keep one beside the tar.
root=${tar%.tar}.tgz
if [ ! -f "$root" ] || [ "$tar" -nt "$root" ]; then
    gzip -1 -c "$tar" > "$root.tmp" && mv "$root.tmp" "$root"
fi
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
for deb in "$debs"/python3-aeterna-sdk_*_all.deb "$debs"/aeterna_*.deb; do
    echo "piuparts: $deb"
    timeout 1200 piuparts --basetgz="$root" --distribution=bookworm \
        --no-upgrade-test "$deb"
done
