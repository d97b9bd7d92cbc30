#!/usr/bin/env bash
# The test command (README, .ci/run): install what is missing, then run every test —
# unit and end-to-end (`cargo test`, QEMU boots included) and the rebuild-and-compare harness.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the tests stopped; fix the cause above and run bash tests/run.sh again"
. "$top/reproducible/lib.sh"
cd "$top"

bash reproducible/setup.sh --tests

# Profile `ci` (Cargo.toml): release semantics at opt-level 1. A cold workspace build took
# 1232 s here against 1815 s with --release (2 cores). The guest binaries are built by
# dcr-build with their own profile, untouched by this.
echo "== cargo build (locked, profile ci)"
cargo build --locked --profile ci --workspace --quiet
echo "== the EIF oracle (AWS's aws-nitro-enclaves-image-format, its own workspace and lock)"
CARGO_TARGET_DIR="$top/target/eif-oracle" cargo build --locked --release --quiet \
  --manifest-path tests/oracles/eif/Cargo.toml
echo "== cargo test"
# The e2e tests run the binaries built just above (instead of each test binary asking cargo
# for them with another feature set, which would recompile shared dependencies).
bin="$top/target/ci"
export DCR_BUILD_BIN="$bin/dcr-build" DCR_ATTEST_BIN="$bin/dcr-attest" \
  DCR_GEN_BIN="$bin/dcr-cleanroom-gen" DCR_SQL_ENGINE_BIN="$bin/dcr-sql-engine" \
  DCR_EIF_ORACLE_BIN="$top/target/eif-oracle/release/eif-oracle"
cargo test --locked --profile ci --workspace 2>&1 | tee "${TMPDIR:-/tmp}/dcr-cargo-test.log"
# The EIF as an enclave under QEMU's nitro-enclave machine: needs the Nitro kernel and a QEMU
# with the machine, both built outside CI's time (nitro-kernel.sh: an hour or more on 2
# cores; nitro-qemu.sh: about 5 minutes). Where they are built it runs (about a minute).
# (The paths are nitro-enclave.sh's defaults and overrides; setup.sh --tests above installed
# vhost-device-vsock.)
cache="${DCR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr}"
nitro_kernel=${DCR_NITRO_KERNEL:-$cache/nitro-kernel-6.12.95-1~bpo12+1/vmlinuz-6.12.95-dcr-nitro}
nitro_qemu=${DCR_NITRO_QEMU:-$cache/nitro-qemu-10.0.2/qemu-system-x86_64}
if [ -f "$nitro_kernel" ] && [ -x "$nitro_qemu" ]; then
  echo "== the EIF under QEMU's nitro-enclave machine (reproducible/nitro-enclave.sh)"
  bash reproducible/nitro-enclave.sh
else
  echo "== NOT RUN: reproducible/nitro-enclave.sh (no Nitro kernel at $nitro_kernel or no"
  echo "   nitro-enclave QEMU at $nitro_qemu; bash reproducible/nitro-kernel.sh and"
  echo "   bash reproducible/nitro-qemu.sh build them)"
fi
if [ "${DCR_REBUILD_IN_FRESH_ROOT:-}" = 1 ]; then
  # .ci/run: reproducible/fresh-machine.sh --rebuild builds b on a pristine root instead.
  echo "== reproducibility: build b comes from the fresh root (DCR_REBUILD_IN_FRESH_ROOT=1)"
else
  echo "== reproducibility: two builds under varied conditions"
  bash reproducible/rebuild-and-compare.sh
fi
