#!/usr/bin/env bash
# Fisher vs Hessian sensitivity for the bit budget (issue #18): the same statistics file
# (brown, 32 windows of 512 tokens, plus the empirical Fisher diagonal on FISHER_SAMPLES
# of those windows), then `tenpak pack --bits-per-weight B --sensitivity S` at 3.25 and
# 4.25 bits/weight, each evaluated on emma (first 8192 tokens, ctx 512) on the source's
# windows. MODELS="smollm2 gemma3" (default smollm2); BIN=... a release tenpak; OUT=...
# keeps statistics and artifacts (default ~/.cache/tenpak/fisher). Writes
# bench/results/fisher.md.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
OUT="${OUT:-$HOME/.cache/tenpak/fisher}"
MODELS="${MODELS:-smollm2}"
FISHER_SAMPLES="${FISHER_SAMPLES:-32}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin tenpak
  BIN=./target/release/tenpak
fi
mkdir -p "$OUT"
secs() { local t0=$1; echo "$(date +%s.%N) - $t0" | bc; }
for m in $MODELS; do
  case $m in
    smollm2) f=SmolLM2-135M-Instruct.Q4_1.gguf ;;
    gemma3) f=gemma-3-270m-q4_k_m.gguf ;;
    *) echo "unknown model $m" >&2; exit 2 ;;
  esac
  model="$FIX/models/$f"
  stats="$OUT/$m.stats.safetensors"
  if [ ! -f "$stats" ]; then
    t0=$(date +%s.%N)
    "$BIN" calibrate "$model" --text "$FIX/text/brown.txt" --samples 32 --seq 512 \
      --fisher "$FISHER_SAMPLES" -o "$stats"
    secs "$t0" > "$OUT/$m.calibrate.s"
  fi
  [ -f "$OUT/$m.source.json" ] || "$BIN" eval "$model" --text "$FIX/text/emma.txt" --ctx 512 \
    --max-tokens 8192 --json > "$OUT/$m.source.json"
  for b in 3.25 4.25; do
    for s in hessian fisher; do
      a="$OUT/$m-$b-$s.tnpk"
      if [ ! -f "$OUT/$m-$b-$s.json" ]; then
        t0=$(date +%s.%N)
        "$BIN" pack "$model" --bits-per-weight "$b" --stats "$stats" --sensitivity "$s" -o "$a" --json > "$OUT/$m-$b-$s.pack.json"
        secs "$t0" > "$OUT/$m-$b-$s.pack.s"
        "$BIN" eval "$a" --text "$FIX/text/emma.txt" --ctx 512 --max-tokens 8192 --json > "$OUT/$m-$b-$s.json"
      fi
    done
  done
done
python3 - "$OUT" "$MODELS" > bench/results/fisher.md <<'PY'
import json, sys
out, models = sys.argv[1], sys.argv[2].split()
print("# Bit budgets: Fisher vs Hessian sensitivity\n")
print("Produced by `bash bench/fisher.sh` (MODELS=" + " ".join(models) + "): statistics on brown (32 windows of 512 "
      "tokens; the Fisher diagonal from a backward pass on each of them), `tenpak pack --bits-per-weight B --stats S "
      "--sensitivity {hessian,fisher}`, PPL on emma (first 8192 tokens, ctx 512) on the source's windows. Bits per "
      "weight over the blocks' linear layers, every byte counted (the budget's scope).\n")
names = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma-3-270M"}
for m in models:
    src = json.load(open(f"{out}/{m}.source.json"))
    cal = float(open(f"{out}/{m}.calibrate.s").read()) if __import__("os").path.exists(f"{out}/{m}.calibrate.s") else float("nan")
    print(f"## {names[m]}\n\nSource PPL {src['ppl']:.4f} ({src['tokens']} tokens). Calibration with the Fisher "
          f"diagonal: {cal:.0f} s.\n")
    print("| budget | sensitivity | bits/weight (linears) | PPL | Δ PPL | pack s |")
    print("|---|---|---|---|---|---|")
    for b in ("3.25", "4.25"):
        for s in ("hessian", "fisher"):
            r = json.load(open(f"{out}/{m}-{b}-{s}.json"))
            p = json.load(open(f"{out}/{m}-{b}-{s}.pack.json"))
            bits = p.get("bits_per_weight_quantized", p.get("bits_per_weight", float("nan")))
            t = float(open(f"{out}/{m}-{b}-{s}.pack.s").read())
            print(f"| {b} | {s} | {bits:.3f} | {r['ppl']:.4f} | {(r['ppl'] / src['ppl'] - 1) * 100:+.2f}% | {t:.0f} |")
    print()
PY
cat bench/results/fisher.md
