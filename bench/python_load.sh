#!/usr/bin/env bash
# Load time into torch on the CPU from the Python package (issue #19) against the CLI's
# own load (`tenpak load --json`: fetch + verify + decode into memory, nothing written),
# same artifacts, same machine, runs alternating (medians of RUNS, default 7; warm page
# cache: each file is read once before timing).
#   - SmolLM2-135M and Gemma-3-270M packed as int4 (balanced target's codec) from the
#     fixtures;
#   - Python: `tenpak.open(path).load()` (each tensor's own dtype, bf16) and
#     `.load(dtype=torch.float32)`, timed in-process from open to the last tensor.
# Needs the fixtures, a release build of the CLI and the release wheel installed in
# $PY's environment (PY=..., default .venv-py/bin/python):
#   cargo build --release --bin tenpak
#   maturin build --release -m python/Cargo.toml -o target/wheels-release && pip install ...
# Writes bench/results/python_load.md.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
PY="${PY:-.venv-py/bin/python}"
BIN="${BIN:-./target/release/tenpak}"
RUNS="${RUNS:-7}"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
$BIN pack "$FIX/models/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$TMP/smollm2.tnpk" --codec int4 --group-size 64 > /dev/null
$BIN pack "$FIX/models/gemma-3-270m-q4_k_m.gguf" -o "$TMP/gemma3.tnpk" --codec int4 --group-size 128 > /dev/null
"$PY" - "$BIN" "$RUNS" "$TMP/smollm2.tnpk" "$TMP/gemma3.tnpk" > bench/results/python_load.md <<'PY'
import json, os, statistics, subprocess, sys, time
import torch, tenpak
bin_, runs, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("# Load into torch on the CPU: Python package vs `tenpak load`\n")
print(f"Produced by `bash bench/python_load.sh` ({os.cpu_count()} cores, torch {torch.__version__}, "
      f"tenpak wheel {tenpak.__version__}); medians of {runs} alternating runs, warm page cache. "
      "`tenpak load`: total_s of `--json` (open, fetch, sha256, decode to f32, nothing kept). "
      "Python: `tenpak.open(f).load(...)` from open to the last torch tensor.\n")
print("| artifact | weights | file bytes | tenpak load (s) | Python load() bf16 (s) | ratio | Python load(f32) (s) | ratio |")
print("|---|---|---|---|---|---|---|---|")
for f in files:
    open(f, "rb").read()
    cli, bf16, f32 = [], [], []
    weights = 0
    for _ in range(runs):
        out = subprocess.run([bin_, "load", f, "--json"], capture_output=True, text=True, check=True).stdout
        cli.append(json.loads(out)["total_s"])
        t0 = time.perf_counter(); sd = tenpak.open(f).load(); bf16.append(time.perf_counter() - t0)
        weights = sum(t.numel() for t in sd.values()); del sd
        t0 = time.perf_counter(); sd = tenpak.open(f).load(dtype=torch.float32); f32.append(time.perf_counter() - t0)
        del sd
    c, b, g = (statistics.median(x) for x in (cli, bf16, f32))
    print(f"| {os.path.basename(f)} | {weights} | {os.path.getsize(f)} | {c:.3f} | {b:.3f} | {b / c:.2f}x | {g:.3f} | {g / c:.2f}x |", flush=True)
PY
cat bench/results/python_load.md
