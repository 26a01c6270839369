#!/usr/bin/env bash
# GPU load of delta artifacts, checked bit for bit against the CPU (run on the GPU machine):
# a synthetic Llama base and fine-tune (bench/gpu_delta_models.py), the base packed at
# `balanced` and losslessly, deltas in every mode, each loaded with `tenpak load --gpu
# --check` as bf16 and as f32. Usage: bash bench/gpu_delta.sh TENPAK_BINARY WORK_DIR
set -euo pipefail
T="$1"; W="$2"
mkdir -p "$W"
python3 "$(dirname "$0")/gpu_delta_models.py" "$W"
"$T" pack "$W/base" -o "$W/base-bal.tnpk" --target balanced --json > "$W/base-bal.json"
"$T" pack "$W/ft" -o "$W/d-exact.tnpk" --base "$W/base" --delta exact --json > "$W/d-exact.json"
RAW="$W/d-exact.tnpk.base.tnpk"
"$T" pack "$W/ft" -o "$W/d-sign.tnpk" --base "$RAW" --delta sign --json > "$W/d-sign.json"
"$T" pack "$W/ft" -o "$W/d-auto2.tnpk" --base "$RAW" --delta auto --delta-bits-per-weight 2 --json > "$W/d-auto2.json"
"$T" pack "$W/ft" -o "$W/d-auto4.tnpk" --base "$RAW" --delta auto --delta-bits-per-weight 4 --json > "$W/d-auto4.json"
"$T" pack "$W/ft" -o "$W/d-grid.tnpk" --base "$W/base-bal.tnpk" --delta grid --json > "$W/d-grid.json"
"$T" pack "$W/ft" -o "$W/d-auto-bal.tnpk" --base "$W/base-bal.tnpk" --delta auto --delta-bits-per-weight 4 --json > "$W/d-auto-bal.json"
for d in exact sign auto2 auto4; do
  for ty in bf16 f32; do
    echo "== $d against the raw base, $ty"
    "$T" load "$W/d-$d.tnpk" --base "$RAW" --gpu --check --dtype "$ty"
  done
done
for d in grid auto-bal; do
  for ty in bf16 f32; do
    echo "== $d against the balanced base, $ty"
    "$T" load "$W/d-$d.tnpk" --base "$W/base-bal.tnpk" --gpu --check --dtype "$ty"
  done
done
echo "== a delta loaded without its base on the GPU path is refused"
if "$T" load "$W/d-sign.tnpk" --gpu 2> "$W/refused.txt"; then echo "NOT REFUSED"; exit 1; fi
cat "$W/refused.txt"
