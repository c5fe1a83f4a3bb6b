#!/usr/bin/env bash
# Builds a real Asterisk for the tests, once per machine, offline.
#
#   scripts/build-asterisk.sh [--print-prefix]
#
# Source: $ASTERISK_SRC_DIR (default ../shared/asterisk/src beside the
# repository), which holds asterisk-*.tar.xz, pjproject-*.tar.bz2 and
# menuselect.makeopts (see its BUILD.md). The install tree lands in
# $ASTERISK_CACHE_DIR (default ~/.cache/asterisk-gitops) under a name keyed
# by the archives' and the module selection's hashes, so a changed source or
# selection builds anew and an unchanged one is reused. Concurrent callers
# wait on a lock; a half-finished build is never used (it is renamed into
# place only once `make install` succeeded).
#
# Prints the install prefix on its last line. With --print-prefix it only
# prints where the prefix would be and exits 0 if it is built, 1 if not.
# Debian packages it needs: see BUILD_DEPS below (.ci/run installs them).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
src="${ASTERISK_SRC_DIR:-$here/../shared/asterisk/src}"
cache="${ASTERISK_CACHE_DIR:-${HOME:-/root}/.cache/asterisk-gitops}"

if [ ! -d "$src" ]; then
  echo "build-asterisk: no Asterisk source directory at $src (set ASTERISK_SRC_DIR)" >&2
  exit 3
fi
src="$(cd "$src" && pwd)"
tarball=$(ls "$src"/asterisk-*.tar.* 2>/dev/null | head -n1 || true)
pjtar=$(ls "$src"/pjproject-*.tar.* 2>/dev/null | head -n1 || true)
opts="$src/menuselect.makeopts"
for f in "$tarball" "$pjtar" "$opts"; do
  if [ -z "$f" ] || [ ! -f "$f" ]; then
    echo "build-asterisk: $src lacks an asterisk archive, a pjproject archive or menuselect.makeopts" >&2
    exit 3
  fi
done

version=$(basename "$tarball" | sed -E 's/^asterisk-(.*)\.tar\..*$/\1/')
# The key: both archives, the module selection and this script.
key=$(cat "$tarball" "$pjtar" "$opts" "$0" | sha256sum | cut -c1-12)
prefix="$cache/asterisk-$version-$key"

if [ "${1:-}" = "--print-prefix" ]; then
  echo "$prefix"
  [ -x "$prefix/sbin/asterisk" ]
  exit $?
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$prefix/sbin/asterisk" ]; then
  echo "build-asterisk: using the cached build" >&2
  echo "$prefix"
  exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$cache/build-$version-$key.log"
echo "build-asterisk: building Asterisk $version into $prefix (log: $log); about 4 minutes on 2 cores" >&2
start=$(date +%s)
{
  mkdir -p "$work/externals"
  cp "$pjtar" "$work/externals/"
  tar -xf "$tarball" -C "$work"
  cd "$work/asterisk-$version"
  ./configure --prefix="$prefix" --with-pjproject-bundled \
    --with-externals-cache="$work/externals" --with-jansson-bundled=no
  make menuselect.makeopts
  cp "$opts" menuselect.makeopts
  make -j"$(nproc)"
  make install DESTDIR="$work/stage"
} >"$log" 2>&1 || {
  echo "build-asterisk: the build failed; the last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}
# The prefix is compiled in (default paths, the library path), so the
# install went to a staging root and the finished tree is renamed into place.
rm -rf "$prefix"
mv "$work/stage$prefix" "$prefix"
echo "build-asterisk: built in $(( $(date +%s) - start )) s" >&2
echo "$prefix"
