#!/usr/bin/env bash
# On the GPU machine (issue #19): the Python package's `load(device="cuda")` (wheel built
# with `--features cuda`: tenpak's kernels, memory handed to torch by DLPack) against
# `tenpak load --gpu` (tenpak::gpu::load_artifact) for the same artifact, and the CPU
# path's tensors, same run. The model is made there (no model files travel): a
# Llama-shaped bf16 model of ~1.1B weights written with torch, packed int4 g128.
# Usage (from the repository root on the device, devcarry/ holding the release binary
# `tenpak` and the cuda wheel): bash bench/python_gpu.sh OUT_DIR
set -euo pipefail
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
BIN=$PWD/devcarry/tenpak
W=/tmp/pygpu; rm -rf "$W"; mkdir -p "$W/site"
python3 -m pip install --quiet --no-deps --target "$W/site" devcarry/tenpak-*.whl
export PYTHONPATH=$W/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - "$W/model" <<'PY'
import json, os, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
h, inter, L, heads, kv, vocab = 2048, 5632, 22, 32, 4, 32000  # TinyLlama-1.1B's shapes
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=h, intermediate_size=inter,
           num_hidden_layers=L, num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
           max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="bfloat16",
           tie_word_embeddings=False)
json.dump(cfg, open(f"{d}/config.json", "w"))
g = torch.Generator().manual_seed(0)
def w(*s): return (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
sd = {"model.embed_tokens.weight": w(vocab, h), "lm_head.weight": w(vocab, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
hd = h // heads
for i in range(L):
    p = f"model.layers.{i}."
    sd[p+"input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd[p+"post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd[p+"self_attn.q_proj.weight"] = w(h, h); sd[p+"self_attn.k_proj.weight"] = w(kv*hd, h)
    sd[p+"self_attn.v_proj.weight"] = w(kv*hd, h); sd[p+"self_attn.o_proj.weight"] = w(h, h)
    sd[p+"mlp.gate_proj.weight"] = w(inter, h); sd[p+"mlp.up_proj.weight"] = w(inter, h)
    sd[p+"mlp.down_proj.weight"] = w(h, inter)
save_file(sd, f"{d}/model.safetensors", metadata={"format": "pt"})
print("weights", sum(t.numel() for t in sd.values()))
PY
"$BIN" pack "$W/model" -o "$W/m.tnpk" --codec int4 --group-size 128 --quantize-embeddings > "$OUT/pack.txt"
tail -n 3 "$OUT/pack.txt"
python3 - "$BIN" "$W/m.tnpk" 7 <<'PY' | tee "$OUT/python_gpu.md"
import json, os, statistics, subprocess, sys, time
import torch, tenpak
bin_, f, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
assert tenpak.HAS_CUDA, "the wheel was built without cuda"
open(f, "rb").read()
torch.zeros(1, device="cuda"); torch.cuda.synchronize()  # CUDA context up before timing
gpu = tenpak.open(f).load(device="cuda")
cpu = tenpak.open(f).load(device="cpu")
same = sum(torch.equal(gpu[n].cpu(), cpu[n]) for n in cpu)
weights = sum(t.numel() for t in cpu.values()); n = len(cpu)
del gpu, cpu
cli, py = [], []
for _ in range(runs):
    out = subprocess.run([bin_, "load", f, "--gpu", "--json"], capture_output=True, text=True, check=True).stdout
    cli.append(json.loads(out)["total_s"])
    torch.cuda.synchronize(); t0 = time.perf_counter()
    sd = tenpak.open(f).load(device="cuda"); torch.cuda.synchronize()
    py.append(time.perf_counter() - t0); del sd; torch.cuda.empty_cache()
c, p = statistics.median(cli), statistics.median(py)
print(f"# Python package on the GPU vs `tenpak load --gpu`\n\n{torch.cuda.get_device_name()}, torch {torch.__version__}; "
      f"artifact {os.path.getsize(f)} bytes, {weights} weights (Llama 1.1B shapes, int4 g128 incl. embeddings); medians of {runs} alternating runs, warm page cache.\n")
print("| path | median s | runs |\n|---|---|---|")
print(f"| `tenpak load --gpu --json` (total_s; tenpak::gpu::load_artifact, process already started) | {c:.3f} | {', '.join(f'{x:.3f}' for x in cli)} |")
print(f"| `tenpak.open(f).load(device='cuda')` + synchronize (DLPack) | {p:.3f} | {', '.join(f'{x:.3f}' for x in py)} |")
print(f"\nratio Python / CLI: {p / c:.2f}x; tensors equal to the CPU path's (bit for bit): {same}/{n}")
PY
