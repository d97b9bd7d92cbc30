#!/usr/bin/env bash
# The reference overlap workload as a WebAssembly module under dcr's runner (wasmtime,
# cranelift; module compiled at start, as in the guest) against the same crate built natively
# (the guest's static musl binary), on this machine, on the same plaintext, in the same run,
# alternating. Medians of RUNS runs each; prints both, the ratio native/wasm (the WASM speed
# as a fraction of native: target >= 0.5) and checks the two outputs are identical.
# usage: reproducible/bench-wasm.sh [ROWS per party (default 2000000)] [RUNS (default 5)]
# Environment: DCR_BUILD_BIN, DCR_GEN_BIN (default: target/release/…, built if missing).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
. "$top/reproducible/lib.sh"
cd "$top"
rows=${1:-2000000}; runs=${2:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${DCR_BUILD_BIN:-}" ] || [ -z "${DCR_GEN_BIN:-}" ]; then
  cargo build --locked --release --quiet --no-default-features -p dcr-build -p dcr-cleanroom-gen
fi
builder=${DCR_BUILD_BIN:-$top/target/release/dcr-build}
gen=${DCR_GEN_BIN:-$top/target/release/dcr-cleanroom-gen}
# dcr-build image builds the module and the runner exactly as the image has them; the native
# binary is the same crate, profile and target as the reference image's workload (built here
# directly: the reference image would also build the SQL engine).
"$builder" image images/wasm-overlap/image.toml --out "$work/image" >/dev/null 2>"$work/build.log" ||
  { cat "$work/build.log" >&2; die "dcr-build image images/wasm-overlap failed"; }
CARGO_TARGET_DIR="$work/target" RUSTFLAGS="-Ctarget-feature=+crt-static" cargo build --locked --quiet \
  --profile guest --target x86_64-unknown-linux-musl -p dcr-workload-overlap
tdir=${CARGO_TARGET_DIR:-$top/target}
rdir=${CARGO_TARGET_DIR:-$top/attest/wasm-runner/target}
native=$work/target/x86_64-unknown-linux-musl/guest/dcr-workload-overlap
module=$tdir/wasm32-wasip1/guest/dcr-workload-overlap.wasm
runner=$rdir/x86_64-unknown-linux-musl/guest/dcr-wasm-runner
for f in "$native" "$module" "$runner"; do [ -f "$f" ] || die "$f is missing after the builds"; done
"$gen" --seed 7 --rows "$rows" --out-dir "$work/data" >/dev/null
mkdir "$work/in"
cp "$work/data/publisher.csv" "$work/in/publisher-segments"
cp "$work/data/advertiser.csv" "$work/in/advertiser-conversions"
now() { date +%s.%N; }
nat=(); was=()
for i in $(seq "$runs"); do
  t0=$(now)
  "$native" "$work/in/publisher-segments" "$work/in/advertiser-conversions" > "$work/native.csv"
  t1=$(now)
  nat+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
  t0=$(now)
  "$runner" --inputs "$work/in" --memory-mib 4096 --output-mib 16 --timeout-secs 600 "$module" \
    -- overlap /dcr/input/publisher-segments /dcr/input/advertiser-conversions > "$work/wasm.csv"
  t1=$(now)
  was+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
done
cmp -s "$work/native.csv" "$work/wasm.csv" || die "the wasm and native outputs differ"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
mn=$(median "${nat[@]}"); mw=$(median "${was[@]}")
echo "input: $rows rows per party, $(du -cb "$work/in"/* | tail -1 | cut -f1) bytes; output $(wc -l < "$work/wasm.csv") lines, identical"
echo "module $(stat -c %s "$module") bytes, runner $(stat -c %s "$runner") bytes, native $(stat -c %s "$native") bytes"
echo "native (static musl):              median ${mn} s  (runs: ${nat[*]})"
echo "wasm (dcr-wasm-runner, incl. JIT): median ${mw} s  (runs: ${was[*]})"
awk -v a="$mn" -v b="$mw" 'BEGIN{printf "wasm speed / native speed: %.2f (target >= 0.5)\n", a/b}'
