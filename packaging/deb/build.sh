#!/usr/bin/env bash
# Build sentinel_<version>_<arch>.deb from this checkout with dpkg-deb (no debhelper).
#
#   packaging/deb/build.sh [--version VERSION] [--out DIR]
#
# VERSION defaults to pyproject.toml's; DIR to dist/. Prints the path of the .deb.
#
# Python dependencies: the ones Debian lacks (sqlite-utils, structlog, textual, pySigma,
# ...) are installed HERE, at build time, into a virtualenv at its final path
# /usr/lib/sentinel/venv inside the staging root, rather than from bundled wheels in
# postinst. Then dpkg owns every file (dpkg -L/-S, clean remove and purge without
# tracking what pip wrote), installing needs no pip, network or compiler, and nothing can
# fail half-way in a maintainer script: the host runs exactly the files that were built.
# The price is that a virtualenv is not relocatable, so this script rewrites the staging
# prefix where a venv records its path (script shebangs, activate scripts, pyvenv.cfg),
# byte-compiles with the final paths, and fails if the staging path is left anywhere. The
# venv is bound to the build host's Python minor version and architecture (site-packages
# path, C extensions): the control file's Depends and Architecture say so.
#
# The venv is built without the system site-packages so every PyPI dependency is bundled
# (none silently taken from whatever python3-* the build host has), then switched to see
# them, because bcc is only in Debian's python3-bpfcc.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/packaging/deb"
SYSTEM_PYTHON=/usr/bin/python3
VENV_PATH=/usr/lib/sentinel/venv

version=""
out="$REPO/dist"
while [ $# -gt 0 ]; do
    case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (usage: build.sh [--version V] [--out DIR])" >&2; exit 2 ;;
    esac
done

if [ -z "$version" ]; then
    version=$("$SYSTEM_PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
fi
if ! [[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "build.sh: $version is not a Debian version" >&2
    exit 2
fi
arch=$(dpkg --print-architecture)
python_version=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
python_next_version=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')

stage=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
venv="$root$VENV_PATH"

# Sources copied first so the build leaves nothing (build/, *.egg-info) in the checkout.
mkdir -p "$stage/src"
tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md sentinel | tar -C "$stage/src" -xf -

echo "build.sh: virtualenv with sentinel and its dependencies" >&2
"$SYSTEM_PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
    "$stage/src"
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
sed -i 's/^include-system-site-packages = false$/include-system-site-packages = true/' "$venv/pyvenv.cfg"
grep -q '^include-system-site-packages = true$' "$venv/pyvenv.cfg"
# pip records where it installed from; nothing at run time reads it.
find "$venv" -name direct_url.json -delete
grep -rlIF "$root" "$venv" | while read -r file; do sed -i "s|$root||g" "$file"; done
if grep -rlF "$root" "$venv"; then
    echo "build.sh: the staging path is still recorded in the files above" >&2
    exit 1
fi
"$venv/bin/python" -m compileall -q -j0 -s "$root" -p / "$venv/lib" >/dev/null

echo "build.sh: files" >&2
install -D -m 0755 "$HERE/sentinel.sh" "$root/usr/bin/sentinel"
install -D -m 0644 "$REPO/packaging/systemd/sentinel.service" "$root/lib/systemd/system/sentinel.service"
install -D -m 0644 "$REPO/packaging/config/sentinel.yaml" "$root/etc/sentinel/sentinel.yaml"
install -d -m 0755 "$root/etc/sentinel/rules.d"
install -D -m 0644 "$REPO/packaging/logrotate/sentinel" "$root/etc/logrotate.d/sentinel"
# Shipped rules and BPF sources, where sentinel.config and sentinel.kernel.loader look
# for them outside a checkout.
install -d -m 0755 "$root/usr/share/sentinel"
for tree in rules bpf; do
    tar -C "$REPO" --exclude=__pycache__ -cf - "$tree" | tar -C "$root/usr/share/sentinel" --no-same-permissions -xf -
done
install -D -m 0644 "$REPO/README.md" "$root/usr/share/doc/sentinel/README.md"
install -D -m 0644 "$HERE/copyright" "$root/usr/share/doc/sentinel/copyright"

mkdir -p "$root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    -e "s/@PYTHON_VERSION@/$python_version/" -e "s/@PYTHON_NEXT_VERSION@/$python_next_version/" \
    "$HERE/control.in" >"$root/DEBIAN/control"
install -m 0644 "$HERE/conffiles" "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$HERE/$script" "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/sentinel_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -z3 --build "$root" "$deb" >/dev/null
echo "$deb"
