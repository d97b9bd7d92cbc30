#!/usr/bin/env bash
# Build the python-analytics OCI image layout from Debian bookworm packages (python3,
# python3-pandas, python3-sklearn) and analyze.py, with mmdebstrap: no container daemon, no
# registry. Python's bytecode is compiled with --invalidation-mode unchecked-hash (the
# image's mtimes do not survive dcr-build's normalisation, so mtime-checked .pyc files would
# be recompiled at every import). SOURCE_DATE_EPOCH fixes every timestamp. Left out of the
# image: documentation, manuals, locales, and the C/C++ headers and compiler that
# python3-scipy's dependency on python3-pythran drags in (pythran compiles ahead of time; a
# clean room never builds code): about 270 MB of 900.
# usage: images/python-analytics/build-oci.sh OUTDIR   (prints the manifest digest last)
# Environment: MIRROR (default: this machine's bookworm mirror), SOURCE_DATE_EPOCH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
DCR_TOP=$top
DCR_HINT="the image build stopped; fix the cause above and run bash images/python-analytics/build-oci.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/apt-sources.sh"
out=${1:-}
[ -n "$out" ] || die "usage: build-oci.sh OUTDIR"
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (bash reproducible/setup.sh installs it)"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
mirror=${MIRROR:-$(apt_etc=/etc/apt apt_entries | awk '$3 == "deb" && $5 == "bookworm" && $4 ~ /^https?:\/\// { print $4; exit }')}
[ -n "$mirror" ] || die "no bookworm mirror in /etc/apt (set MIRROR)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt-config dump | grep -E '^Acquire::(http|https|ftp|Check-Valid-Until|Check-Date|Retries)' >"$work/apt.conf" || true
mmdebstrap --quiet --variant=essential --include=python3,python3-pandas,python3-sklearn \
  --aptopt="$work/apt.conf" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/include/*' --dpkgopt='path-exclude=/usr/lib/gcc/*' \
  --dpkgopt='path-exclude=/usr/bin/x86_64-linux-gnu-lto-dump-*' \
  --customize-hook="mkdir -p \"\$1/opt/dcr\" && cp $here/analyze.py \"\$1/opt/dcr/analyze.py\"" \
  --customize-hook='find "$1/usr/lib/python3" "$1/usr/lib/python3.11" -name __pycache__ -type d -prune -exec rm -rf {} +' \
  --customize-hook='chroot "$1" python3 -m compileall -q -j 1 --invalidation-mode unchecked-hash /usr/lib/python3 /usr/lib/python3.11 /opt/dcr >/dev/null' \
  --customize-hook='rm -rf "$1/var/cache/apt"/* "$1/var/lib/apt/lists"/* "$1/var/log"/*' \
  bookworm "$work/rootfs.tar" "deb $mirror bookworm main" >"$work/log" 2>&1 ||
  { tail -20 "$work/log" >&2; die "mmdebstrap failed (its last lines above)"; }
mkdir -p "$out"
python3 "$here/oci-from-tar.py" "$work/rootfs.tar" "$out" \
  --entrypoint '["/usr/bin/python3", "-I", "/opt/dcr/analyze.py"]' \
  --env PATH=/usr/local/bin:/usr/bin:/bin OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
