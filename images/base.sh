#!/bin/sh
# Make a local stand-in for python:3.11-slim-bookworm where no image registry can be reached, and cache it:
# Debian bookworm (debootstrap, minbase) with this machine's CPython 3.11 in /usr/local — the interpreter the
# images' constraints were resolved with (Debian's own python3 is 3.11.2, older than some pinned packages allow),
# placed where python:3.11-slim has its own. The rootfs tarballs are kept in $CACHE; the next run only imports.
#   images/base.sh [NAME]          (default NAME: embedforge-base:bookworm; prints NAME when done)
# Then: make images BASE=embedforge-base:bookworm   (make e2e does both)
# Needs root, debootstrap and docker. MIRROR defaults to the Debian mirror apt uses here; PYTHON to python3.11.
set -eu
NAME="${1:-embedforge-base:bookworm}"
DOCKER="${DOCKER:-docker}"
CACHE="${CACHE:-/var/cache/embedforge}"
if $DOCKER image inspect "$NAME" >/dev/null 2>&1; then echo "$NAME"; exit 0; fi
MIRROR="${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
MIRROR="${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-python3.11}"
PREFIX="$("$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version; print(sys.base_prefix)')"
# The shared libraries CPython's extension modules link (ssl, ffi, sqlite, bz2, lzma, zlib, readline, ...).
LIBS=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libreadline8,libncursesw6,libuuid1,libexpat1,libgomp1
DEBIAN="$CACHE/bookworm-minbase-libs.tar"
FULL="$CACHE/bookworm-python$("$PYTHON" -c 'import platform; print(platform.python_version())').tar"
mkdir -p "$CACHE"
ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
if [ ! -s "$FULL" ]; then
  if [ ! -s "$DEBIAN" ]; then
    debootstrap --variant=minbase --include="$LIBS" bookworm "$ROOTFS" "$MIRROR" >&2
    rm -rf "$ROOTFS/var/cache/apt/archives/"*.deb
    tar -C "$ROOTFS" -cf "$DEBIAN.tmp" . && mv "$DEBIAN.tmp" "$DEBIAN"
  else
    tar -C "$ROOTFS" -xf "$DEBIAN"
  fi
  # the interpreter and its standard library; not this machine's installed packages, tests or caches
  (cd "$PREFIX" && tar -cf - --exclude='lib/python3.11/site-packages/*' --exclude='lib/python3.11/test' \
      --exclude='__pycache__' --exclude='lib/python3.11/idlelib' --exclude='lib/python3.11/tkinter' bin include lib share) \
    | tar -C "$ROOTFS/usr/local" -xf -
  (cd "$ROOTFS/usr/local/bin" && ln -sf python3.11 python3 && ln -sf python3 python)
  chroot "$ROOTFS" /sbin/ldconfig
  chroot "$ROOTFS" /usr/local/bin/python3 -c 'import ssl, ctypes, sqlite3, bz2, lzma, zlib, venv, ensurepip'
  tar -C "$ROOTFS" -cf "$FULL.tmp" . && mv "$FULL.tmp" "$FULL"
fi
$DOCKER import --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$FULL" "$NAME" >/dev/null
echo "$NAME"
