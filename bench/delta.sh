#!/usr/bin/env bash
# The figures of issue #14 on the real fine-tune pair (scripts/finetune.sh): every delta
# mode's size and perplexity on text the fine-tune never saw (Pride and Prejudice, ctx
# 512, the first 8192 tokens), beside the base's and the fine-tune's own, in one run.
#
#   bash bench/delta.sh [TENPAK_BINARY]      -> bench/results/delta.md (+ JSON in $WORK)
#
# Per-core decode speed is `cargo bench --bench delta` (criterion, one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-target/release/tenpak}"
F="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
BASE="$F/models/smollm2-135m"
FT="$F/models/smollm2-135m-austen-ft"
TEXT="$F/text/prideprejudice.txt"
W="${WORK:-/tmp/tenpak-delta-bench}"
[ -s "$FT/model.safetensors" ] || { echo "no fine-tune fixture: run scripts/finetune.sh" >&2; exit 2; }
mkdir -p "$W"
EV=(--text "$TEXT" --ctx 512 --max-tokens 8192 --json)
run() { local name=$1; shift; echo "[delta] $name" >&2; "$T" pack "$FT" -o "$W/$name.tnpk" "$@" --json > "$W/$name.json"; }

run exact --base "$BASE" --delta exact
B="$W/exact.tnpk.base.tnpk"
run sign --base "$B" --delta sign
run auto1 --base "$B" --delta auto --delta-bits-per-weight 1
run auto2 --base "$B" --delta auto --delta-bits-per-weight 2
"$T" pack "$BASE" -o "$W/base-balanced.tnpk" --json > "$W/base-balanced.json"
"$T" pack "$FT" -o "$W/ft-balanced.tnpk" --json > "$W/ft-balanced.json"
run grid --base "$W/base-balanced.tnpk" --delta grid
run grid0 --base "$W/base-balanced.tnpk" --delta grid --delta-grid-refit 0
run gridb --base "$W/base-balanced.tnpk" --delta grid --delta-bits-per-weight 0.7

ev() { echo "[eval] $1" >&2; "$T" eval "${@:2}" "${EV[@]}" > "$W/ppl-$1.json"; }
ev base "$BASE"
ev ft "$FT"
for m in exact sign auto1 auto2; do ev "$m" "$W/$m.tnpk" --base "$B"; done
ev ft-balanced "$W/ft-balanced.tnpk"
for m in grid grid0 gridb; do ev "$m" "$W/$m.tnpk" --base "$W/base-balanced.tnpk"; done

python3 - "$W" > bench/results/delta.md <<'PY'
import json, sys, os
w = sys.argv[1]
j = lambda n: json.load(open(os.path.join(w, n)))
ppl = lambda n: j(f"ppl-{n}.json")["ppl"]
base, ft, ftb = ppl("base"), ppl("ft"), ppl("ft-balanced")
print("# Deltas on the fixture pair\n")
print("SmolLM2-135M-Instruct (bf16 import of the fixture GGUF) and its full fine-tune on three")
print("Austen novels (scripts/finetune.sh). Perplexity on text/prideprejudice.txt (never seen")
print("by the fine-tune), ctx 512, first 8192 tokens, `tenpak eval`. Produced by `bash bench/delta.sh`.\n")
print(f"base PPL {base:.4f}; fine-tune PPL {ft:.4f}; fine-tune packed on its own at `balanced` PPL {ftb:.4f}\n")
print("| mode | delta file bytes | bits/delta weight (file) | vs bf16 fine-tune | vs packed on its own | PPL | vs fine-tune | pack MB/s (2 cores) |")
print("|---|---|---|---|---|---|---|---|")
rows = [("exact", "exact"), ("sign x scale/row (BitDelta-style)", "sign"), ("auto, budget 1 bit", "auto1"), ("auto, budget 2 bits", "auto2"), ("on the base's grid (vs `balanced` base), groups refitted (default 1.5)", "grid"), ("on the base's grid, no refit (`--delta-grid-refit 0`)", "grid0"), ("on the base's grid, budget 0.7 bits (embeddings lossy)", "gridb")]
for label, n in rows:
    r = j(f"{n}.json"); p = ppl(n)
    ref = ftb if n.startswith("grid") else ft
    speed = r["source_bytes"] / 1e6 / r["encode_seconds"]
    print(f"| {label} | {r['file_bytes']:,} | {r['bits_per_weight']:.4f} | {r['ratio_vs_source']:.4f}x | {r['ratio_vs_full']:.4f}x | {p:.4f} | {100*(p/ref-1):+.2f}% | {speed:.1f} |")
fb = os.path.getsize(os.path.join(w, "ft-balanced.tnpk"))
for n in ["grid", "grid0", "gridb"]:
    g = j(f"{n}.json")
    print(f"\n`{n}` is {g['file_bytes']/fb:.4f}x of the fine-tune's own `balanced` artifact ({fb:,} bytes); its PPL is compared with that artifact's.")
for n in ["auto1", "auto2", "gridb"]:
    r = j(f"{n}.json"); c = {}
    for t in r["tensors"]:
        c[t["label"]] = c.get(t["label"], 0) + 1
    print(f"\n{n}: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda x: -x[1])))
PY
cat bench/results/delta.md
