#!/usr/bin/env bash
# The real base + fine-tune pair that delta compression is judged on (slow: about an hour
# on 2 cores the first time, most of it installing torch and training; idempotent after).
#
#   bash scripts/finetune.sh [TENPAK_BINARY] [-- finetune.py options]
#   -> $TENPAK_FIXTURES/models/smollm2-135m/            the base: bf16 import of the SmolLM2 GGUF
#      $TENPAK_FIXTURES/models/smollm2-135m-austen-ft/  every parameter fine-tuned (AdamW, 120 steps)
#                                                       on emma, mansfieldpark, sensesensibility
#
# Judge a delta on text/prideprejudice.txt, which the fine-tune never saw. torch and
# transformers are installed into $TENPAK_FIXTURES/venv-finetune (several GB) once.
# CI tests do not use this pair; they make small pairs of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
TENPAK="${1:-target/release/tenpak}"
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
BASE="$OUT/models/smollm2-135m"
FT="$OUT/models/smollm2-135m-austen-ft"
if [ -s "$FT/model.safetensors" ]; then echo "$FT"; exit 0; fi
bash scripts/fixtures.sh smollm2 austen > /dev/null
if [ ! -x "$TENPAK" ]; then
  echo "[finetune] building $TENPAK" >&2
  cargo build --release --quiet --bin tenpak
fi
[ -s "$BASE/model.safetensors" ] ||
  "$TENPAK" import "$OUT/models/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$BASE" --dtype bf16
V="$OUT/venv-finetune"
if [ ! -x "$V/bin/python" ]; then
  echo "[finetune] installing torch + transformers into $V (once)" >&2
  python3 -m venv "$V"
  "$V/bin/pip" install -q torch==2.10.0 transformers==5.17.0 safetensors==0.8.0 accelerate==1.15.0
fi
"$V/bin/python" scripts/fixtures/finetune.py "$BASE" "$FT" --text-dir "$OUT/text" "$@" >&2
echo "$FT"
