#!/usr/bin/env bash
# Packs the CUDA build of `lightningdot` for scripts/gpu-check.sh: builds it (release,
# `--features cuda`; no GPU or CUDA toolkit needed here), strips and gzips it into
# .gpu/lightningdot.gz (stripped it is ~63 MB, too close to the 64 MiB that may travel; gzipped
# ~19 MB) and makes git ignore .gpu/ so that the device tool carries it only when named
# (`carry: [".gpu"]`). gpu-check.sh unpacks it under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lightningdot-target}"
cargo build --release --features cuda
mkdir -p .gpu
rm -f .gpu/lightningdot
strip -o .gpu/lightningdot "$CARGO_TARGET_DIR/release/lightningdot"
gzip -9f .gpu/lightningdot
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '.gpu/' "$exclude" 2>/dev/null || echo '.gpu/' >> "$exclude"
echo "packed $(du -h .gpu/lightningdot.gz | cut -f1) into .gpu/lightningdot.gz (carry .gpu: the tree that travels must stay under 64 MiB)"
