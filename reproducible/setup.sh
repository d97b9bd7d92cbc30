#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks to build, boot and test dcr images.
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt.
#
# - bookworm-backports enabled (dcr-build's recipes pin packages from it: the 6.12 cloud
#   kernel and systemd-boot-efi 254; `apt-get download` needs the package lists);
# - qemu-system-x86 10.0 (backports), ovmf, swtpm, tpm2-tools, libtss2-dev, binutils;
# - the Rust toolchain of rust-toolchain.toml with the x86_64-unknown-linux-musl target
#   (guest binaries are static musl executables).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

say() { echo "setup: $*" >&2; }

backports=/etc/apt/sources.list.d/dcr-bookworm-backports.list
if ! grep -rqs '^deb .*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ &&
   ! grep -rqs 'Suites:.*bookworm-backports' /etc/apt/sources.list.d/; then
  # The machine's own Debian mirror (the one its bookworm sources use).
  mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
           tr -d ' ' | head -1)
  if [ -z "$mirror" ]; then
    say "error: no Debian mirror found in /etc/apt/sources* to enable bookworm-backports from"
    exit 1
  fi
  say "enabling bookworm-backports from $mirror"
  echo "deb $mirror bookworm-backports main" | $SUDO tee "$backports" >/dev/null
  need_update=1
fi

# apt-get download of the pinned packages needs fresh lists that include backports.
policy=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null || true)
if [ -n "${need_update:-}" ] || [[ "$policy" != *bpo12* ]]; then
  say "apt-get update"
  $SUDO apt-get update -q >/dev/null || say "warning: apt-get update reported errors (continuing)"
fi

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools gnutls-bin tpm2-tools libtss2-dev binutils git musl-tools \
    gdisk dosfstools mtools; do
  have_pkg "$p" || missing+=("$p")
done
# QEMU must be the backports 10.x (sev-snp-guest / tdx-guest objects).
if have_pkg qemu-system-x86 && ! dpkg-query -W -f='${Version}' qemu-system-x86 | grep -q '^1:10'; then
  missing+=(qemu-system-x86)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "error: cargo not found; install Rust with rustup first (the toolchain is pinned in rust-toolchain.toml)"
  exit 1
fi
cd "$top"
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  say "adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl >/dev/null
fi
# sev-snp-measure (PyPI) is the anchor the SNP measurement tests run side by side with ours.
venv="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/sev-snp-measure-0.0.13"
if [ ! -x "$venv/bin/sev-snp-measure" ]; then
  say "installing sev-snp-measure 0.0.13 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'sev-snp-measure==0.0.13'
fi

say "ready: $(qemu-system-x86_64 --version | head -1), $(swtpm --version 2>&1 | head -1), $(cargo --version)"
