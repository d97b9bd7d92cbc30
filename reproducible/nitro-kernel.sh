#!/usr/bin/env bash
# A kernel an AWS Nitro enclave can boot with its vsock device attached (issue M).
#
# Why: the Nitro hypervisor describes the enclave's virtio-vsock device only on the kernel
# command line (virtio_mmio.device=…, appended to the EIF's cmdline), which a kernel reads only
# with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y. No Debian kernel, bookworm through sid, sets it
# (docs/nitro.md), so this script builds one, the way nitro-cli ships its own blobs/bzImage.
#
# What: Debian's own sources of the reference recipe's kernel release (linux-source-6.12
# 6.12.95-1~bpo12+1, the package pinned by SHA-256 like every dcr-build input), configured as
# x86_64_defconfig + kernel/configs/kvm_guest.config + the fragment below (virtio-mmio with
# command-line devices, vsock and its virtio transport, the upstream NSM driver (drivers/misc/
# nsm.c, 6.8+), all built in; no loadable modules, no debug info), compiled with a fixed
# KBUILD_BUILD_TIMESTAMP/USER/HOST/VERSION and the machine's Debian 12 gcc-12. Only bzImage.
# Every option of the fragment is checked in the final .config: olddefconfig silently drops
# options whose dependencies are missing, and that must stop the build instead.
#
# Output: <out>/vmlinuz-6.12.95-dcr-nitro and <out>/config-6.12.95-dcr-nitro, with their
# SHA-256 printed (pin them in a recipe as [kernel.local]). Default out:
# ${DCR_CACHE:-~/.cache/dcr}/nitro-kernel-6.12.95-1~bpo12+1. Not part of CI. Its only timing
# so far: 5918 s for make bzImage at nice 19 beside a full CI run on 2 cores (about 3000
# objects); 1347 s on 2 cores with only light work beside it (2026-12-02). Reproducible: that
# second build, under another cache path (so another source path), TZ=Pacific/Chatham and
# umask 077, gave the same bzImage and .config, byte for byte.
#
# --check boots the built kernel (no rebuild) under QEMU microvm with acpi=off, where QEMU
# describes its virtio-mmio devices only as virtio_mmio.device= on the command line, as the
# Nitro hypervisor does; the device is vhost-user-vsock-device served by vhost-device-vsock
# (setup.sh --tests). /init is reproducible/nitro-kernel/vsock-probe.c (musl-gcc -static):
# it connects to the host, CID 2, over vsock, sends a line and prints the host's answer; a
# listener here answers. Passes only if the kernel registered the command-line device, the
# listener got the line and the guest printed the answer. The same check with the reference
# recipe's Debian kernel (--kernel PATH) must fail: that is the point of this kernel.
#
# usage: reproducible/nitro-kernel.sh [--out DIR] [--jobs N]
#        reproducible/nitro-kernel.sh --check [--out DIR] [--kernel PATH]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the Nitro kernel build stopped; fix the cause above and run bash reproducible/nitro-kernel.sh again"
. "$top/reproducible/lib.sh"

version=6.12.95-1~bpo12+1
upstream=6.12.95
localversion=-dcr-nitro
src_deb=linux-source-6.12
src_sha256=a7fe4673af74236c99dad9766eca714a198e50a07e5d659e63ec312ae6afccfe
# 2023-11-14T22:13:20Z, the reference recipe's source_date_epoch.
epoch=1700000000

cache="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/nitro-kernel-$version"
out=$cache
jobs=$(nproc)
check=""
kernel=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --check) check=1; shift ;;
    --kernel) [ "$#" -ge 2 ] || die "--kernel needs a path"; kernel=$2; shift 2 ;;
    --out) [ "$#" -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --jobs) [ "$#" -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"; jobs=$2; shift 2 ;;
    *) die "unknown argument '$1' (usage: reproducible/nitro-kernel.sh [--out DIR] [--jobs N] | --check [--out DIR] [--kernel PATH])" ;;
  esac
done

if [ -n "$check" ]; then
  kernel=${kernel:-$out/vmlinuz-$upstream$localversion}
  [ -f "$kernel" ] || die "no kernel at $kernel (build it first: bash reproducible/nitro-kernel.sh)"
  vhu="${DCR_VHOST_DEVICE_VSOCK:-${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}/vhost-device-vsock-0.3.0/bin/vhost-device-vsock}"
  [ -x "$vhu" ] || die "vhost-device-vsock not at $vhu (bash reproducible/setup.sh --tests installs it)"
  for tool in musl-gcc qemu-system-x86_64 python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (bash reproducible/setup.sh installs it)"
  done
  t=$(mktemp -d "${TMPDIR:-/tmp}/dcr-nitro-check.XXXXXX")
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$t"' EXIT
  mkdir -p "$t/root"
  # musl's headers first; the kernel's uapi headers (linux/vm_sockets.h) after them.
  musl-gcc -static -O2 -Wall -Werror -idirafter /usr/include -idirafter /usr/include/x86_64-linux-gnu \
    -o "$t/root/init" "$top/reproducible/nitro-kernel/vsock-probe.c" || die "musl-gcc could not build the probe"
  python3 "$top/reproducible/newc.py" "$t/root" "$t/probe.cpio"
  port=5005
  python3 - "$t/vsock_$port" "$t/listener.txt" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1); s.settimeout(300)
c, _ = s.accept(); c.settimeout(60)
line = b""
while not line.endswith(b"\n"):
    b = c.recv(256)
    if not b: break
    line += b
open(sys.argv[2], "wb").write(line)
c.sendall(b"hello from the host\n"); c.close()
PY
  pids+=("$!")
  "$vhu" --vm "guest-cid=4,socket=$t/vhu.sock,uds-path=$t/vsock" >"$t/vhu.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do [ -S "$t/vhu.sock" ] && [ -S "$t/vsock_$port" ] && break; sleep 0.1; done
  [ -S "$t/vhu.sock" ] || { cat "$t/vhu.log" >&2; die "vhost-device-vsock did not listen at $t/vhu.sock"; }
  echo "== boot $(basename "$kernel") under QEMU microvm,acpi=off with vhost-user-vsock-device (TCG)"
  timeout 180 qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem0 -m 256M \
    -object memory-backend-memfd,id=mem0,size=256M,share=on -accel tcg -cpu max \
    -nodefaults -no-user-config -display none -no-reboot -serial "file:$t/console.log" \
    -kernel "$kernel" -initrd "$t/probe.cpio" \
    -append "console=ttyS0 panic=-1 reboot=t vsock_probe.port=$port" \
    -chardev "socket,id=vsk,path=$t/vhu.sock" -device vhost-user-vsock-device,chardev=vsk \
    >"$t/qemu.log" 2>&1 || { cat "$t/qemu.log" >&2; die "QEMU failed or timed out (console: $(tail -3 "$t/console.log" 2>/dev/null))"; }
  grep -E "virtio-mmio|vsock-probe|Kernel command line|Linux version" "$t/console.log" | cut -c1-200
  grep -q "Command line: .*virtio_mmio.device=" "$t/console.log" ||
    die "QEMU microvm did not put virtio_mmio.device= on the command line (acpi=off?)"
  grep -q "Registering device virtio-mmio" "$t/console.log" ||
    die "the kernel did not register a command-line virtio-mmio device (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES off?)"
  grep -q '^vsock-probe: OK' "$t/console.log" ||
    die "the probe did not reach the host over vsock: $(grep vsock-probe "$t/console.log" | tail -1)"
  [ "$(cat "$t/listener.txt" 2>/dev/null)" = "hello from the nitro kernel" ] ||
    die "the host's listener did not get the probe's line"
  echo "nitro-kernel check: passed ($(sha256sum "$kernel" | cut -c1-16)…: command-line virtio-mmio vsock device, guest → host → guest)"
  exit 0
fi

# The kernel's build tools on top of the usual setup: bison and flex (Kconfig), libelf-dev
# (objtool), bc; zstd (the bzImage's compressor) and xz-utils (the source tarball).
DCR_SETUP_EXTRA_PACKAGES="bison flex libelf-dev bc zstd xz-utils" bash "$top/reproducible/setup.sh"

mkdir -p "$cache/debs" "$out"
deb="$cache/debs/${src_deb}_${version}_all.deb"
if [ ! -f "$deb" ]; then
  echo "== download $src_deb $version"
  (cd "$cache/debs" && apt-get download -q "$src_deb=$version" >/dev/null 2>"$cache/debs/apt.log") ||
    { cat "$cache/debs/apt.log" >&2; die "apt-get download $src_deb=$version failed (is bookworm-backports enabled and updated? reproducible/setup.sh does both)"; }
fi
got=$(sha256sum "$deb" | cut -d' ' -f1)
[ "$got" = "$src_sha256" ] || die "$deb: sha256 $got, but this script pins $src_sha256"

# Sources at a fixed path under the cache (a new extraction each time: no stale objects).
src="$cache/linux-$upstream"
rm -rf "$src" "$cache/unpack"
mkdir -p "$cache/unpack"
echo "== unpack $(basename "$deb")"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache/unpack" ./usr/src/linux-source-6.12.tar.xz
tar -xJf "$cache/unpack/usr/src/linux-source-6.12.tar.xz" -C "$cache/unpack"
mv "$cache/unpack/linux-source-6.12" "$src"
rm -rf "$cache/unpack"

fragment="$cache/nitro.config"
cat >"$fragment" <<EOF
# What a Nitro enclave needs (dcr reproducible/nitro-kernel.sh).
CONFIG_LOCALVERSION="$localversion"
# CONFIG_LOCALVERSION_AUTO is not set
# CONFIG_MODULES is not set
CONFIG_VIRTIO=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y
CONFIG_VSOCKETS=y
CONFIG_VIRTIO_VSOCKETS=y
CONFIG_NSM=y
CONFIG_HW_RANDOM=y
CONFIG_HW_RANDOM_VIRTIO=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEVTMPFS=y
CONFIG_TMPFS=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_CONFIGFS_FS=y
CONFIG_SECURITYFS=y
CONFIG_NAMESPACES=y
CONFIG_NET_NS=y
CONFIG_SECCOMP=y
CONFIG_SECCOMP_FILTER=y
CONFIG_UNIX=y
CONFIG_INET=y
CONFIG_KERNEL_ZSTD=y
CONFIG_DEBUG_INFO_NONE=y
# CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT is not set
# CONFIG_IKCONFIG is not set
EOF

export KBUILD_BUILD_TIMESTAMP
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$epoch" '+%a %b %e %H:%M:%S UTC %Y')
export KBUILD_BUILD_USER=dcr KBUILD_BUILD_HOST=dcr KBUILD_BUILD_VERSION=1 LC_ALL=C TZ=UTC
unset SOURCE_DATE_EPOCH ARCH CROSS_COMPILE KCFLAGS KCPPFLAGS
cd "$src"
echo "== configure: x86_64_defconfig + kvm_guest.config + $fragment"
make -s x86_64_defconfig >/dev/null
make -s kvm_guest.config >/dev/null
scripts/kconfig/merge_config.sh -m .config "$fragment" >"$cache/merge.log" 2>&1 ||
  { cat "$cache/merge.log" >&2; die "merge_config.sh failed"; }
make -s olddefconfig >/dev/null
# olddefconfig drops what it cannot satisfy: every line of the fragment must have survived.
bad=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" .config || bad+=("$line") ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }; sym=${sym%% *}
      if grep -q "^$sym=" .config; then bad+=("$line"); fi ;;
  esac
done <"$fragment"
[ "${#bad[@]}" -eq 0 ] || die "the kernel config lost: ${bad[*]} (a dependency is missing; see scripts/config and $src/.config)"

echo "== make bzImage (-j$jobs, $(date -u +%T))"
start=$(date +%s)
make -s -j"$jobs" bzImage >"$cache/build.log" 2>&1 ||
  { tail -30 "$cache/build.log" >&2; die "make bzImage failed (last lines above; full log $cache/build.log)"; }
release=$(make -s kernelrelease)
[ "$release" = "$upstream$localversion" ] || die "kernel release is $release, expected $upstream$localversion"
cp arch/x86/boot/bzImage "$out/vmlinuz-$release"
cp .config "$out/config-$release"
echo "built in $(( $(date +%s) - start )) s"
sha256sum "$out/vmlinuz-$release" "$out/config-$release"
