#!/usr/bin/env python3
"""Bits/weight and relative error of every codec and target on both fixture models, with
plain round-to-nearest (--refine-iters 0) at the same settings beside each, so the effect
of refinement is visible. Writes bench/results/quality_table.md.

    python3 bench/quality_table.py            # needs scripts/fixtures.sh run first

Models are imported from the fixture GGUFs as bf16 (what `tenpak import` writes by
default). Note: SmolLM2's weights lie on a Q4_1 grid of group 32 (fp16 scale and min), so
asymmetric INT4 at g32 nearly reproduces them; judge the codecs at the other group sizes
and on Gemma.
"""
import json, os, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.environ.get("TENPAK_FIXTURES", os.path.expanduser("~/.cache/tenpak-fixtures"))
BIN = os.path.join(ROOT, "target/release/tenpak")
MODELS = [("SmolLM2-135M", "models/SmolLM2-135M-Instruct.Q4_1.gguf"), ("Gemma-3-270M", "models/gemma-3-270m-q4_k_m.gguf")]
SETTINGS = [
    ("target quality", ["--target", "quality"]),
    ("target balanced", ["--target", "balanced"]),
    ("target size", ["--target", "size"]),
    ("int4 g32", ["--codec", "int4", "--group-size", "32"]),
    ("int4 g64", ["--codec", "int4", "--group-size", "64"]),
    ("int4 g128", ["--codec", "int4", "--group-size", "128"]),
    ("int4 g256", ["--codec", "int4", "--group-size", "256"]),
    ("int4 g128 symmetric", ["--codec", "int4", "--group-size", "128", "--symmetric"]),
    ("int4 g128 + 0.5% fp16 outliers", ["--codec", "int4", "--group-size", "128", "--outliers", "0.5"]),
    ("int4_residual (g16/16)", ["--codec", "int4_residual"]),
    ("int4_residual g64/64", ["--codec", "int4_residual", "--group-size", "64"]),
    ("int4_g8_fp16", ["--codec", "int4_g8_fp16"]),
    ("int4_opt_llama", ["--codec", "int4_opt_llama"]),
    ("budget 4.5 bpw", ["--bits-per-weight", "4.5"]),
    ("target balanced + embeddings", ["--target", "balanced", "--quantize-embeddings"]),
]

def run(args):
    out = subprocess.run([BIN] + args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)

def main():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in MODELS:
            gguf = os.path.join(FIX, rel)
            if not os.path.exists(gguf):
                sys.exit(f"missing {gguf}: run scripts/fixtures.sh")
            hf = os.path.join(tmp, name)
            subprocess.run([BIN, "import", gguf, "-o", hf], check=True, capture_output=True)
            for label, args in SETTINGS:
                t0 = time.time()
                ref = run(["quantize", hf, "-o", os.path.join(tmp, "q"), "--json"] + args)
                secs = time.time() - t0
                rtn = run(["quantize", hf, "-o", os.path.join(tmp, "q"), "--json", "--refine-iters", "0"] + args)
                rows.append((name, label, ref, rtn, secs))
                print(f"{name:14} {label:32} {ref['bits_per_weight_quantized']:.3f} {ref['mean_rel_error']:.5f} rtn {rtn['mean_rel_error']:.5f}", file=sys.stderr)
    lines = [
        "# Codec quality on the fixture models",
        "",
        "Produced by `python3 bench/quality_table.py` (bf16 imports of the fixture GGUFs; blocks' linear",
        "layers quantized, embeddings/LM head/norms kept). bpw (quantized) is over the blocks' linear layers",
        "with every byte of each encoding counted; bpw (file) is over every tensor, kept ones at 16 bits.",
        "Relative error is ‖W − Q(W)‖/‖W‖ per tensor, averaged over the quantized tensors. RTN = same codec",
        "and groups with `--refine-iters 0` (min/max round-to-nearest); Δ = error change from refinement.",
        "",
        "| model | setting | bpw (quantized) | bpw (file) | ratio vs bf16 | rel. error (refined) | rel. error (RTN) | Δ | quantize time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label, ref, rtn, secs in rows:
        d = (ref["mean_rel_error"] / rtn["mean_rel_error"] - 1) * 100 if rtn["mean_rel_error"] else 0.0
        lines.append(f"| {name} | {label} | {ref['bits_per_weight_quantized']:.3f} | {ref['bits_per_weight_file']:.3f} | "
                     f"{ref['ratio_vs_source']:.2f}x | {ref['mean_rel_error']:.5f} | {rtn['mean_rel_error']:.5f} | {d:+.1f}% | {secs:.1f} |")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/quality_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

main()
