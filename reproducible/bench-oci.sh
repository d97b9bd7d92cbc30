#!/usr/bin/env bash
# OCI image → read-only verity root: `dcr-build rootfs` (flatten the layers, pack EROFS,
# dm-verity tree) against the tools a person would chain for the same job, in the same run:
# `tar -x` of each layer in order into an empty directory, `mkfs.erofs -T0 --all-root -x -1`
# and `veritysetup format`. Medians of RUNS runs each; prints both and the ratio.
# (The baseline applies no whiteouts and normalises nothing: it is the cheapest honest chain,
# not a correct one for images whose layers delete files.)
# usage: reproducible/bench-oci.sh OCI_LAYOUT_DIR DIGEST [RUNS (default 3)]
# Environment: DCR_BUILD_BIN (default: target/release/dcr-build, built if missing).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
. "$top/reproducible/lib.sh"
oci=${1:-}; pin=${2:-}; runs=${3:-3}
[ -n "$oci" ] && [ -n "$pin" ] || die "usage: reproducible/bench-oci.sh OCI_LAYOUT_DIR DIGEST [RUNS]"
for t in mkfs.erofs veritysetup tar python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t not found (apt-get install erofs-utils cryptsetup-bin tar python3)"
done
bin=${DCR_BUILD_BIN:-$top/target/release/dcr-build}
if [ -z "${DCR_BUILD_BIN:-}" ]; then
  (cd "$top" && cargo build --locked --release -p dcr-build --quiet)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layers=$(python3 - "$oci" "$pin" <<'PY'
import json, sys
oci, pin = sys.argv[1], sys.argv[2]
m = json.load(open(f"{oci}/blobs/sha256/{pin[7:]}"))
if "manifests" in m:
    d = [x for x in m["manifests"] if x.get("platform", {}).get("architecture") == "amd64"][0]["digest"]
    m = json.load(open(f"{oci}/blobs/sha256/{d[7:]}"))
for l in m["layers"]:
    print(f"{oci}/blobs/sha256/{l['digest'][7:]}")
PY
)
now() { date +%s.%N; }
ours=(); base=()
for i in $(seq "$runs"); do
  rm -f "$work/ours.img"; sync
  t0=$(now)
  "$bin" rootfs --oci "$oci" --digest "$pin" --out "$work/ours.img" >"$work/ours.log"
  t1=$(now)
  ours+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
  rm -rf "$work/tree" "$work/base.img" "$work/base.hash"; mkdir "$work/tree"; sync
  t0=$(now)
  for l in $layers; do tar -xf "$l" -C "$work/tree" --numeric-owner; done
  mkfs.erofs -T0 --all-root -x -1 -U 11111111-2222-3333-4444-555555555555 "$work/base.img" "$work/tree" >/dev/null 2>&1
  veritysetup format --salt="$(printf '%064d' 0)" --uuid=11111111-2222-3333-4444-555555555555 \
    "$work/base.img" "$work/base.hash" >/dev/null
  t1=$(now)
  base+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
mo=$(median "${ours[@]}"); mb=$(median "${base[@]}")
echo "image: $(du -sb "$oci" | cut -f1) bytes in the layout; $(grep -o 'erofs [0-9]* bytes, [0-9]* inodes' "$work/ours.log")"
echo "tar -x + mkfs.erofs + veritysetup: $(du -sb "$work/base.img" | cut -f1) bytes erofs + $(du -sb "$work/base.hash" | cut -f1) bytes hash"
echo "dcr-build rootfs (flatten + EROFS + verity): median ${mo} s  (runs: ${ours[*]})"
echo "tar -x + mkfs.erofs + veritysetup format:    median ${mb} s  (runs: ${base[*]})"
awk -v a="$mo" -v b="$mb" 'BEGIN{printf "ratio dcr-build / baseline: %.2f (target <= 2)\n", a/b}'
