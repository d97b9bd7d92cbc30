#!/usr/bin/env bash
# dcr's EIF as an enclave, as far as this machine goes without AWS (issue M).
#
# The clean room's recipe, with the Nitro kernel of reproducible/nitro-kernel.sh as its EIF
# kernel ([nitro.kernel]) and a vsock contract (the parent, CID 3, port 8000), boots under
# QEMU's nitro-enclave machine (reproducible/nitro-qemu.sh), under TCG:
#
#   enclave VM (CID 4)  ──vsock──  parent VM (CID 3)  ──user-mode NIC──  host
#   QEMU -M nitro-enclave          QEMU -M microvm, the Nitro kernel,      the key-release
#   -kernel image.eif              /init = parent-init.c: heartbeat        service on
#   guest-init, /dev/nsm           (port 9000) + this machine's            loopback
#                                  dcr-attest vsock-proxy --port 8000
#
# Both VMs share one vhost-device-vsock, whose sibling routing carries CID 4 ↔ CID 3 (its
# Unix-socket backend reaches only CID 2 otherwise, and the enclave's heartbeat must go to 3;
# this host has no vsock loopback). The parent runs dcr's parent-side proxy itself, listening
# on AF_VSOCK as on an EC2 parent; the enclave has no NIC and reaches the service only
# through it.
#
# What must happen, and is checked:
#   1. QEMU loads the EIF (its own EIF reader and CRC check) and boots dcr's Nitro kernel;
#   2. guest-init finds /dev/nsm (virtio-nsm under the upstream NSM driver), sends the
#      heartbeat to 3:9000 and gets it back through the parent;
#   3. it asks the NSM for an attestation document bound to the service's challenge and
#      prints the document's PCRs: they must equal measurements.json `nitro.pcrs` 0, 1 and 2.
#      QEMU computes them from the EIF's sections itself (hw/core/eif.c), so this is an
#      independent reading of dcr's prediction, from a booted enclave;
#   4. the service, holding keys registered for exactly those PCRs (`--platform nitro`),
#      refuses the document: QEMU's NSM does not sign (COSE alg -1, no AWS chain). No key is
#      released (the audit log has exactly one release decision: that refusal), and guest-init
#      ends with power-off status=error, then restarts (the kernel's "Restarting system"; no
#      panic), which ends QEMU (-no-reboot); AWS's enclave init ends the same way.
# Not checked here, for want of AWS: a signed document, a real enclave's PCRs, the release.
#
# Needs: the kernel (bash reproducible/nitro-kernel.sh), the QEMU (bash
# reproducible/nitro-qemu.sh), vhost-device-vsock (bash reproducible/setup.sh --tests), musl-gcc.
# Environment: WORK (default out/nitro-enclave-run), ROWS (default 2000), DCR_BUILD_BIN +
# DCR_ATTEST_BIN + DCR_GEN_BIN (all three: use these binaries), DCR_NITRO_KERNEL,
# DCR_NITRO_QEMU, DCR_VHOST_DEVICE_VSOCK (paths overriding the cached ones).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the nitro-enclave check stopped; fix the cause above and run bash reproducible/nitro-enclave.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/room.sh"
cd "$top"
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
[ "$#" -eq 0 ] || die "no arguments (usage: reproducible/nitro-enclave.sh; see its header for the environment)"

cache="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}"
kernel=${DCR_NITRO_KERNEL:-$cache/nitro-kernel-6.12.95-1~bpo12+1/vmlinuz-6.12.95-dcr-nitro}
qemu=${DCR_NITRO_QEMU:-$cache/nitro-qemu-10.0.2/qemu-system-x86_64}
vhu=${DCR_VHOST_DEVICE_VSOCK:-$cache/vhost-device-vsock-0.3.0/bin/vhost-device-vsock}
[ -f "$kernel" ] || die "no Nitro kernel at $kernel (bash reproducible/nitro-kernel.sh builds it)"
[ -x "$qemu" ] || die "no nitro-enclave QEMU at $qemu (bash reproducible/nitro-qemu.sh builds it)"
machines=$("$qemu" -M help) || die "$qemu -M help failed"
grep -q '^nitro-enclave ' <<<"$machines" || die "$qemu has no nitro-enclave machine"
[ -x "$vhu" ] || die "vhost-device-vsock not at $vhu (bash reproducible/setup.sh --tests installs it)"
for tool in musl-gcc qemu-system-x86_64 python3 swtpm_setup; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (bash reproducible/setup.sh installs it)"
done
kernel_sha=$(sha256sum "$kernel" | cut -d' ' -f1)

room_binaries "$top"
work=${WORK:-$top/out/nitro-enclave-run}
rm -rf "$work"
mkdir -p "$work"/{ca,tpm,keys,data,image,recipe,vsock}
cd "$work"

step "the recipe: images/clean-room with [nitro.kernel] = $(basename "$kernel") ($kernel_sha)"
cp "$kernel" recipe/vmlinuz-nitro
awk -v ws="$top/images/clean-room/workloads/overlap" -v se="$top/attest/sql-engine" '
  /^crate = "workloads\/overlap"/     { print "crate = \"" ws "\""; next }
  /^crate = "..\/..\/attest\/sql-engine"/ { print "crate = \"" se "\""; next }
  { print }' "$top/images/clean-room/image.toml" > recipe/image.toml
grep -q "^crate = \"$top/attest/sql-engine\"" recipe/image.toml ||
  die "images/clean-room/image.toml: its workload crates moved; adjust this script"
printf '\n[nitro]\nmemory_mib = 1024\ncpus = 2\n\n[nitro.kernel]\nvmlinuz = "vmlinuz-nitro"\nsha256 = "%s"\n' \
  "$kernel_sha" >> recipe/image.toml

step "the key-release service on loopback (the vTPM CA only because serve wants one)"
room_vtpm "$work"
room_service "$attest" "$work"
step "the parties' keys and the contract: platforms = [nitro], network = vsock to the parent (CID 3), port 8000"
awk '/^platforms = / { print "platforms = [\"nitro\"]"; next }
     /^\[network\]/ { print "[network]\nmode = \"vsock\"\ncid = 3\nport = 8000"; skip = 1; next }
     /^\[/ { skip = 0 }
     !skip { print }' "$top/images/clean-room/contract.toml" > recipe/contract.template.toml
grep -q '^mode = "vsock"' recipe/contract.template.toml && grep -q '^platforms = \["nitro"\]' recipe/contract.template.toml ||
  die "could not set the contract's network and platforms"
room_contract "$attest" recipe/contract.template.toml
cp contract.toml recipe/contract.toml

step "dcr-build image (the EIF with the Nitro kernel)"
"$builder" image recipe --contract contract.toml --out image
python3 - image/measurements.json <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
n = m["measurements"]["nitro"]["pcrs"]
for i in ("0", "1", "2"):
    print("  predicted pcr%s %s" % (i, n[i]))
PY

step "data generated (${ROWS:-2000} rows), sealed, registered for the EIF's PCRs (--platform nitro), uploaded"
"$gen" --seed 1 --rows "${ROWS:-2000}" --out-dir data
room_provide "$attest" nitro

step "the parent: vhost-device-vsock (CID 4 enclave, CID 3 parent) and the parent VM running dcr-attest vsock-proxy --port 8000"
"$vhu" --vm "guest-cid=4,socket=$work/vsock/enclave.sock,uds-path=$work/vsock/enclave" \
  --vm "guest-cid=3,socket=$work/vsock/parent.sock,uds-path=$work/vsock/parent" \
  >vsock/vhost-device-vsock.log 2>&1 &
room_track "$!"
for _ in $(seq 100); do [ -S vsock/enclave.sock ] && [ -S vsock/parent.sock ] && break; sleep 0.1; done
[ -S vsock/enclave.sock ] && [ -S vsock/parent.sock ] ||
  die "vhost-device-vsock did not listen: $(tail -3 vsock/vhost-device-vsock.log | tr '\n' ' ')"
# The parent's initramfs: /init (parent-init.c) and this machine's dcr-attest (stripped) with
# the shared libraries ldd names, at their own paths.
mkdir -p parent/root
musl-gcc -static -O2 -Wall -Werror -idirafter /usr/include -idirafter /usr/include/x86_64-linux-gnu \
  -o parent/root/init "$top/reproducible/nitro-kernel/parent-init.c" || die "musl-gcc could not build parent-init"
strip -o parent/root/dcr-attest "$attest" || die "strip $attest failed"
libs=$(ldd "$attest" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || die "ldd $attest named no libraries"
for l in $libs; do mkdir -p "parent/root$(dirname "$l")"; cp -L "$l" "parent/root$l"; done
python3 "$top/reproducible/newc.py" parent/root parent/parent.cpio
# The parent reaches the service over a user-mode NIC: 10.0.2.2 is this host's loopback.
qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem0 -m 1G \
  -object memory-backend-memfd,id=mem0,size=1G,share=on -accel tcg -cpu max -smp 1 \
  -nodefaults -no-user-config -display none -no-reboot -serial "file:$work/parent/console.log" \
  -kernel "$kernel" -initrd parent/parent.cpio \
  -append "console=ttyS0 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off parent.port=8000 parent.to=http://10.0.2.2:$port" \
  -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
  -chardev "socket,id=vsk,path=$work/vsock/parent.sock" -device vhost-user-vsock-device,chardev=vsk \
  >parent/qemu.log 2>&1 &
room_track "$!"
for _ in $(seq 1200); do grep -q '^vsock-proxy: vsock port 8000' parent/console.log 2>/dev/null && break; sleep 0.1; done
grep -q '^vsock-proxy: vsock port 8000' parent/console.log 2>/dev/null ||
  die "the parent VM's vsock-proxy did not start: $(grep -E 'parent-init|vsock-proxy|Kernel panic' parent/console.log 2>/dev/null | tail -3 | tr '\n' ' ') $(tail -2 parent/qemu.log 2>/dev/null | tr '\n' ' ')"
grep -E '^(parent-init|vsock-proxy):' parent/console.log

step "the enclave: $(basename "$qemu") -M nitro-enclave -kernel image/image.eif (TCG)"
# -L: the build tree's QEMU finds Debian's firmware (qboot.rom, linuxboot_dma.bin) only so.
rc=0
timeout "${TIMEOUT:-600}" "$qemu" -L /usr/share/qemu -L /usr/share/seabios \
  -M nitro-enclave,vsock=vsk,id=dcr-nitro-check -m 1024 -smp 2 \
  -accel tcg -cpu max -display none -no-reboot -serial "file:$work/console.log" \
  -kernel image/image.eif -chardev "socket,id=vsk,path=$work/vsock/enclave.sock" \
  >qemu.log 2>&1 || rc=$?
{ grep -E '^(dcr-init|run):' console.log || true; } | sed -e 's/base64=.*/base64=…/' -e 's/ pcr[0-9]*=[0-9a-f]*//g'
[ "$rc" -eq 0 ] || die "the enclave's QEMU ended with $rc (124: timed out): $(tail -3 qemu.log | tr '\n' ' '); console: $(tail -2 console.log | tr '\n' ' ')"
grep -E '^(parent-init|vsock-proxy):' parent/console.log | tail -n +4

step "checks"
grep -q 'dcr-init: platform detected .*nsm=yes' console.log || die "console.log: guest-init did not find /dev/nsm"
grep -q 'dcr-init: heartbeat sent to 3:9000 and echoed' console.log || die "console.log: no heartbeat"
grep -q '^parent-init: heartbeat from cid 4 echoed' parent/console.log ||
  die "parent/console.log: the parent did not echo the enclave's heartbeat"
line=$(grep -m1 'dcr-init: evidence tee=nitro document=' console.log) ||
  die "console.log: no attestation document"
python3 - image/measurements.json "$line" <<'PY' || die "the enclave's PCRs are not the predicted ones"
import json, re, sys
want = json.load(open(sys.argv[1]))["measurements"]["nitro"]["pcrs"]
got = dict(re.findall(r"pcr(\d+)=([0-9a-f]+)", sys.argv[2]))
bad = [i for i in ("0", "1", "2") if got.get(i) != want[i]]
for i in ("0", "1", "2"):
    print("  pcr%s booted %s %s" % (i, got.get(i, "(none)"), "= predicted" if i not in bad else "!= predicted " + want[i]))
sys.exit(1 if bad else 0)
PY
python3 - service/audit.log <<'PY' || die "service/audit.log: not exactly one release decision, a refusal of the unsigned document"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rel = [r for r in recs if r.get("kind") == "release"]
refused = [r for r in rel if r.get("decision") == "refuse"]
for r in rel:
    print("  the service's release decision: %s (%s: %s)" % (r.get("decision"), r.get("code"), r.get("message")))
# QEMU's NSM writes alg -1 ("we don't actually sign"), which no COSE algorithm is.
ok = len(rel) == 1 and len(refused) == 1 and all(
    r.get("code") == "evidence_invalid" and "COSE_Sign1" in r.get("message", "") for r in refused)
sys.exit(0 if ok else 1)
PY
grep -q 'dcr-init: power-off status=error' console.log || die "console.log: no power-off line"
# The end is guest-init's restart (not a panic or a triple fault, which -no-reboot also ends),
# and nothing of guest-init's comes after its last line.
[ "$(grep 'dcr-init:' console.log | tail -1 | grep -c 'power-off status=')" = 1 ] ||
  die "console.log: guest-init printed after its power-off line"
grep -q 'reboot: Restarting system' console.log || die "console.log: the enclave did not end by restarting"
! grep -q 'Kernel panic' console.log || die "console.log: the enclave's kernel panicked"
echo "nitro-enclave check: passed (EIF booted under QEMU nitro-enclave; PCR 0/1/2 as predicted; heartbeat and service through the parent; unsigned document refused, no key released; $(( $(date +%s) - t0 )) s)"
