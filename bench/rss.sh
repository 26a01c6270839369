#!/usr/bin/env bash
# Peak resident memory (GNU time -v) of `tenpak import` and `tenpak quantize` on the two
# fixture models, against the bound of issue #2: 2 x the largest tensor's f32 size + 256 MB.
# RSS counts mapped file pages too; readers release a tensor's pages once it is read.
#
#   bash bench/rss.sh            # writes bench/results/rss.md
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
cargo build --release --quiet
BIN=./target/release/tenpak
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
out=bench/results/rss.md
{
  echo "# Peak RSS"
  echo
  echo "Produced by \`bash bench/rss.sh\` on $(nproc) cores. Bound = 2 x largest tensor (f32) + 256 MB."
  echo
  echo "| model | command | largest tensor | bound (MB) | peak RSS (MB) | wall (s) |"
  echo "|---|---|---|---|---|---|"
} > "$out"
measure() {  # label model-label largest-numel command...
  local label=$1 model=$2 numel=$3; shift 3
  /usr/bin/time -v "$@" > /dev/null 2> "$TMP/time.txt"
  local kb wall bound
  kb=$(grep 'Maximum resident' "$TMP/time.txt" | awk '{print $NF}')
  wall=$(grep 'Elapsed' "$TMP/time.txt" | awk '{print $NF}')
  bound=$(( numel * 4 * 2 / 1000000 + 256 ))
  echo "| $model | $label | ${numel} weights | $bound | $(( kb / 1024 )) | $wall |" >> "$out"
}
for spec in "SmolLM2-135M:models/SmolLM2-135M-Instruct.Q4_1.gguf:28311552" "Gemma-3-270M:models/gemma-3-270m-q4_k_m.gguf:167772160"; do
  IFS=: read -r name rel numel <<< "$spec"
  gguf="$FIX/$rel"
  measure "import (GGUF -> bf16 HF dir)" "$name" "$numel" $BIN import "$gguf" -o "$TMP/$name"
  measure "quantize --target balanced" "$name" "$numel" $BIN quantize "$TMP/$name" -o "$TMP/q" --json
  measure "quantize --target balanced --quantize-embeddings" "$name" "$numel" $BIN quantize "$TMP/$name" -o "$TMP/q" --json --quantize-embeddings
  measure "quantize straight from the GGUF" "$name" "$numel" $BIN quantize "$gguf" -o "$TMP/q" --json
done
cat "$out"
