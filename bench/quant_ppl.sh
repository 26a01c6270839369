#!/usr/bin/env bash
# Perplexity cost of the targets: `tenpak eval --compare` of each fixture model (bf16
# import) against its `tenpak quantize --target T` output, on the first 8192 tokens of
# Austen's Emma (ctx 512), recorded in bench/results/quant_ppl.md.
#
#   bash bench/quant_ppl.sh          # needs scripts/fixtures.sh run first
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
TEXT="$FIX/text/emma.txt"
cargo build --release --quiet
BIN=./target/release/tenpak
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
out=bench/results/quant_ppl.md
{
  echo "# Perplexity of the targets"
  echo
  echo "Produced by \`bash bench/quant_ppl.sh\`: \`tenpak eval MODEL --compare QUANTIZED --text emma.txt --max-tokens 8192 --ctx 512\`,"
  echo "both on exactly the same windows; MODEL = bf16 import of the fixture GGUF; bpw over the blocks' linear layers"
  echo "(every byte counted), file bpw over all tensors (embeddings kept in bf16 unless stated)."
  echo
  echo "| model | setting | bpw (quantized) | bpw (file) | PPL bf16 | PPL quantized | delta |"
  echo "|---|---|---|---|---|---|---|"
} > "$out"
for spec in "SmolLM2-135M:SmolLM2-135M-Instruct.Q4_1.gguf" "Gemma-3-270M:gemma-3-270m-q4_k_m.gguf"; do
  IFS=: read -r name file <<< "$spec"
  $BIN import "$FIX/models/$file" -o "$TMP/$name" > /dev/null
  for setting in "--target quality" "--target balanced" "--target size" "--target balanced --quantize-embeddings" "--bits-per-weight 4.5 --refine-iters 0" "--bits-per-weight 4.5"; do
    # shellcheck disable=SC2086
    $BIN quantize "$TMP/$name" -o "$TMP/q" $setting --json > "$TMP/q.json"
    $BIN eval "$TMP/$name" --compare "$TMP/q" --text "$TEXT" --max-tokens 8192 --json > "$TMP/e.json"
    python3 - "$name" "$setting" "$TMP/q.json" "$TMP/e.json" >> "$out" <<'PY'
import json, sys
name, setting, q, e = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
print(f"| {name} | `{setting}` | {q['bits_per_weight_quantized']:.3f} | {q['bits_per_weight_file']:.3f} | "
      f"{e['ppl']:.4f} | {e['ppl_compare']:.4f} | {e['delta_pct']:+.2f}% |")
PY
    tail -n 1 "$out"
  done
done
cat "$out"
