#!/usr/bin/env bash
# Sealed-stream throughput on one core vs `openssl speed -evp aes-256-gcm` (16 KiB blocks,
# OpenSSL's largest default size, and 1 MiB) in the same run; prints the ratios.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
. "$top/reproducible/lib.sh"
cd "$top"
command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
cargo build --locked --release -p dcr-tests --bin seal-bench --quiet
ours=$(taskset -c 0 target/release/seal-bench "${1:-512}")
echo "$ours"
for bytes in 16384 1048576; do
  line=$(taskset -c 0 openssl speed -evp aes-256-gcm -bytes "$bytes" -seconds 3 2>/dev/null | grep -i '^AES-256-GCM')
  kbs=$(echo "$line" | awk '{print $NF}' | tr -d k)
  gibs=$(awk -v k="$kbs" 'BEGIN{printf "%.2f", k*1000/1073741824}')
  echo "openssl speed -evp aes-256-gcm -bytes $bytes: $gibs GiB/s"
  for op in seal open; do
    v=$(echo "$ours" | awk -v op=$op '$1==op{print $2}')
    awk -v a="$v" -v b="$gibs" -v op=$op -v n="$bytes" 'BEGIN{printf "  %s / openssl(%s B): %.0f %%\n", op, n, 100*a/b}'
  done
done
