#!/usr/bin/env bash
# Issue M's benchmarks, each beside its baseline in the same run on the same machine:
#   1. EIF build + PCR 0/1/2 prediction (dcr's writer and dcr-measure, in process, from the
#      image's input files) vs sha384sum over the same files (target: at most 2x);
#   2. Nitro attestation documents verified per second: dcr-verify (in process) vs pycose +
#      cryptography (PyPI, pinned; the same checks: chain, root pin, validity, ES384).
# usage: reproducible/bench-nitro.sh [OUT_DIR_OF_dcr-build_image]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the Nitro benchmark stopped; fix the cause above and run it again"
. "$top/reproducible/lib.sh"
cd "$top"
fixtures=${DCR_FIXTURES:-$top/../shared/fixtures}
docs=("$fixtures"/attest/nitro/*.cbor)
[ -f "${docs[0]}" ] || die "no Nitro documents under $fixtures/attest/nitro (set DCR_FIXTURES)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/dcr/pycose-1.1.0"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pycose, cbor2' 2>/dev/null; then
  python3 -m venv "$venv" || die "python3 -m venv $venv failed (apt-get install python3-venv)"
  # cbor2 6 decodes arrays as tuples, which pycose 1.1.0 does not take: 5.6.5.
  "$venv/bin/pip" install -q pycose==1.1.0 cbor2==5.6.5 cryptography==50.0.2 \
    || die "pip install pycose failed"
fi
cargo build --locked --release -p dcr-tests --bin nitro-bench --quiet
out=${1:-}
if [ -z "$out" ]; then
  cargo build --locked --release -p dcr-build --quiet
  out=$(mktemp -d "${TMPDIR:-/tmp}/dcr-bench-nitro.XXXXXX")
  trap 'rm -rf "$out"' EXIT
  target/release/dcr-build image images/clean-room --out "$out" >/dev/null 2>&1 \
    || die "dcr-build image images/clean-room failed (run it alone to see why)"
fi
[ -f "$out/image.eif" ] || die "$out/image.eif missing (the recipe's platforms lack nitro?)"
target/release/nitro-bench eif "$out/image.eif" 9
target/release/nitro-bench verify 3 "${docs[@]}"
"$venv/bin/python" reproducible/bench-nitro-pycose.py 3 "${docs[@]}" | python3 -c '
import json, sys
for k, v in json.load(sys.stdin).items():
    print(f"pycose doc={k} per_second={v:.1f}")'
