#!/usr/bin/env bash
# `tenpak optimize` on both fixture models (issue #18), with the same inputs twice (the
# second run is served from the cache; its time is recorded):
#   - SmolLM2-135M: every candidate;
#   - Gemma-3-270M: the uncalibrated candidates and AWQ g128 (every candidate takes
#     about an hour there on 2 cores).
# Evaluation: emma, first 4096 tokens, ctx 512; calibration: brown; --max-ppl-delta 15.
# CACHE=... (default ~/.cache/tenpak/optimize) keeps the packed candidates; BIN=... a
# release tenpak. Writes bench/results/optimize.md and the plots optimize_*.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
CACHE="${CACHE:-$HOME/.cache/tenpak/optimize}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin tenpak
  BIN=./target/release/tenpak
fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
run() {
  local name=$1 model=$2 cands=$3
  for pass in 1 2; do
    local t0=$(date +%s.%N)
    "$BIN" optimize "$FIX/models/$model" --text "$FIX/text/emma.txt" --calib-text "$FIX/text/brown.txt" \
      ${cands:+--candidates "$cands"} --max-ppl-delta 15 --max-tokens 4096 --cache "$CACHE" \
      --output "$TMP/$name.json" --plot "bench/results/optimize_$name.svg" > "$TMP/$name.$pass.txt"
    echo "$(date +%s.%N) - $t0" | bc > "$TMP/$name.$pass.s"
  done
}
run smollm2 SmolLM2-135M-Instruct.Q4_1.gguf ""
run gemma3 gemma-3-270m-q4_k_m.gguf "int4_residual,int4-g64,int4-g128,int4-g256,awq-g128,target-quality,target-balanced,bpw-4.25"
python3 - "$TMP" > bench/results/optimize.md <<'PY'
import json, sys
tmp = sys.argv[1]
print("# `tenpak optimize` on the fixture models\n")
print("Produced by `bash bench/optimize.sh`: emma (first 4096 tokens, ctx 512) for PPL, brown for calibration, "
      "`--max-ppl-delta 15`, every hardware of the table. Size, bits/weight, PPL and load time are measured on this "
      "machine; tokens/s and $/1M tokens are **estimates** (docs/OPTIMIZE.md). Plots: optimize_smollm2.svg, optimize_gemma3.svg.\n")
for name, title in [("smollm2", "SmolLM2-135M-Instruct"), ("gemma3", "Gemma-3-270M")]:
    r = json.load(open(f"{tmp}/{name}.json"))
    t1, t2 = (float(open(f"{tmp}/{name}.{p}.s").read()) for p in (1, 2))
    print(f"## {title}\n")
    print(f"First run {t1:.1f} s (measuring what the cache did not hold), second run with the same inputs {t2:.2f} s "
          f"(all from the cache). Chosen: **{r['chosen']['candidate']} on {r['chosen']['hardware']}**." if r["chosen"] else r["none_because"])
    print("\n| candidate | bytes | bits/weight | PPL | Δ PPL | load s | best hardware: est. tokens/s, $/1M tokens | frontier | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        m = row["measured"]
        best = min((e for e in row["estimates"] if e["fits"]), key=lambda e: e["usd_per_m_tokens"], default=None)
        b = f"{best['hardware']}: {best['tokens_per_s']:.0f}, ${best['usd_per_m_tokens']:.4f}" if best else "fits nowhere"
        print(f"| {m['candidate']} | {m['weight_bytes']} | {m['bits_per_weight']:.3f} | {m['ppl']:.4f} | {row['ppl_delta_pct']:+.2f}% | "
              f"{m['load_s']:.2f} | {b} | {'yes' if row['on_frontier'] else ''} | {row['verdict']} |")
    for s in r["skipped"]:
        print(f"| {s['candidate']} | | | | | | | | skipped: {s['reason']} |")
    print()
PY
cat bench/results/optimize.md
