"""Independent reference for TenPak's GGUF import, from llama.cpp's own Python package.

Dequantizes every tensor of the fixture GGUFs with `gguf` (gguf-py, llama.cpp's reference
Python implementation of the block formats), applies the transformers-side fixups
independently in numpy (Llama Q/K un-permutation as transformers' GGUF loader does it,
Gemma 3 norm `- 1`), and

  * with --check DIR: compares every tensor of a `tenpak import` output against it;
  * with --write FILE: writes spot checks (a few values per ggml type and fixup) that
    the Rust test suite compares against without needing Python.

    python3 bench/tools/gguf_spot_checks.py MODEL.gguf --check IMPORTED_DIR
    python3 bench/tools/gguf_spot_checks.py MODEL.gguf --write tests/data/spot_<name>.json
"""
import argparse, json, sys
import numpy as np
import gguf

p = argparse.ArgumentParser()
p.add_argument("gguf")
p.add_argument("--check")
p.add_argument("--write")
a = p.parse_args()
r = gguf.GGUFReader(a.gguf)
arch = r.fields["general.architecture"].contents()
n_head = r.fields[f"{arch}.attention.head_count"].contents()
n_kv = r.fields[f"{arch}.attention.head_count_kv"].contents()

def reference(t):
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape([int(x) for x in reversed(t.shape.tolist())])
    if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
        h = n_head if "attn_q" in t.name else n_kv
        # transformers' reverse_permute_weights: inverse of convert_hf_to_gguf's permute
        dim = w.shape[0] // h // 2
        w = w.reshape(h, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
    if arch == "gemma3" and t.name.endswith("norm.weight"):
        w = w - 1.0
    return w

def hf_name(n):
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if n in top: return top[n]
    _, l, rest = n.split(".", 2)
    stem, suf = rest.rsplit(".", 1)
    m = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
         "ffn_norm": "post_attention_layernorm" if arch == "llama" else "pre_feedforward_layernorm",
         "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}[stem]
    return f"model.layers.{l}.{m}.{suf}"

if a.check:
    from safetensors.numpy import load_file
    import ml_dtypes  # noqa: F401  (bf16 support for numpy)
    got = load_file(f"{a.check}/model.safetensors")
    bad = 0
    for t in r.tensors:
        ref = reference(t)
        g = got[hf_name(t.name)].astype(np.float32)
        ref_bf16 = ref.astype(ml_dtypes.bfloat16).astype(np.float32)
        if g.shape != ref.shape or not np.array_equal(g, ref_bf16):
            bad += 1
            print("MISMATCH", t.name, t.tensor_type.name, g.shape, ref.shape, float(np.abs(g - ref_bf16).max()) if g.shape == ref.shape else "")
    print(f"{len(r.tensors) - bad}/{len(r.tensors)} tensors identical to gguf-py + fixups (bf16)")
    sys.exit(1 if bad else 0)

if a.write:
    rng = np.random.default_rng(0)
    checks, seen = [], set()
    for t in r.tensors:
        key = (t.tensor_type.name, t.name.endswith(("attn_q.weight", "attn_k.weight", "norm.weight")))
        if key in seen: continue
        seen.add(key)
        ref = reference(t).reshape(-1)
        idx = sorted(set(rng.integers(0, ref.size, 24).tolist()) | {0, ref.size - 1})
        checks.append({"gguf": t.name, "hf": hf_name(t.name), "type": t.tensor_type.name,
                       "index": idx, "value": [float(ref[i]) for i in idx]})
    json.dump({"source": a.gguf.split("/")[-1], "checks": checks}, open(a.write, "w"), indent=1)
    print("wrote", a.write, len(checks), "checks")
