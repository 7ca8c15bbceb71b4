#!/usr/bin/env bash
# One call on the GPU machine (../shared/gpu.md): parity + throughput of `lightningdot bench` on
# CUDA in f32 and bf16, the same workloads in PyTorch on the same GPU (benches/pytorch_bench.py,
# when python3 has torch), one table of ratios, and a per-kernel profile of a short bf16 run.
# Nothing is compiled there: the binary is built here and carried in .gpu/ (see README, "GPU").
#
#   run (device tool):  command "bash scripts/gpu-check.sh", carry [".gpu"], timeout_s 600
#
# Everything goes under $OUT (default ./gpu-out). Each step has its own time limit so that one
# slow step cannot take the whole device call; what finished is still written and tabulated.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
BUILD_HINT="build it here with \`cargo build --release --features cuda\`, then \`scripts/gpu-pack.sh\` (copies it to .gpu/) and carry .gpu"

BIN="${LIGHTNINGDOT_BIN:-.gpu/lightningdot}"
if [ ! -x "$BIN" ] && [ -f "$BIN.gz" ]; then
    # Unpacked outside $OUT: everything under $OUT travels back.
    unpacked="${TMPDIR:-/tmp}/lightningdot-gpu-$$"
    gunzip -c "$BIN.gz" > "$unpacked" && chmod +x "$unpacked" && BIN="$unpacked"
fi
if [ ! -x "$BIN" ]; then
    echo "error: no lightningdot binary at $BIN: $BUILD_HINT" >&2
    exit 1
fi
# A device that cannot exist: a CUDA build answers "not available", a build without the feature
# answers "no CUDA support" (both at once, before any work).
probe=$("$BIN" bench --device cuda:999 --quick 2>&1 || true)
if printf '%s' "$probe" | grep -q "no CUDA support"; then
    echo "error: $BIN was built without CUDA support: $BUILD_HINT" >&2
    exit 1
fi

# Where the CUDA libraries were seen (gpu.md); harmless when already on the loader path.
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/targets/x86_64-linux/lib"
# Autotune results go to ./target/ (cubecl's default when a Cargo.toml is above the working
# directory): a second call on the same warm machine reuses the first call's tuning.

started=$(date +%s)
step() { # name, seconds, command...: logs to $OUT/NAME.log, one status line on stdout
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"
    local rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s)"
    return 0
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; } > "$OUT/gpu.txt" 2>&1
echo "GPU: $(head -1 "$OUT/gpu.txt")"

step bench_f32 170 "$BIN" bench --device cuda --precision f32 --json "$OUT/bench_f32.json"
step bench_bf16 170 "$BIN" bench --device cuda --precision bf16 --json "$OUT/bench_bf16.json"

if python3 -c "import torch; assert torch.cuda.is_available()" 2> "$OUT/python_probe.log"; then
    step pytorch_f32 75 python3 benches/pytorch_bench.py --device cuda --out "$OUT/pytorch_f32.json"
    step pytorch_bf16 75 python3 benches/pytorch_bench.py --device cuda --bf16 --out "$OUT/pytorch_bf16.json"
else
    echo "python3 with CUDA torch not available: no PyTorch anchors (see $OUT/python_probe.log)"
fi

# Where the non-GEMM time goes: per-kernel times and autotune winners of a short bf16 run.
step profile_bf16 60 env CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$OUT/cubecl_profile_bf16.log" \
    "$BIN" bench --device cuda --precision bf16 --quick

echo "total $(( $(date +%s) - started )) s"
if command -v python3 > /dev/null; then
    python3 scripts/gpu_table.py "$OUT" | tee "$OUT/table.md"
fi
# The full tables of each bench run, after the summary.
for p in f32 bf16; do
    echo
    cat "$OUT/bench_$p.txt" 2>/dev/null
    tail -3 "$OUT/bench_$p.log" 2>/dev/null
done
