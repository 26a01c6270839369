#!/usr/bin/env python3
"""Per-job figures for capacity planning (docs/SCALING.md), recorded in
bench/results/stages.md: the seconds each pipeline stage of one registry job takes
(from the registry's own `tenpak_job_stage_duration_seconds` histograms at /metrics) and
the bytes it moves, for SmolLM2-135M-Instruct (bf16 import of the fixture GGUF) and for
a bigger synthetic Llama-shaped model, each served by the tests' Hub stand-in over
loopback. One worker, target `balanced`, no perplexity column.

Usage: python3 bench/stages.py [--profile debug|release] [--fixtures DIR] [--work DIR]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import registry_bench as rb  # noqa: E402

ROOT = rb.ROOT
BIG = (2048, 5632, 32000, 8)  # hidden, ff, vocab, layers: 0.54 B weights


def weights_of(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))


def stage_sums(url):
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    out = {}
    for m in re.finditer(r'^tenpak_job_stage_duration_seconds_sum\{stage="([^"]+)"\} (\S+)', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def run_one(profile, model, work, name, mode):
    hub, hub_url = rb.start([f"{ROOT}/target/{profile}/examples/hub_standin", rb.REPO, rb.SHA, model, rb.TOKEN, mode],
                            dict(os.environ), r"listening on (http://\S+)")
    data = os.path.join(work, f"data-{name}")
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_TOKEN=rb.TOKEN, TENPAK_WEBHOOK_SECRET=rb.SECRET,
               TENPAK_API_TOKEN=rb.API)
    reg, url = rb.start([f"{ROOT}/target/{profile}/tenpak-registry", "serve", "--data-dir", data,
                         "--listen", "127.0.0.1:0", "--workers", "1"], env, r"listening on (http://\S+)")
    try:
        ack, total, job = rb.publish(url)
        art = job["artifacts"][0]["url"]
        req = urllib.request.Request(f"{url}{art}", method="HEAD")
        size = int(urllib.request.urlopen(req).headers["Content-Length"])
        return total, stage_sums(url), size
    finally:
        reg.terminate()
        hub.terminate()
        reg.wait()
        hub.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="debug", choices=["debug", "release"])
    ap.add_argument("--fixtures", default=os.environ.get("TENPAK_FIXTURES", os.path.expanduser("~/.cache/tenpak-fixtures")))
    ap.add_argument("--work", default=None)
    ap.add_argument("--mode", default="basic", choices=["regular", "xet", "basic", "multipart"],
                    help="how the Hub stand-in takes large files (basic: LFS, as the Hub does for them)")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="tenpak-stages-")
    flags = ["--release"] if a.profile == "release" else []
    rb.sh("cargo", "build", "-q", *flags, "-p", "tenpak-registry", "--bins", "--examples", "-p", "tenpak", cwd=ROOT)
    smol = os.path.join(work, "smol")
    if not os.path.exists(os.path.join(smol, "config.json")):
        rb.sh(f"{ROOT}/target/{a.profile}/tenpak", "import",
              os.path.join(a.fixtures, "models/SmolLM2-135M-Instruct.Q4_1.gguf"), "-o", smol,
              stdout=subprocess.DEVNULL)
    big = os.path.join(work, "big")
    if not os.path.exists(os.path.join(big, "config.json")):
        rb.sh(f"{ROOT}/target/{a.profile}/examples/synth_model", big, *map(str, BIG), stdout=subprocess.DEVNULL)
    rows = []
    big_name = "synthetic Llama (hidden %d, ff %d, vocab %d, %d layers)" % BIG
    for name, model in [("SmolLM2-135M-Instruct", smol), (big_name, big)]:
        src = weights_of(model)
        total, stages, size = run_one(a.profile, model, work, name.split()[0], a.mode)
        rows.append((name, src, total, stages, size))
        print(name, src, total, stages, size, file=sys.stderr)
    order = ["resolve", "download", "pack", "verify", "evaluate", "store", "publish"]
    seen = [s for s in order if any(s in r[3] for r in rows)] + sorted({k for r in rows for k in r[3]} - set(order))
    lines = [
        "# One registry job, stage by stage (capacity planning, docs/SCALING.md)", "",
        f"`python3 bench/stages.py --profile {a.profile} --mode {a.mode}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
        "one worker, target `balanced`, no perplexity column; the Hub stand-in over loopback (so download and "
        f"upload show the registry's own cost, not a network's), large files taken by `{a.mode}` transfer. Stage seconds are the registry's "
        "`tenpak_job_stage_duration_seconds` sums at /metrics."
        + (" Debug build of the registry; the packing library and every dependency are built at opt-level 2 in it." if a.profile == "debug" else ""),
        "",
        "| Model | bf16 weights (MB) | " + " | ".join(f"{s} (s)" for s in seen) + " | webhook → published (s) | artifact (MB) | s per GB of weights |",
        "|---|---:|" + "---:|" * len(seen) + "---:|---:|---:|",
    ]
    for name, src, total, stages, size in rows:
        lines.append(f"| {name} | {src / 1e6:.0f} | " + " | ".join(f"{stages.get(s, 0):.2f}" for s in seen)
                     + f" | {total:.2f} | {size / 1e6:.1f} | {total / (src / 1e9):.1f} |")
    out = os.path.join(ROOT, "bench/results/stages.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
