#!/usr/bin/env bash
# GPTQ error feedback vs plain refined INT4 at equal bits/weight, by perplexity.
# Calibrate on the Brown corpus (32 windows of 512 tokens), evaluate on Emma (first 8192
# tokens, windows of 512) — text calibration never saw. Writes bench/results/gptq_ppl.md.
# Usage: bash bench/gptq_ppl.sh [WORK_DIR]   (needs the fixtures: scripts/fixtures.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
FX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK"
cargo build --release -q -p tenpak
T=target/release/tenpak
OUT=bench/results/gptq_ppl.md
{
  echo "# GPTQ error feedback vs plain INT4 (\`bash bench/gptq_ppl.sh\`, $(date -u +%F), $(nproc) cores)"
  echo
  echo "Calibration: Brown corpus, 32 windows × 512 tokens, full XᵀX for every linear input. Evaluation: first 8192 tokens of Emma, windows of 512 (the reference protocol). Plain = min/max + 5 least-squares refinement iterations per group; GPTQ = the same group fit at each group's start, error feedback through the inverse Hessian (damping 1 %, no activation order). Bits/weight over the quantized linear layers, all overhead counted."
  echo
  echo "| Model | Group | Bits/weight | Unquantized PPL | Plain PPL (Δ) | GPTQ PPL (Δ) | Calibrate (s) | Plain encode (s) | GPTQ encode (s) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$OUT"
for spec in "smol SmolLM2-135M-Instruct.Q4_1.gguf 1536" "gemma gemma-3-270m-q4_k_m.gguf 2048"; do
  set -- $spec
  name=$1 gguf=$2 width=$3
  [ -f "$WORK/$name/config.json" ] || $T import "$FX/models/$gguf" -o "$WORK/$name" >/dev/null
  stats="$WORK/$name-stats.safetensors"
  t0=$(date +%s.%N)
  cached=0; [ -f "$stats" ] && cached=1
  [ -f "$stats" ] || $T calibrate "$WORK/$name" --text "$FX/text/brown.txt" --samples 32 --seq 512 --xtx-max-width "$width" -o "$stats" >/dev/null
  tcal=$(echo "$(date +%s.%N) - $t0" | bc)
  [ $cached = 1 ] && tcal=cached
  for g in 128 64; do
    row="| $name | $g"
    for mode in plain gptq; do
      extra=""
      [ $mode = gptq ] && extra="--gptq --stats $stats"
      t0=$(date +%s.%N)
      $T quantize "$WORK/$name" -o "$WORK/$name-$mode-g$g" --codec int4 --group-size $g $extra --json > "$WORK/$name-$mode-g$g.json"
      eval "t_$mode=\$(echo \"\$(date +%s.%N) - $t0\" | bc)"
      $T eval "$WORK/$name" --text "$FX/text/emma.txt" --max-tokens 8192 --ctx 512 \
        --compare "$WORK/$name-$mode-g$g" --json > "$WORK/$name-$mode-g$g.eval.json"
    done
    row=$(python3 - "$WORK" "$name" "$g" "$t_plain" "$t_gptq" "$tcal" <<'EOF'
import json, sys
w, n, g, tp, tg, tc = sys.argv[1:]
q = json.load(open(f"{w}/{n}-plain-g{g}.json"))
p = json.load(open(f"{w}/{n}-plain-g{g}.eval.json"))
e = json.load(open(f"{w}/{n}-gptq-g{g}.eval.json"))
print(f"| {n} | {g} | {q['bits_per_weight_quantized']:.3f} | {p['ppl']:.3f} | {p['ppl_compare']:.3f} ({p['delta_pct']:+.1f} %) "
      f"| {e['ppl_compare']:.3f} ({e['delta_pct']:+.1f} %) | {tc if tc == 'cached' else f'{float(tc):.0f}'} | {float(tp):.1f} | {float(tg):.1f} |")
EOF
)
    echo "$row" | tee -a "$OUT"
  done
done
echo "wrote $OUT"
