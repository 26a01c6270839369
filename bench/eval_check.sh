#!/usr/bin/env bash
# The runtime against the independent reference (issue #4), in one run:
#   - `tenpak eval` perplexity on the reference windows (first 8192 tokens of emma and brown,
#     ctx 512) vs reference.json (transformers 5.17, float32, computed elsewhere);
#   - the same windows through transformers on this machine (bench/tools/reference_ppl.py,
#     float32, eager attention, torch threads = cores): PPL and tokens/s, beside tenpak's
#     tokens/s, as a ratio (goal: tenpak within 2x);
#   - logits of the probe window (the runtime test, which prints max |diff|).
# Writes bench/results/eval_check.md. Needs the fixtures and `pip install torch transformers`.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
REF=tests/data/reference
cargo build --release --quiet
BIN=./target/release/tenpak
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
out=bench/results/eval_check.md
{
  echo "# Runtime vs the reference implementation"
  echo
  echo "Produced by \`bash bench/eval_check.sh\` ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)). Windows: first"
  echo "8192 tokens, ctx 512, the reference protocol. 'reference' = reference.json (transformers, elsewhere);"
  echo "'transformers here' = bench/tools/reference_ppl.py on this machine, same windows, float32. tokens/s ="
  echo "tokens fed through the model / forward time, both sides."
  echo
  echo "| model | text | PPL reference | PPL tenpak | rel. diff | PPL transformers here | tenpak tok/s | transformers tok/s | tenpak / transformers |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$out"
for spec in "smollm2-135m:SmolLM2-135M-Instruct.Q4_1.gguf" "gemma3-270m:gemma-3-270m-q4_k_m.gguf"; do
  IFS=: read -r name file <<< "$spec"
  $BIN import "$FIX/models/$file" -o "$TMP/$name" > /dev/null
  for text in emma brown; do
    $BIN eval "$TMP/$name" --text "$FIX/text/$text.txt" --max-tokens 8192 --json > "$TMP/t.json"
    python3 bench/tools/reference_ppl.py "$TMP/$name" "$FIX/text/$text.txt" --max-tokens 8192 2>/dev/null | tail -n 1 > "$TMP/r.json"
    python3 - "$name" "$text" "$REF/$name/reference.json" "$TMP/t.json" "$TMP/r.json" >> "$out" <<'PY'
import json, sys
name, text, ref, t, r = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4])), json.load(open(sys.argv[5]))
rp = next(p["ppl"] for p in ref["perplexity"] if p["text"] == text)
print(f"| {name} | {text} | {rp:.4f} | {t['ppl']:.4f} | {(t['ppl'] / rp - 1) * 100:+.3f}% | {r['ppl']:.4f} | "
      f"{t['tokens_per_s']:.0f} | {r['tokens_per_s']:.0f} | {t['tokens_per_s'] / r['tokens_per_s']:.2f} |")
PY
    tail -n 1 "$out"
  done
done
echo >> "$out"
echo "Logits of the probe window vs reference logits.safetensors (f32, max |diff| over the stored positions):" >> "$out"
echo >> "$out"
cargo test --release --quiet --test it runtime::logits -- --nocapture 2>&1 | grep "max |logit diff|" | sed 's/^/- /' >> "$out"
cat "$out"
