#!/usr/bin/env bash
# Artifact identity across a refactor: packs both fixture models with every codec (and the
# calibrated options, from statistics computed once) and prints one line per artifact,
# `model case sha256`. Run it with the binaries of two commits on the same paths and diff
# the outputs: any difference is a change of format or of numerics.
#
#   bash bench/identical.sh BIN WORK_DIR > before.txt   # e.g. a copy of target/release/tenpak
#   bash bench/identical.sh BIN2 WORK_DIR > after.txt && diff before.txt after.txt
#
# WORK_DIR keeps the statistics (computed on the first run, reused by the next, so both
# runs pack from the same files on the same paths; paths are recorded in the artifacts).
# IDENT_MODELS (default "smollm2 gemma") and IDENT_CASES (a grep -E pattern of case names,
# default all) narrow the run.
set -euo pipefail
BIN="$(realpath "${1:?usage: identical.sh BIN WORK_DIR}")"
WORK="${2:?usage: identical.sh BIN WORK_DIR}"
cd "$(dirname "$0")/.."
FX=$(bash scripts/fixtures.sh smollm2 gemma brown)
mkdir -p "$WORK"
for spec in "smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" "gemma:gemma-3-270m-q4_k_m.gguf"; do
  IFS=: read -r name file <<< "$spec"
  [[ " ${IDENT_MODELS:-smollm2 gemma} " == *" $name "* ]] || continue
  model="$FX/models/$file"
  stats="$WORK/$name.stats.safetensors"
  [ -s "$stats" ] || "$BIN" calibrate "$model" --text "$FX/text/brown.txt" --samples 4 --seq 128 -o "$stats" > /dev/null 2>&1
  # The statistics themselves, computed again: the calibration must be identical too.
  "$BIN" calibrate "$model" --text "$FX/text/brown.txt" --samples 4 --seq 128 -o "$WORK/again.safetensors" > /dev/null 2>&1
  # By content (each tensor's name, dtype, shape and bytes; the metadata), not file bytes:
  # the header's key order is the writer's business.
  echo "$name calibrate $(python3 - "$WORK/again.safetensors" <<'PY'
import hashlib, json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
d = hashlib.sha256(json.dumps(h.pop("__metadata__", {}), sort_keys=True).encode())
for k in sorted(h):
    s, e = h[k]["data_offsets"]
    d.update(json.dumps([k, h[k]["dtype"], h[k]["shape"]]).encode() + b[8 + n + s:8 + n + e])
print(d.hexdigest())
PY
)"
  while IFS='|' read -r case args; do
    [ -n "$case" ] || continue
    [[ "$case" =~ ^(${IDENT_CASES:-.*})$ ]] || continue
    out="$WORK/$name-$case.tnpk"
    # shellcheck disable=SC2086
    "$BIN" pack "$model" -o "$out" $args > /dev/null 2>&1 || { echo "$name $case FAILED"; continue; }
    echo "$name $case $(sha256sum < "$out" | cut -d' ' -f1)"
    rm -f "$out"
  done <<CASES
quality|--target quality
balanced|--target balanced
size|--target size
int4|--codec int4
int4-g64-sym|--codec int4 --group-size 64 --symmetric
int4-rtn|--codec int4 --refine-iters 0
int4-outliers|--codec int4 --outliers 0.5
int4-embeddings|--codec int4 --quantize-embeddings
int3|--codec int3
int2|--codec int2
int4_residual|--codec int4_residual
int4_g8_fp16|--codec int4_g8_fp16
int4_opt_llama|--codec int4_opt_llama
vq|--codec calibrated_vq
tenpak_x|--codec tenpak_x
tenpak_x-int2|--codec tenpak_x --residual-group 64
budget-4.5|--bits-per-weight 4.5
gptq|--codec int4 --gptq --stats $stats
awq|--codec int3 --awq --stats $stats
awq-gptq|--codec int4 --awq --gptq --stats $stats
int4_awq|--codec int4_awq --stats $stats
vq-stats|--codec calibrated_vq --stats $stats
vq-gptq|--codec calibrated_vq --gptq --stats $stats
tenpak_x-gptq|--codec tenpak_x --gptq --stats $stats
budget-3.3-stats|--bits-per-weight 3.3 --stats $stats
CASES
done
