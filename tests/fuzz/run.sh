#!/usr/bin/env bash
# Run every fuzz target for a while (default 60 s each). Needs the nightly toolchain and
# cargo-fuzz (installed here if missing). Not part of CI: findings are crashes in
# tests/fuzz/artifacts/<target>/, to be turned into regression tests.
#
# usage: tests/fuzz/run.sh [seconds-per-target] [target ...]
set -euo pipefail
DCR_TOP=$(cd "$(dirname "$0")/../.." && pwd)
DCR_HINT="fuzzing stopped; the lines above say why"
. "$DCR_TOP/reproducible/lib.sh"
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
  die "needs the nightly Rust toolchain (rustup toolchain install nightly) for cargo-fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== $t (${secs}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
