#!/usr/bin/env bash
# Benchmark: `dcr-build measure snp` against sev-snp-measure 0.0.13 on the same inputs, in the
# same run, whole process each time (startup included), median of N runs; plus sha256sum +
# sha384sum over the same input files as the "just hashing" baseline.
#
# usage: reproducible/bench-measure-snp.sh [N]   (after reproducible/setup.sh and a build of
#        images/clean-room into out/clean-room, which provides the kernel and initrd)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="needs bash reproducible/setup.sh, cargo build --release and dcr-build image images/clean-room --out out/clean-room first"
. "$top/reproducible/lib.sh"
cd "$top"
n=${1:-15}
fx=${DCR_FIXTURES:-$top/../shared/fixtures}
snpm=${DCR_SEV_SNP_MEASURE:-${DCR_CACHE:-$HOME/.cache/dcr}/sev-snp-measure-0.0.13/bin/sev-snp-measure}
dcr=$top/target/release/dcr-build
ovmf=/usr/share/ovmf/OVMF.fd
amd=$fx/measure/sev-snp-measure/ovmf_AmdSev_suffix.bin
[ -x "$snpm" ] || die "sev-snp-measure not found at $snpm (bash reproducible/setup.sh installs it)"
[ -x "$dcr" ] || die "$dcr not built (cargo build --locked --release -p dcr-build)"
[ -f out/clean-room/image.efi ] || die "out/clean-room/image.efi missing (target/release/dcr-build image images/clean-room)"
[ -f "$amd" ] || die "fixture $amd missing (DCR_FIXTURES)"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Kernel and initrd of the reference image.
"$dcr" measure tpm --uki out/clean-room/image.efi >/dev/null
python3 - "$work" <<'PY'
import struct, sys
d = open('out/clean-room/image.efi', 'rb').read()
e = struct.unpack_from('<I', d, 0x3c)[0]
n = struct.unpack_from('<H', d, e + 6)[0]; so = struct.unpack_from('<H', d, e + 20)[0]
for i in range(n):
    h = d[e + 24 + so + 40 * i:][:40]
    name = h[:8].rstrip(b'\0').decode(); vs, va, rs, rp = struct.unpack_from('<IIII', h, 8)
    if name == '.linux':
        open(sys.argv[1] + '/vmlinuz', 'wb').write(d[rp:rp + vs])
PY
cp out/clean-room/initrd.cpio "$work/initrd"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_ms() { # command... -> median wall ms over n runs
  for _ in $(seq "$n"); do
    s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))
  done | median | awk '{printf "%.1f", $1/1000}'
}
fw_args=(--mode snp --vcpus 4 --vcpu-type EPYC-Milan --ovmf "$ovmf")
k_args=(--mode snp --vcpus 4 --vcpu-type EPYC-Milan --ovmf "$amd" --kernel "$work/vmlinuz" --initrd "$work/initrd" --append "console=ttyS0")
[ "$("$dcr" measure snp "${fw_args[@]}")" = "$("$snpm" "${fw_args[@]}")" ] || die "dcr-build and sev-snp-measure digests differ (firmware only): benchmark void"
[ "$("$dcr" measure snp "${k_args[@]}")" = "$("$snpm" "${k_args[@]}")" ] || die "dcr-build and sev-snp-measure digests differ (kernel): benchmark void"
a=$(time_ms "$snpm" "${fw_args[@]}"); b=$(time_ms "$dcr" measure snp "${fw_args[@]}")
echo "firmware only (Debian OVMF.fd 2 MiB, 4 vCPUs): sev-snp-measure ${a} ms, dcr-build ${b} ms, speed-up $(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.1f", a/b}')x"
c=$(time_ms "$snpm" "${k_args[@]}"); d=$(time_ms "$dcr" measure snp "${k_args[@]}")
h=$(time_ms bash -c "sha256sum '$work/vmlinuz' '$work/initrd' '$amd' >/dev/null && sha384sum '$amd' >/dev/null")
echo "kernel+initrd ($(stat -c %s "$work/vmlinuz") + $(stat -c %s "$work/initrd") bytes): sev-snp-measure ${c} ms, dcr-build ${d} ms, sha256sum+sha384sum ${h} ms; speed-up $(awk -v a="$c" -v b="$d" 'BEGIN{printf "%.1f", a/b}')x, dcr/hashing $(awk -v a="$d" -v b="$h" 'BEGIN{printf "%.2f", a/b}')x"
