#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks to build, boot and test dcr images.
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt.
#
# - bookworm-backports enabled (dcr-build's recipes pin packages from it: the 6.12 cloud
#   kernel and systemd-boot-efi 254; `apt-get download` needs the package lists). The machine's
#   own Debian mirror is read from whichever apt layout it has: Debian's deb822 files
#   (sources.list.d/*.sources, the layout of Debian 12's cloud and container images), one-line
#   files (sources.list, sources.list.d/*.list), or both; backports already enabled in either
#   form is left as it is. The new entry is written in the layout the mirror was found in.
# - the packages below (derived by running the README's commands on a pristine
#   `mmdebstrap --variant=apt` root: reproducible/fresh-machine.sh);
# - the Rust toolchain of rust-toolchain.toml with the x86_64-unknown-linux-musl target
#   (guest binaries are static musl executables) and wasm32-wasip1 (kind = "wasm" workloads);
# - sev-snp-measure 0.0.13 (PyPI) in a venv: the anchor the SNP measurement tests compare with;
# - with --tests, vhost-device-vsock 0.3.0 (crates.io): the userspace vsock device of the vsock
#   QEMU test.
#
# usage: reproducible/setup.sh [--sources-only | --tests]
#   --sources-only   only find the mirror and enable backports (no apt-get update/install)
#   --tests          also what only the tests use (vhost-device-vsock; tests/run.sh)
# Environment: DCR_APT_ETC (default /etc/apt: the apt configuration directory to read and
# write; tests point it at throwaway directories), DCR_SETUP_EXTRA_PACKAGES (more packages to
# require), DCR_CACHE (where the venv and vhost-device-vsock live; default ~/.cache/dcr).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="setup did not finish; fix the cause above and run bash reproducible/setup.sh again"
. "$top/reproducible/lib.sh"

sources_only=""
test_tools=""
case "${1:-}" in
  "") ;;
  --sources-only) sources_only=1 ;;
  --tests) test_tools=1 ;;
  *) die "unknown argument '$1' (usage: reproducible/setup.sh [--sources-only | --tests])" ;;
esac

apt_etc=${DCR_APT_ETC:-/etc/apt}
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run it as root (apt-get installs packages)"
  SUDO=sudo
fi

say() { echo "setup: $*" >&2; }

. "$top/reproducible/apt-sources.sh"

# 1. bookworm-backports.
enable_backports() {
  local entries have mirror_line layout file uri signed out
  entries=$(apt_entries)
  have=$(awk '$3 == "deb" && $5 == "bookworm-backports" { print $2; exit }' <<<"$entries")
  if [ -n "$have" ]; then
    say "bookworm-backports already enabled ($have)"
    return 0
  fi
  # The machine's own Debian mirror: the http(s) URI of its `bookworm` entry.
  mirror_line=$(awk '$3 == "deb" && $5 == "bookworm" && $4 ~ /^https?:\/\// { print; exit }' <<<"$entries")
  if [ -z "$mirror_line" ]; then
    die "no Debian bookworm mirror in $apt_etc/sources.list or $apt_etc/sources.list.d/*.list|*.sources to enable bookworm-backports from; add it yourself, e.g. printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $apt_etc/sources.list.d/bookworm-backports.sources"
  fi
  read -r layout file _ uri _ signed <<<"$mirror_line"
  if [ "$layout" = sources ]; then
    out=$apt_etc/sources.list.d/dcr-bookworm-backports.sources
    {
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n' "$uri"
      if [ "$signed" != - ]; then printf 'Signed-By: %s\n' "$signed"; fi
    } | $SUDO tee "$out" >/dev/null
  else
    out=$apt_etc/sources.list.d/dcr-bookworm-backports.list
    if [ "$signed" != - ]; then
      echo "deb [signed-by=$signed] $uri bookworm-backports main"
    else
      echo "deb $uri bookworm-backports main"
    fi | $SUDO tee "$out" >/dev/null
  fi
  say "enabled bookworm-backports from $uri (mirror of $file) in $out"
  need_update=1
}

need_update=""
[ -d "$apt_etc" ] || die "apt configuration directory $apt_etc does not exist"
enable_backports
if [ -n "$sources_only" ]; then exit 0; fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script is for Debian 12 (bookworm)"

# 2. Package lists that include backports (apt-get download of the pinned packages needs them).
apt_log=$(mktemp "${TMPDIR:-/tmp}/dcr-setup-apt.XXXXXX")
trap 'rm -f "$apt_log"' EXIT
policy=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null || true)
if [ -n "$need_update" ] || [[ "$policy" != *bpo12* ]]; then
  say "apt-get update"
  if ! $SUDO apt-get update -q >"$apt_log" 2>&1; then
    # Another source failing (a third-party repository, say) must not stop us; what we need
    # is checked right below.
    say "warning: apt-get update reported errors:"
    grep -E '^(E|W|Err):' "$apt_log" | head -5 >&2 || true
  fi
  policy=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null || true)
  if [[ "$policy" != *bpo12* ]]; then
    die "bookworm-backports is enabled but apt has no package lists from it (apt-cache policy linux-image-cloud-amd64 shows no ~bpo12 version); check the mirror with apt-get update"
  fi
fi

# 3. Packages. qemu-system-x86 must be the backports 10.x (sev-snp-guest / tdx-guest objects).
# gcc + libc6-dev: the linker rustc calls and the C parts of ring and liblzma-sys; musl-tools:
# the same for the musl guest; python3-venv: the sev-snp-measure venv; mmdebstrap:
# reproducible/fresh-machine.sh; libssl-dev: the EIF oracle (tests/oracles/eif, AWS's
# aws-nitro-enclaves-image-format links OpenSSL).
packages=(qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools gnutls-bin tpm2-tools libtss2-dev
  binutils git gcc libc6-dev musl-tools pkgconf python3 python3-venv ca-certificates openssl
  gdisk dosfstools mtools bsdextrautils mmdebstrap libssl-dev)
# With --tests, the independent tools the OCI root tests compare with (tests/tests/oci_rootfs.rs):
# umoci (layer application), erofs-utils (fsck.erofs), cryptsetup-bin (veritysetup), zstd; and
# Debian's pandas and scikit-learn, which recompute the python-analytics model on the host
# (tests/tests/cleanroom_python.rs).
if [ "$test_tools" = 1 ]; then
  packages+=(umoci erofs-utils cryptsetup-bin zstd python3-pandas python3-sklearn)
fi
# shellcheck disable=SC2206
packages+=(${DCR_SETUP_EXTRA_PACKAGES:-})
missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in "${packages[@]}"; do
  have_pkg "$p" || missing+=("$p")
done
if have_pkg qemu-system-x86 && ! dpkg-query -W -f='${Version}' qemu-system-x86 | grep -q '^1:10'; then
  missing+=(qemu-system-x86)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -t bookworm-backports "${missing[@]}" >"$apt_log" 2>&1; then
    grep -E '^(E|W):' "$apt_log" | head -5 >&2 || tail -5 "$apt_log" >&2
    die "apt-get install failed for: ${missing[*]} (apt's messages above)"
  fi
fi

# 4. Rust: the pinned toolchain (rust-toolchain.toml), the musl and WASI targets.
if ! command -v cargo >/dev/null 2>&1; then
  die "cargo not found; install Rust with rustup first (the toolchain is pinned in rust-toolchain.toml), or add ~/.cargo/bin to PATH"
fi
cd "$top"
installed_targets=$(rustup target list --installed 2>/dev/null || true)
if ! grep -qx x86_64-unknown-linux-musl <<<"$installed_targets"; then
  say "adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl >/dev/null ||
    die "rustup could not add the target x86_64-unknown-linux-musl (the guest is a static musl binary)"
fi
if ! grep -qx wasm32-wasip1 <<<"$installed_targets"; then
  say "adding the Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >/dev/null ||
    die "rustup could not add the target wasm32-wasip1 (kind = \"wasm\" workloads are WASI preview 1 modules)"
fi

# 5. sev-snp-measure (PyPI), the anchor the SNP measurement tests run side by side with ours.
venv="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/sev-snp-measure-0.0.13"
if [ ! -x "$venv/bin/sev-snp-measure" ]; then
  say "installing sev-snp-measure 0.0.13 into $venv"
  python3 -m venv "$venv" >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "python3 -m venv $venv failed"; }
  "$venv/bin/pip" install -q 'sev-snp-measure==0.0.13' ||
    die "pip could not install sev-snp-measure==0.0.13 into $venv (PyPI reachable? pip's message above)"
fi

# 6. vhost-device-vsock (crates.io, rust-vmm): the userspace virtio-vsock device QEMU uses for
# the vsock clean-room test where the host has no /dev/vhost-vsock (this kind of machine).
# Built from its published sources with their own Cargo.lock (--locked).
vhu="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/vhost-device-vsock-0.3.0"
if [ -n "$test_tools" ] && [ ! -x "$vhu/bin/vhost-device-vsock" ]; then
  say "installing vhost-device-vsock 0.3.0 into $vhu (cargo install, a few minutes)"
  cargo install --quiet --locked --version 0.3.0 --root "$vhu" vhost-device-vsock >"$apt_log" 2>&1 || {
    tail -20 "$apt_log" >&2
    die "cargo install vhost-device-vsock 0.3.0 failed (crates.io reachable? cargo's messages above)"
  }
fi

say "ready: $(qemu-system-x86_64 --version | head -1), $(swtpm --version 2>&1 | head -1), $(cargo --version)"
