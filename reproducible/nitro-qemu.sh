#!/usr/bin/env bash
# A QEMU with the nitro-enclave machine (issue M), for reproducible/nitro-enclave.sh.
#
# Why: QEMU (9.2 and later) emulates an AWS Nitro enclave as `-M nitro-enclave`: it boots an
# EIF given as -kernel, computes PCR 0/1/2 (and 8) from the EIF's sections itself
# (hw/core/eif.c) and gives the guest a virtio Nitro Secure Module (hw/virtio/virtio-nsm.c),
# whose attestation documents carry those PCRs but are not signed (there is no AWS key in it).
# That is the closest this machine gets to an enclave: dcr's EIF boots its own Nitro kernel,
# guest-init runs with /dev/nsm, and QEMU's PCRs are an independent reading of the EIF.
# Debian's QEMU 10.0.2 (the one setup.sh installs) is built without libcbor, so it lacks the
# machine (Kconfig NITRO_ENCLAVE depends on LIBCBOR && GNUTLS); this script builds the same
# release from Debian's own source tarball with libcbor.
#
# What: qemu_10.0.2+ds.orig.tar.xz, Debian's repack of upstream 10.0.2 for the
# 1:10.0.2+ds-2+deb13u1~bpo12+1 package in bookworm-backports (SHA-256 below, as Debian's
# signed Sources index gives it), configured for x86_64-softmmu only, without default features,
# with TCG, KVM, FDT (system libfdt), libcbor, GnuTLS, vhost-user and pixman. Two adjustments,
# both because Debian's +ds tarball drops prebuilt firmware: meson.build does not unpack the
# edk2 blobs (they are not in the tarball; dcr uses Debian's OVMF anyway), and the firmware
# path is Debian's (/usr/share/qemu, /usr/share/seabios: bios-microvm.bin). QEMU's configure
# wants the pycotap wheel; it comes from PyPI, pinned by SHA-256.
# Build dependencies come through setup.sh (libcbor-dev, libglib2.0-dev, libpixman-1-dev,
# libfdt-dev, ninja-build, meson from bookworm-backports: QEMU 10 needs meson >= 1.5).
#
# Output: <out>/qemu-system-x86_64 (the build tree's binary, run in place). Default out:
# ${DCR_CACHE:-~/.cache/dcr}/nitro-qemu-10.0.2. Not part of CI. Measured here (2 cores, nice 5,
# alone, everything fetched and built from nothing): 284 s, of which ninja 262 s.
#
# usage: reproducible/nitro-qemu.sh [--out DIR] [--jobs N] [--rebuild]
# (without --rebuild, a QEMU already at <out> with the machine is kept)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the nitro-enclave QEMU build stopped; fix the cause above and run bash reproducible/nitro-qemu.sh again"
. "$top/reproducible/lib.sh"

version=10.0.2
orig=qemu_10.0.2+ds.orig.tar.xz
orig_url="http://deb.debian.org/debian/pool/main/q/qemu/qemu_10.0.2%2bds.orig.tar.xz"
orig_sha256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
pycotap=pycotap-1.3.1-py3-none-any.whl
pycotap_sha256=1c3a25b3ff89e48f4e00f1f71dbbc1642b4f65c65d416524d07e73492fff25ea

out="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/nitro-qemu-$version"
jobs=$(nproc)
rebuild=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) [ "$#" -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --jobs) [ "$#" -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"; jobs=$2; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    *) die "unknown argument '$1' (usage: reproducible/nitro-qemu.sh [--out DIR] [--jobs N] [--rebuild])" ;;
  esac
done

DCR_SETUP_EXTRA_PACKAGES="libcbor-dev libglib2.0-dev libpixman-1-dev libfdt-dev ninja-build meson curl xz-utils" \
  bash "$top/reproducible/setup.sh"
meson_version=$(meson --version 2>/dev/null) || die "meson not found after setup.sh"
[ "$(printf '%s\n1.5.0\n' "$meson_version" | sort -V | head -1)" = 1.5.0 ] ||
  die "meson $meson_version is older than 1.5.0 (QEMU $version needs it): install meson from bookworm-backports"
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found (QEMU's configure runs meson with Debian's python3)"

# (-M help is captured, not piped into grep -q: an early grep exit would SIGPIPE QEMU.)
if [ -z "$rebuild" ] && [ -x "$out/qemu-system-x86_64" ] &&
  grep -q '^nitro-enclave ' <<<"$("$out/qemu-system-x86_64" -M help 2>/dev/null)"; then
  echo "nitro-qemu: $out/qemu-system-x86_64 is built ($("$out/qemu-system-x86_64" --version | head -1)); --rebuild builds it again"
  exit 0
fi

mkdir -p "$out"
fetch() { # URL FILE SHA256
  if [ ! -f "$out/$2" ] || ! echo "$3  $out/$2" | sha256sum -c --quiet - 2>/dev/null; then
    echo "== fetching $2"
    curl -sSfL -o "$out/$2.part" "$1" || die "could not download $1"
    mv "$out/$2.part" "$out/$2"
  fi
  echo "$3  $out/$2" | sha256sum -c --quiet - || die "$out/$2: SHA-256 is not the pinned $3"
}
fetch "$orig_url" "$orig" "$orig_sha256"
fetch "https://files.pythonhosted.org/packages/36/f4/77b5a41d53ae3c530b204ed9a35137171b20f8ee0f337e2ec4993d6026a5/$pycotap" "$pycotap" "$pycotap_sha256"

src="$out/qemu-$version"
rm -rf "$src"
echo "== unpacking $orig"
tar -C "$out" -xf "$out/$orig"
[ -f "$src/hw/core/eif.c" ] && [ -f "$src/hw/virtio/virtio-nsm.c" ] ||
  die "$src has no hw/core/eif.c or hw/virtio/virtio-nsm.c: not a QEMU with the nitro-enclave machine"
mkdir -p "$src/python/wheels"
cp "$out/$pycotap" "$src/python/wheels/"
grep -q '^    unpack_edk2_blobs = bzip2.found()$' "$src/meson.build" ||
  die "$src/meson.build: the edk2 unpacking line moved; adjust this script"
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$src/meson.build"

mkdir -p "$src/build"
echo "== configure (x86_64-softmmu, libcbor, gnutls, vhost-user; log in $out/configure.log)"
(cd "$src/build" && ../configure --python=/usr/bin/python3 \
  --firmwarepath=/usr/share/qemu:/usr/share/seabios --target-list=x86_64-softmmu \
  --without-default-features --enable-tcg --enable-kvm --enable-fdt=system --enable-libcbor \
  --enable-gnutls --enable-vhost-user --enable-pixman --disable-docs --disable-werror \
  --disable-tools --disable-install-blobs --disable-download) >"$out/configure.log" 2>&1 ||
  die "configure failed: $(tail -3 "$out/configure.log" | tr '\n' ' ')"
for c in CONFIG_NITRO_ENCLAVE CONFIG_VIRTIO_NSM CONFIG_EIF; do
  grep -q "^#define $c 1" "$src/build/x86_64-softmmu-config-devices.h" ||
    die "configure did not enable $c (see $out/configure.log)"
done
echo "== ninja qemu-system-x86_64 (-j$jobs; log in $out/build.log)"
start=$(date +%s)
(cd "$src/build" && nice -n 5 ninja -j"$jobs" qemu-system-x86_64) >"$out/build.log" 2>&1 ||
  die "the build failed: $(grep -m3 -E 'error|FAILED' "$out/build.log" | tr '\n' ' ')"
ln -sf "$src/build/qemu-system-x86_64" "$out/qemu-system-x86_64"
grep -q '^nitro-enclave ' <<<"$("$out/qemu-system-x86_64" -M help)" ||
  die "$out/qemu-system-x86_64 has no nitro-enclave machine"
echo "nitro-qemu: $out/qemu-system-x86_64 ($("$out/qemu-system-x86_64" --version | head -1); built in $(( $(date +%s) - start )) s)"
