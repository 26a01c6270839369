"""Fixtures of the Python package's tests: a tiny Llama-shaped model written with torch
and safetensors, packed by the `tenpak` CLI (TENPAK_BIN), and an HTTP server that serves
files with Range support and counts the bytes it sends.

The server stands in for what serves `.tnpk` files in production: the Hugging Face Hub's
`resolve/` endpoint (and its CDN) and the TenPak registry, which answer
`Range: bytes=a-b` with `206 Partial Content` and a `Content-Range` header.
"""

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest


def tenpak_bin() -> str:
    b = os.environ.get("TENPAK_BIN") or shutil.which("tenpak")
    if not b:
        pytest.fail("set TENPAK_BIN to the tenpak binary (scripts/python.sh does)")
    return b


def run(*args, check=True):
    r = subprocess.run([tenpak_bin(), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"tenpak {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r


LAYERS = 4


def write_model(d: Path, seed: int, base: Path = None, touched=()):
    """A Llama-shaped model (bf16) in `d`; with `base`, a copy of it whose `touched`
    tensors moved a little (a fine-tune)."""
    import torch
    from safetensors.torch import load_file, save_file

    d.mkdir(parents=True, exist_ok=True)
    hidden, inter, vocab, heads, kv = 256, 512, 384, 4, 2
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    if base is not None:
        sd = load_file(str(base / "model.safetensors"))
        g = torch.Generator().manual_seed(seed)
        for name in touched:
            t = sd[name].float()
            sd[name] = (t + 0.01 * t.std() * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d
    g = torch.Generator().manual_seed(seed)

    def w(*shape, std=0.02):
        return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    hd = hidden // heads
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd[p + "self_attn.q_proj.weight"] = w(heads * hd, hidden)
        sd[p + "self_attn.k_proj.weight"] = w(kv * hd, hidden)
        sd[p + "self_attn.v_proj.weight"] = w(kv * hd, hidden)
        sd[p + "self_attn.o_proj.weight"] = w(hidden, heads * hd)
        sd[p + "mlp.gate_proj.weight"] = w(inter, hidden)
        sd[p + "mlp.up_proj.weight"] = w(inter, hidden)
        sd[p + "mlp.down_proj.weight"] = w(hidden, inter)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


class RangeServer:
    """Serves a directory with Range support; counts requests and bytes sent."""

    def __init__(self, root: Path):
        self.root = root
        self.bytes_sent = 0
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = server.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                with path.open("rb") as f:
                    if m:
                        a = int(m.group(1))
                        b = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                        f.seek(a)
                        body = f.read(b - a + 1)
                        self.send_response(206)
                        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
                    else:
                        body = f.read()
                        self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)
                server.requests += 1
                server.bytes_sent += len(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def reset(self):
        self.bytes_sent = 0
        self.requests = 0

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """The model, its artifact (int4 g64, signed), a fine-tune delta, keys."""
    d = tmp_path_factory.mktemp("tenpak")
    base = write_model(d / "base", seed=1)
    tune = write_model(
        d / "tune",
        seed=2,
        base=base,
        touched=["model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.q_proj.weight"],
    )
    run("keygen", "-o", d / "signer")  # signer (secret) and signer.pub
    run("keygen", "-o", d / "other")
    run("pack", base, "-o", d / "base.tnpk", "--codec", "int4", "--group-size", "64", "--sign", d / "signer")
    run("pack", tune, "-o", d / "tune.tnpk", "--base", d / "base.tnpk", "--sign", d / "signer")
    return d


@pytest.fixture()
def server(work):
    s = RangeServer(work)
    yield s
    s.close()
