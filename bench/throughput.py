#!/usr/bin/env python3
"""Runs `cargo bench --bench codecs` (one core, 2048x2048 f32 weights) and records encode
and decode throughput in weights/s per core beside a plain memcpy of the decoded f32
bytes from the same run, in bench/results/codec_throughput.md.

    python3 bench/throughput.py
"""
import json, os, platform, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 2048 * 2048
subprocess.run(["cargo", "bench", "--bench", "codecs"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
base = os.path.join(ROOT, "target/criterion/codec_1core")

def median_ns(*parts):
    with open(os.path.join(base, *parts, "new/estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]

memcpy = N / median_ns("memcpy_f32_output") * 1e9
rows = []
for codec in ["int4_g128_refine5", "int4_g128_rtn", "int4_residual_g16"]:
    for op in ["encode", "decode"]:
        rate = N / median_ns(op, codec) * 1e9
        rows.append((codec, op, rate))
cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
goals = {"encode": 2e8, "decode": 1e9}
lines = [
    "# Codec throughput, one core",
    "",
    f"Produced by `python3 bench/throughput.py` (criterion medians; {cpu}; {platform.machine()}).",
    "Matrix 2048 x 2048 f32, rayon limited to one thread. memcpy = copying the decoded f32 bytes, same run.",
    "Goals (issue #2): decode >= 1e9 weights/s per core, encode with refinement >= 2e8.",
    "",
    "| codec | op | weights/s per core | vs memcpy | goal |",
    "|---|---|---|---|---|",
    f"| memcpy (f32 output) | copy | {memcpy:.3e} | 1.000 | |",
]
for codec, op, rate in rows:
    goal = goals[op] if (op == "decode" or "refine" in codec) else None
    mark = "" if goal is None else ("met" if rate >= goal else "missed") + f" ({goal:.0e})"
    lines.append(f"| {codec} | {op} | {rate:.3e} | {rate / memcpy:.3f} | {mark} |")
os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
with open(os.path.join(ROOT, "bench/results/codec_throughput.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
