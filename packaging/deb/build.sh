#!/bin/sh
# Build the Debian packages aeterna and python3-aeterna-sdk into OUTDIR
# (default build/deb), from a copy of the tree (dh writes into debian/).
#
#   packaging/deb/build.sh [OUTDIR]
#
# Cached: the build is skipped when the sources (every file git tracks, or
# would track) are those of the last build. Exits 3, saying why, when it
# cannot build here (no dpkg-buildpackage: run `make sysdeps` as root).
set -eu
out=${1:-build/deb}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
if ! command -v dpkg-buildpackage >/dev/null 2>&1; then
    echo "deb: dpkg-buildpackage is not installed (make sysdeps installs it)"; exit 3
fi
# Debian's own interpreter and tools first: a pyenv or venv python3 first on
# PATH makes pybuild build for the wrong interpreter.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME || true

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' aeterna/__init__.py)
changelog=$(sed -n '1s/^aeterna (\(.*\)-[0-9]*).*/\1/p' packaging/deb/debian/changelog)
if [ "$version" != "$changelog" ]; then
    echo "deb: aeterna/__init__.py says $version, packaging/deb/debian/changelog $changelog;"
    echo "deb: add a changelog entry (dch -v $version-1) first"; exit 1
fi

files=$(mktemp)
trap 'rm -f "$files"' EXIT
# The tree's files: git's list in a checkout, else everything but build output.
{ git ls-files -co --exclude-standard 2>/dev/null \
  || find . -type f -not -path './.git/*' -not -path './.venv/*' | sed 's|^\./||'; } \
    | grep -v -e '^build/' -e '^dist/' -e '__pycache__' | while read -r f; do
    [ -f "$f" ] && printf '%s\n' "$f"
done | LC_ALL=C sort > "$files"
sum=$(xargs -d '\n' sha256sum < "$files" | sha256sum | cut -c1-16)
mkdir -p "$out"
if [ -f "$out/.sources" ] && [ "$(cat "$out/.sources")" = "$sum" ] \
        && ls "$out"/aeterna_"$version"-1_*.deb >/dev/null 2>&1 \
        && ls "$out"/python3-aeterna-sdk_*_all.deb >/dev/null 2>&1; then
    exit 0
fi

work="$out/src"
rm -rf "$work"
mkdir -p "$work/aeterna-$version"
tar -cf - -T "$files" | tar -xf - -C "$work/aeterna-$version"
cp -r packaging/deb/debian "$work/aeterna-$version/debian"
rm -f "$out"/*.deb "$out/.sources"
( cd "$work/aeterna-$version" && \
  DEB_BUILD_OPTIONS="noddebs${DEB_BUILD_OPTIONS:+ $DEB_BUILD_OPTIONS}" \
  nice -n 10 dpkg-buildpackage --build=binary --no-sign -Zxz -z1 > ../build.log 2>&1 ) || {
    tail -n 40 "$work/build.log"; echo "deb: the build failed; see $work/build.log"; exit 1; }
mv "$work"/*.deb "$out"/
rm -rf "$work/aeterna-$version"
echo "$sum" > "$out/.sources"
ls "$out"/*.deb
