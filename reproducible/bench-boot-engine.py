#!/usr/bin/env python3
"""Seconds from `dcr-build run` until guest-init's banner and its `pcr23` line (BENCHMARKS.md,
"The engine in the guest"): how much a bigger image (the SQL engine packed) costs at boot.

usage: reproducible/bench-boot-engine.py IMAGE_DIR LABEL TPM_STATE_DIR [RUNS]

Boots IMAGE_DIR RUNS times (default 3) with `--mode uefi --offline` (no key-release service
needed: the guest stops at its network step) from the swtpm state TPM_STATE_DIR, and prints
one line per boot. Exits 1 if a boot never reaches the pcr23 line.
"""
import os
import signal
import subprocess
import sys
import time

top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if len(sys.argv) not in (4, 5):
    sys.exit(__doc__.strip().splitlines()[2])
image, label, tpm = sys.argv[1:4]
runs = int(sys.argv[4]) if len(sys.argv) == 5 else 3
dcr_build = os.path.join(top, "target", "release", "dcr-build")
for i in range(runs):
    t0 = time.monotonic()
    p = subprocess.Popen(
        [dcr_build, "run", image, "--mode", "uefi", "--offline", "--timeout", "120",
         "--memory", "1024", "--tpm-state", tpm],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    marks = {}
    for line in p.stdout:
        t = time.monotonic() - t0
        for key in ("banner", "pcr23"):
            if line.startswith(f"dcr-init: {key}") and key not in marks:
                marks[key] = t
        if "pcr23" in marks:
            break
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    if "pcr23" not in marks:
        sys.exit(f"error: bench-boot-engine: {label} boot {i + 1} never printed its pcr23 line")
    print(f"{label} boot {i + 1}: banner {marks.get('banner', float('nan')):.1f} s, "
          f"pcr23 {marks['pcr23']:.1f} s")
