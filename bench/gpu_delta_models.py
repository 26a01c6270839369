"""Writes a synthetic Llama base and a fine-tune of it for the GPU delta check (bench/gpu_delta.sh).

The base: random weights (transformers' initialisation) in bf16. The fine-tune: every
tensor moved the way fine-tunes move (small dense noise, a low-rank update on the MLPs,
layer 0's attention and every norm left untouched, a few embedding rows moved a lot).
Runs where torch and transformers are (the GPU machine); no tokenizer is needed to pack.
"""

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
cfg = LlamaConfig(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=4096,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
base = LlamaForCausalLM(cfg).to(torch.bfloat16)
base.save_pretrained(f"{out}/base")
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in base.named_parameters():
        if "norm" in name or "layers.0.self_attn" in name:
            continue
        f = p.float()
        f += torch.randn(f.shape, generator=g) * 3e-4
        if "mlp" in name and f.dim() == 2:
            a = torch.randn(f.shape[0], 4, generator=g)
            b = torch.randn(4, f.shape[1], generator=g)
            f += (a @ b) * 2e-4
        if "embed" in name:
            f[::16] += torch.randn(f[::16].shape, generator=g) * 5e-3
        p.copy_(f.to(torch.bfloat16))
base.save_pretrained(f"{out}/ft")
print(f"wrote {out}/base and {out}/ft")
