#!/usr/bin/env bash
# Run every fuzz target for a while (default 60 s each). Needs the nightly toolchain and
# cargo-fuzz (installed here if missing). Not part of CI: findings are crashes in
# attest/fuzz/artifacts/<target>/, to be turned into regression tests.
#
# usage: attest/fuzz/run.sh [seconds-per-target] [target ...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== $t (${secs}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
