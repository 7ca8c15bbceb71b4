"""One markdown table from scripts/gpu-check.sh's results: for each workload and precision,
lightningdot's and PyTorch's p50 time on the same GPU and their ratio (lightningdot / PyTorch,
below 1.0 = lightningdot faster), plus the parity summary of each bench run.

Usage: python3 scripts/gpu_table.py OUT_DIR
"""

import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu-out"
    gpu = ""
    try:
        with open(os.path.join(out, "gpu.txt")) as f:
            gpu = f.readline().strip()
    except OSError:
        pass
    print(f"GPU: {gpu or 'unknown'}")
    print()
    print("| workload | size | precision | lightningdot p50 ms | PyTorch p50 ms | ratio | lightningdot /s | PyTorch /s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    parity = []
    for p in ("f32", "bf16"):
        ours = load(os.path.join(out, f"bench_{p}.json"))
        torch = load(os.path.join(out, f"pytorch_{p}.json"))
        if ours is None:
            print(f"| (bench {p}: no result, see {p} log) | | {p} | | | | | |")
            continue
        checks = ours.get("parity", [])
        bad = [c["check"] for c in checks if not c.get("ok")]
        parity.append(f"{p}: {len(checks) - len(bad)}/{len(checks)} parity checks within tolerance"
                      + (f"; over: {', '.join(bad)}" if bad else ""))
        theirs = {r["key"]: r for r in (torch or {}).get("throughput", [])}
        for r in ours.get("throughput", []):
            t = theirs.get(r["key"])
            ratio = f"{r['p50_ms'] / t['p50_ms']:.2f}x" if t else ""
            print(f"| {r['workload']} | {r['size']} | {p} | {r['p50_ms']:.2f} | "
                  + (f"{t['p50_ms']:.2f}" if t else "") + f" | {ratio} | "
                  + f"{r['per_s']:.1f} {r['unit']} | " + (f"{t['per_s']:.1f}" if t else "") + " |")
    print()
    for line in parity:
        print(line)
    print("ratio = lightningdot time / PyTorch time on the same GPU in the same call (below 1.0 = faster)")


if __name__ == "__main__":
    main()
