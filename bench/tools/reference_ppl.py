"""Reference perplexity and throughput with Hugging Face transformers (float32, eager
attention, CPU, torch threads = cores) on an HF directory, with the window rule of
`tenpak eval` (tokenized once without special tokens; non-overlapping windows of ctx;
BOS prepended and all ctx scored if the tokenizer adds one, else last ctx-1 scored).

    python3 bench/tools/reference_ppl.py MODEL_DIR TEXT [--ctx 512] [--max-tokens 8192]
    python3 bench/tools/reference_ppl.py FILE.gguf TEXT ...   # transformers' GGUF loader
                                                               # (model and tokenizer from the file)
    ... --tokenizer DIR       # tokenize with DIR's tokenizer (the weights' check alone)

Prints one JSON object: ppl, tokens, tokens_per_s (tokens fed / forward time).
"""
import argparse, json, math, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("model"); p.add_argument("text")
p.add_argument("--tokenizer", help="tokenize with this HF directory's tokenizer instead of the model's own")
p.add_argument("--ctx", type=int, default=512); p.add_argument("--max-tokens", type=int, default=8192)
a = p.parse_args()
torch.set_num_threads(torch.get_num_threads())
tok_override = AutoTokenizer.from_pretrained(a.tokenizer) if a.tokenizer else None
if a.model.endswith(".gguf"):
    import os
    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
else:
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
ids = tok(open(a.text, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][: a.max_tokens]
tok = tok_override or tok
with_bos = tok("", add_special_tokens=True)["input_ids"]
bos = with_bos[0] if len(with_bos) == 1 else None
if a.model.endswith(".gguf") and bos is None:
    # transformers' GGUF tokenizer does not honour tokenizer.ggml.add_bos_token (Gemma 3:
    # no BOS, PPL in the hundreds); take the file's word for it, as llama.cpp does.
    from gguf import GGUFReader
    f = GGUFReader(a.model).fields
    if "tokenizer.ggml.add_bos_token" in f and f["tokenizer.ggml.add_bos_token"].contents():
        bos = f["tokenizer.ggml.bos_token_id"].contents()
nll, scored, fed, t = 0.0, 0, 0, 0.0
with torch.inference_mode():
    for s in range(0, len(ids) - a.ctx + 1, a.ctx):
        w = ids[s : s + a.ctx]
        inp = torch.tensor([([bos] if bos is not None else []) + w])
        t0 = time.perf_counter()
        logits = model(inp).logits[0].float()
        t += time.perf_counter() - t0
        lp = torch.log_softmax(logits[:-1], -1)
        tgt = inp[0, 1:]
        nll -= lp.gather(1, tgt[:, None]).sum().item()
        scored += len(tgt)
        fed += inp.shape[1]
print(json.dumps({"ppl": math.exp(nll / scored), "nll_sum": nll, "tokens": scored, "tokens_per_s": fed / t,
                  "threads": torch.get_num_threads(), "torch": torch.__version__}))
