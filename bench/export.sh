#!/usr/bin/env bash
# GGUF and compressed-tensors exports (issue #19), in one run, on both fixture models:
#   - SmolLM2's Q4_1 GGUF packed at int4 g32 from f32 (its own grid), exported back:
#     values of every tensor vs the original GGUF (gguf-py's dequantization), tokenizer
#     metadata vs the original's;
#   - Gemma 3 packed at int4 g64, exported;
#   - transformers' GGUF loader (bench/tools/reference_ppl.py FILE.gguf) vs `tenpak eval`
#     on the .tnpk, same windows (emma, first 8192 tokens, ctx 512);
#   - both models packed as symmetric int4 (SmolLM2 g64, Gemma g128), exported to
#     compressed-tensors, loaded by transformers (bench/tools/reference_ppl.py DIR: the
#     compressed-tensors integration) vs `tenpak eval` on the .tnpk.
# Needs the fixtures and a Python with torch, transformers (>= 5.25: earlier releases
# mis-load Gemma 3 GGUF files), gguf, accelerate and compressed-tensors (PY=..., default
# .venv-py of scripts/python.sh). BIN=... uses that tenpak binary instead of building
# one. Writes bench/results/export_table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
PY="${PY:-.venv-py/bin/python}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin tenpak
  BIN=./target/release/tenpak
fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
out=bench/results/export_table.md
{
  echo "# GGUF and compressed-tensors exports"
  echo
  echo "Produced by \`bash bench/export.sh\` ($(nproc) cores). PPL: emma, first 8192 tokens, ctx 512;"
  echo "'transformers' = AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) or, for compressed-tensors,"
  echo "from_pretrained(dir) (bench/tools/reference_ppl.py, f32; $("$PY" -c 'import transformers, compressed_tensors as c; print(f"transformers {transformers.__version__}, compressed-tensors {c.__version__}")'))."
  echo
  echo "| model | pack | export | bytes | bits/weight | exact tensors | tenpak eval (.tnpk) | transformers | rel. diff |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$out"
run() {
  local name=$1 to=$2 model=$3; shift 3
  local dst="$TMP/$name.gguf"
  [ "$to" = gguf ] || dst="$TMP/$name-ct"
  $BIN pack "$model" -o "$TMP/$name.tnpk" "$@" > /dev/null
  $BIN export "$TMP/$name.tnpk" --to "$to" -o "$dst" --report "$TMP/$name.json" > "$TMP/$name.log"
  $BIN eval "$TMP/$name.tnpk" --text "$FIX/text/emma.txt" --max-tokens 8192 --json > "$TMP/$name.eval.json"
  "$PY" bench/tools/reference_ppl.py "$dst" "$FIX/text/emma.txt" --max-tokens 8192 2> /dev/null | tail -n 1 > "$TMP/$name.hf.json"
  python3 - "$name" "$*" "$to" "$TMP/$name.json" "$TMP/$name.eval.json" "$TMP/$name.hf.json" >> "$out" <<'PY'
import json, os, sys
name, pack, to, rep, ev, hf = sys.argv[1:7]
rep, ev, hf = json.load(open(rep)), json.load(open(ev)), json.load(open(hf))
exact = sum(t["exact"] for t in rep["tensors"])
print(f"| {name} | `{pack}` | {to} | {rep['file_bytes']} | {rep['file_bytes'] * 8 / rep['weights']:.3f} | {exact}/{len(rep['tensors'])} | "
      f"{ev['ppl']:.4f} | {hf['ppl']:.4f} | {(hf['ppl'] / ev['ppl'] - 1) * 100:+.4f}% |")
PY
  tail -n 1 "$out"
}
run smollm2-135m gguf "$FIX/models/SmolLM2-135M-Instruct.Q4_1.gguf" --gguf-dtype f32 --codec int4 --group-size 32
run gemma3-270m gguf "$FIX/models/gemma-3-270m-q4_k_m.gguf" --codec int4 --group-size 64
run smollm2-135m-sym compressed-tensors "$FIX/models/SmolLM2-135M-Instruct.Q4_1.gguf" --codec int4 --group-size 64 --symmetric
run gemma3-270m-sym compressed-tensors "$FIX/models/gemma-3-270m-q4_k_m.gguf" --codec int4 --group-size 128 --symmetric
python3 - "$FIX/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$TMP/smollm2-135m.gguf" >> "$out" <<'PY'
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
ta = {t.name: t for t in a.tensors}
same = sum(np.array_equal(dequantize(t.data, t.tensor_type), dequantize(ta[t.name].data, ta[t.name].tensor_type)) for t in b.tensors)
keys = ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.pre"]
tok = all(a.fields[k].contents() == b.fields[k].contents() for k in keys)
print(f"\nSmolLM2 round trip GGUF -> .tnpk (int4 g32) -> GGUF: {same}/{len(b.tensors)} tensors equal to the original"
      f" file's values (gguf-py); tokenizer tokens/merges/types/pre identical: {tok}.")
PY
cat "$out"
