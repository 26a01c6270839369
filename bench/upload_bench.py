#!/usr/bin/env python3
"""Publishing benchmarks (issue #8), recorded in bench/results/upload.md.

For each way the Hub stand-in can take large files — `xet` (LFS batch answers
`transfer: "xet"`, the write token points at a real Xet CAS server, xet-client's
LocalServer, in the stand-in's process), LFS `basic`, LFS `multipart` (8 MiB parts) —
on a fresh stand-in and a fresh client cache:

1. `tenpak push A.tnpk` (A = SmolLM2-135M-Instruct packed `balanced`, 118 MB): wall
   time and throughput over loopback (the push includes hashing the file, the
   preupload and LFS batch calls, the transfer and the commit);
2. the same artifact again, under another name: bytes sent;
3. the same artifact from a client with an empty cache (a new machine, or a registry
   whose data dir was lost): bytes sent — what the CAS server's global deduplication
   saves;
4. B.tnpk, packed from the same model with one tensor changed
   (`model.layers.10.mlp.down_proj.weight` × 1.01): bytes sent.

"Bytes sent" is what the client's transfer reports (Xet: bytes uploaded after chunk
deduplication against the CAS server; LFS: objects the server did not already have).

Usage: python3 bench/upload_bench.py [--fixtures DIR] [--work DIR]
Needs: cargo, python3 with torch and safetensors (only to make B).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHA = "12fd25f77366fa6b3b4b768ec3050bf629380bac"
TOKEN = "hf_bench"
TENSOR = "model.layers.10.mlp.down_proj.weight"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def start_standin(model, mode):
    p = subprocess.Popen([f"{ROOT}/target/release/examples/hub_standin", REPO, SHA, model, TOKEN, mode],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            import threading
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, m.group(1)
    raise SystemExit("stand-in did not start")


def push(hub_url, home, artifact, path_in_repo):
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_TOKEN=TOKEN, HF_HOME=home)
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([f"{ROOT}/target/release/tenpak", "push", artifact, f"{REPO}-tnpk",
                          "--path-in-repo", path_in_repo, "--json"],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.environ.get("TENPAK_FIXTURES", os.path.expanduser("~/.cache/tenpak-fixtures")))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="tenpak-upload-bench-")
    sh("cargo", "build", "--release", "-q", "-p", "tenpak", "-p", "tenpak-registry", "--bins", "--examples", cwd=ROOT)
    tenpak = f"{ROOT}/target/release/tenpak"
    model = os.path.join(work, "smol")
    if not os.path.exists(os.path.join(model, "config.json")):
        sh(tenpak, "import", os.path.join(a.fixtures, "models/SmolLM2-135M-Instruct.Q4_1.gguf"), "-o", model,
           stdout=subprocess.DEVNULL)
    changed = os.path.join(work, "smol-changed")
    if not os.path.exists(os.path.join(changed, "config.json")):
        shutil.copytree(model, changed)
        sh("python3", "-c", f"""
import torch
from safetensors.torch import load_file, save_file
p = "{changed}/model.safetensors"
t = load_file(p)
t["{TENSOR}"] = (t["{TENSOR}"].float() * 1.01).to(t["{TENSOR}"].dtype)
save_file(t, p, metadata={{"format": "pt"}})
""")
    key = os.path.join(work, "key")
    if not os.path.exists(key):
        sh(tenpak, "keygen", "-o", key, stdout=subprocess.DEVNULL)
    A, B = os.path.join(work, "A.tnpk"), os.path.join(work, "B.tnpk")
    for src, out in [(model, A), (changed, B)]:
        if not os.path.exists(out):
            sh(tenpak, "pack", src, "-o", out, "--sign", key, stdout=subprocess.DEVNULL)
    size_a, size_b = os.path.getsize(A), os.path.getsize(B)
    info = json.loads(subprocess.run([tenpak, "info", B, "--json"], check=True, capture_output=True, text=True).stdout)
    t = [t for t in info["tensors"] if t["name"] == TENSOR][0]
    changed_bytes = t.get("encoded_length") or t.get("bytes") or 0

    lines = ["# Publishing benchmarks", "",
             f"`python3 bench/upload_bench.py` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, release build, loopback. "
             f"A = SmolLM2-135M-Instruct packed `balanced` ({size_a/1e6:.1f} MB); B = the same model with `{TENSOR}` "
             f"× 1.01 ({size_b/1e6:.1f} MB; that tensor's encoding is {changed_bytes/1e6:.2f} MB). "
             "Each mode runs on a fresh Hub stand-in and a fresh client cache (`HF_HOME`).", "",
             "| Mode | Push A (s) | Throughput | A sent | A again: sent | A again, fresh client cache: sent | B: sent | B: sent / B |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in ["xet", "basic", "multipart"]:
        proc, url = start_standin(model, mode)
        home = os.path.join(work, f"home-{mode}")
        shutil.rmtree(home, ignore_errors=True)
        try:
            r1 = push(url, home, A, "A.tnpk")
            r2 = push(url, home, A, "A-again.tnpk")
            r3 = push(url, home, B, "B.tnpk")
            fresh = home + "-fresh"
            shutil.rmtree(fresh, ignore_errors=True)
            r4 = push(url, fresh, A, "A-fresh.tnpk")
        finally:
            proc.terminate()
            proc.wait()
        assert r1["transfer"] == {"xet": "xet", "basic": "lfs_basic", "multipart": "lfs_multipart"}[mode], r1
        row = (f"| {mode} | {r1['seconds']:.2f} | {r1['bytes']/1e6/r1['seconds']:.0f} MB/s | {r1['bytes_sent']/1e6:.1f} MB "
               f"| {r2['bytes_sent']/1e6:.3f} MB | {r4['bytes_sent']/1e6:.3f} MB | {r3['bytes_sent']/1e6:.2f} MB | {r3['bytes_sent']/max(r3['bytes'],1)*100:.1f} % |")
        lines.append(row)
        print(row, flush=True)
    lines += ["",
              "Xet deduplicates by content-defined chunks, so publishing A again sends (almost) nothing and B sends "
              "about the changed tensor plus the chunks around the rewritten manifest and signature; LFS deduplicates "
              "whole objects only, so A again sends nothing and B, a different object, is sent whole.", ""]
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/upload.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote bench/results/upload.md")


if __name__ == "__main__":
    main()
