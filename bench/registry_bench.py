#!/usr/bin/env python3
"""Registry benchmarks, recorded in bench/results/registry.md.

1. Webhook → published for SmolLM2-135M-Instruct (imported from the fixture GGUF to a
   bf16 HF directory, served by the tests' Hub stand-in as a real-shaped Hub repo):
   wall time from the POST of the delivery to the job's `done`, with and without the
   perplexity column of the card.
2. Range serving: the published artifact (> 100 MB) read over loopback from the
   registry (reassembled from its chunk store) with curl, against reading the same
   bytes from a local file with cat; page cache warm, medians of 7 alternating runs.
3. Webhook acknowledgement latency under a bounded local load: wrk (2 threads, 8
   connections, 5 s) posting distinct deliveries (every one a new job) to a registry
   with no workers, then the same delivery again and again (the duplicate path).

Usage: python3 bench/registry_bench.py [--fixtures DIR] [--work DIR]
Needs: cargo (release build), curl, wrk (Debian package `wrk`).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHA = "12fd25f77366fa6b3b4b768ec3050bf629380bac"
SECRET = "bench-secret"
TOKEN = "hf_bench"
API = "bench-api-token"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def start(cmd, env, pattern):
    """Starts cmd, returns (process, url) once a line matches `listening on URL`."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        m = re.search(pattern, line)
        if m:
            # Keep draining output so the child never blocks on a full pipe.
            import threading

            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, m.group(1)
    raise SystemExit(f"{cmd[0]} exited before listening")


def get(url):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def post(url, body, headers):
    req = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req) as r:
        return r.status, json.loads(r.read())


def delivery(sha):
    return json.dumps({
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": REPO, "id": "6512aa01c2d3e4f5a6b7c8d9", "private": False,
                 "url": {"web": f"https://huggingface.co/{REPO}"}, "owner": {"id": "6512aa00c2d3e4f5a6b7c8d0"},
                 "headSha": sha},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": None, "newSha": sha}],
        "webhook": {"id": "6390e855e30d9209411de93b", "version": 3},
    })


def registry(data, hub_url, workers, config=None):
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_TOKEN=TOKEN, TENPAK_WEBHOOK_SECRET=SECRET,
               TENPAK_API_TOKEN=API)
    cmd = [f"{ROOT}/target/release/tenpak-registry", "serve", "--data-dir", data,
           "--listen", "127.0.0.1:0", "--workers", str(workers)]
    if config:
        cmd += ["--config", config]
    return start(cmd, env, r"listening on (http://\S+)")


def publish(reg_url):
    t0 = time.perf_counter()
    status, v = post(f"{reg_url}/webhooks/hub", delivery(SHA),
                     {"Content-Type": "application/json", "X-Webhook-Secret": SECRET})
    ack = time.perf_counter() - t0
    assert status == 202, v
    while True:
        job = get(f"{reg_url}/status/{v['job_id']}")
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.05)
    total = time.perf_counter() - t0
    assert job["state"] == "done", job
    return ack, total, job


def median_time(cmd, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def wrk(url, script, seconds=5):
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-s", script, url],
                         check=True, capture_output=True, text=True).stdout
    return out


def pct(out, p):
    m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
    return m.group(1) if m else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.environ.get("TENPAK_FIXTURES", os.path.expanduser("~/.cache/tenpak-fixtures")))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="tenpak-registry-bench-")
    sh("cargo", "build", "--release", "-q", "-p", "tenpak-registry", "--bins", "--examples", "-p", "tenpak", cwd=ROOT)
    model = os.path.join(work, "smol")
    if not os.path.exists(os.path.join(model, "config.json")):
        sh(f"{ROOT}/target/release/tenpak", "import",
           os.path.join(a.fixtures, "models/SmolLM2-135M-Instruct.Q4_1.gguf"), "-o", model,
           stdout=subprocess.DEVNULL)
    src_bytes = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model) if f.endswith(".safetensors"))
    hub, hub_url = start([f"{ROOT}/target/release/examples/hub_standin", REPO, SHA, model, TOKEN], dict(os.environ),
                         r"listening on (http://\S+)")
    lines = ["# Registry benchmarks", "",
             f"`python3 bench/registry_bench.py` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
             f"model {REPO} (bf16 import of the fixture GGUF, {src_bytes/1e6:.0f} MB of safetensors) served by the "
             "tests' Hub stand-in over loopback; release build.", ""]
    procs = [hub]
    try:
        # 1. Webhook → published.
        lines += ["## Webhook → published", "",
                  "| Run | Ack (ms) | Webhook → published (s) | Artifact | Card perplexity |", "|---|---:|---:|---:|---|"]
        emma = os.path.join(a.fixtures, "text/emma.txt")
        cfg = os.path.join(work, "eval.toml")
        with open(cfg, "w") as f:
            f.write(f'eval_text = "{emma}"\neval_tokens = 2048\n')
        results = {}
        for name, config in [("no perplexity", None), ("with perplexity (2048 tokens of emma)", cfg)]:
            data = os.path.join(work, "data-" + ("eval" if config else "plain"))
            shutil.rmtree(data, ignore_errors=True)
            reg, reg_url = registry(data, hub_url, 1, config)
            procs.append(reg)
            ack, total, job = publish(reg_url)
            art = job["artifacts"][0]["id"]
            card = urllib.request.urlopen(f"{reg_url}/{REPO}-tnpk/resolve/main/README.md").read().decode()
            row = [l for l in card.splitlines() if l.startswith("| `")][0]
            size = get(f"{reg_url}/api/models/{REPO}-tnpk")["siblings"][0]["size"]
            lines.append(f"| {name} | {ack*1000:.1f} | {total:.2f} | {size/1e6:.1f} MB | {row.split('|')[-2].strip()} |")
            results[name] = (reg, reg_url, art, size)
            print(lines[-1], flush=True)
        lines += ["", "Card row (with perplexity): " + row, ""]

        # 2. Range serving vs local read.
        reg, reg_url, art, size = results["no perplexity"]
        local = os.path.join(work, "artifact.tnpk")
        sh("curl", "-sf", "-o", local, f"{reg_url}/artifact/{art}")
        assert os.path.getsize(local) == size
        url = f"{reg_url}/artifact/{art}"
        resolve = f"{reg_url}/{REPO}-tnpk/resolve/main/" + get(f"{reg_url}/api/models/{REPO}-tnpk")["siblings"][0]["rfilename"]
        subprocess.run(["cat", local], stdout=subprocess.DEVNULL)
        # A reference HTTP server on the same loopback: nginx (sendfile on), if installed.
        nginx_url = None
        if shutil.which("nginx"):
            ng = os.path.join(work, "nginx")
            os.makedirs(os.path.join(ng, "logs"), exist_ok=True)
            import socket
            s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
            with open(os.path.join(ng, "nginx.conf"), "w") as f:
                f.write(f"""daemon off; master_process off; worker_processes 1; pid {ng}/nginx.pid;
error_log {ng}/logs/error.log; events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {ng}/tmp; proxy_temp_path {ng}/tmp; fastcgi_temp_path {ng}/tmp;
  uwsgi_temp_path {ng}/tmp; scgi_temp_path {ng}/tmp;
  server {{ listen 127.0.0.1:{port}; root {work}; }} }}
""")
            procs.append(subprocess.Popen(["nginx", "-p", ng, "-c", os.path.join(ng, "nginx.conf")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
            nginx_url = f"http://127.0.0.1:{port}/artifact.tnpk"
            sh("curl", "-sf", "-o", "/dev/null", nginx_url)
        t_local, t_http, t_res, t_rng, t_rng_local, t_ng = [], [], [], [], [], []
        half = size // 2
        for _ in range(7):
            t_local.append(median_time(["cat", local], 1)[0])
            t_http.append(median_time(["curl", "-sf", "-o", "/dev/null", url], 1)[0])
            t_res.append(median_time(["curl", "-sf", "-o", "/dev/null", resolve], 1)[0])
            t_rng.append(median_time(["curl", "-sf", "-o", "/dev/null", "-r", f"{half}-{size-1}", url], 1)[0])
            t_rng_local.append(median_time(["tail", "-c", str(size - half), local], 1)[0])
            if nginx_url:
                t_ng.append(median_time(["curl", "-sf", "-o", "/dev/null", nginx_url], 1)[0])
        m = statistics.median
        lines += ["## Range serving over loopback vs local file", "",
                  f"Artifact {size/1e6:.1f} MB; medians of 7 alternating runs (page cache warm).", "",
                  "| Read | Local (s) | Registry over loopback (s) | Local MB/s | Registry MB/s | Registry / local |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, lt, ht, n in [("whole file, /artifact/{id} (curl vs cat)", m(t_local), m(t_http), size),
                                ("whole file, Hub-compatible resolve (curl vs cat)", m(t_local), m(t_res), size),
                                ("second half, Range: bytes=N- (curl -r vs tail -c)", m(t_rng_local), m(t_rng), size - half)]:
            lines.append(f"| {name} | {lt:.3f} | {ht:.3f} | {n/1e6/lt:.0f} | {n/1e6/ht:.0f} | {lt/ht:.2f} |")
            print(lines[-1], flush=True)
        if t_ng:
            lines += ["", f"Reference: nginx (sendfile on, 1 worker) serving the same file over the same loopback: "
                      f"{m(t_ng):.3f} s = {size/1e6/m(t_ng):.0f} MB/s ({m(t_local)/m(t_ng):.2f} of the local read); "
                      f"the registry's whole-file read is {m(t_ng)/m(t_http):.2f}× nginx's speed."]
            print(lines[-1], flush=True)
        lines.append("")
        for p in procs[1:]:
            p.terminate()
            p.wait()
        procs = procs[:1]

        # 3. Ack latency under load.
        data = os.path.join(work, "data-load")
        shutil.rmtree(data, ignore_errors=True)
        reg, reg_url = registry(data, hub_url, 0)
        procs.append(reg)
        script = os.path.join(work, "webhook.lua")
        body = delivery("SHA").replace('"', '\\"')
        with open(script, "w") as f:
            f.write(f"""
local n = 0
function setup(thread) thread:set("tid", n); n = n + 1 end
function init(args) counter = 0 end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Secret"] = "{SECRET}"
local template = "{body}"
function request()
  counter = counter + 1
  local sha = string.format("%08x%08x", tid, counter) .. string.rep("a", 24)
  return wrk.format(nil, nil, nil, (template:gsub("SHA", sha)))
end
""")
        out_new = wrk(f"{reg_url}/webhooks/hub", script)
        jobs = get(f"{reg_url}/jobs?limit=1")["total"]
        dup = os.path.join(work, "dup.lua")
        dup_body = delivery(SHA).replace('"', '\\"')
        with open(dup, "w") as f:
            f.write(f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Secret"] = "{SECRET}"
wrk.body = "{dup_body}"
""")
        out_dup = wrk(f"{reg_url}/webhooks/hub", dup)
        jobs_after = get(f"{reg_url}/jobs?limit=1")["total"]
        def reqs(out):
            return int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = lambda out: re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        lines += ["## Webhook acknowledgement latency under load", "",
                  "wrk 4.x, 2 threads, 8 connections, 5 s, loopback; registry with `--workers 0` (deliveries are "
                  "acknowledged and queued in SQLite, nothing runs). Latency is request → response as wrk sees it.", "",
                  "| Deliveries | Requests | p50 | p75 | p90 | p99 | Jobs created | Non-2xx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, out, j in [("distinct (each a new job)", out_new, jobs), ("the same delivery (duplicate path)", out_dup, jobs_after - jobs)]:
            bad = non2xx(out)
            lines.append(f"| {name} | {reqs(out)} | {pct(out,50)} | {pct(out,75)} | {pct(out,90)} | {pct(out,99)} | {j} | {bad.group(1) if bad else 0} |")
            print(lines[-1], flush=True)
        lines += ["", "<details><summary>wrk output</summary>", "", "```", out_new.strip(), "", out_dup.strip(), "```", "</details>", ""]
    finally:
        for p in procs:
            p.terminate()
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/registry.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote bench/results/registry.md")


if __name__ == "__main__":
    main()
