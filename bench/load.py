#!/usr/bin/env python3
"""Registry under load (issue #15's load figure), recorded in bench/results/load.md.

Publishes SmolLM2-135M-Instruct through the tests' Hub stand-in (as bench/registry_bench.py
does), restarts the registry with no workers on the same data dir, then runs the load
generator (registry/examples/load.rs): N concurrent keep-alive connections, half posting
webhook deliveries and half reading random 1 MiB ranges of the published artifact, plus
slowloris clients that never finish their headers; the registry's RSS and open file
descriptors are sampled from /proc. After the load, /status must still answer.

Usage: python3 bench/load.py [--connections 512] [--slowloris 64] [--seconds 15]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import registry_bench as rb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.environ.get("TENPAK_FIXTURES", os.path.expanduser("~/.cache/tenpak-fixtures")))
    ap.add_argument("--connections", type=int, default=512)
    ap.add_argument("--slowloris", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=15)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tenpak-load-")
    rb.sh("cargo", "build", "--release", "-q", "-p", "tenpak-registry", "--bins", "--examples", "-p", "tenpak", cwd=rb.ROOT)
    model = os.path.join(work, "smol")
    rb.sh(f"{rb.ROOT}/target/release/tenpak", "import",
          os.path.join(a.fixtures, "models/SmolLM2-135M-Instruct.Q4_1.gguf"), "-o", model, stdout=subprocess.DEVNULL)
    hub, hub_url = rb.start([f"{rb.ROOT}/target/release/examples/hub_standin", rb.REPO, rb.SHA, model, rb.TOKEN],
                            dict(os.environ), r"listening on (http://\S+)")
    procs = [hub]
    try:
        data = os.path.join(work, "data")
        reg, reg_url = rb.registry(data, hub_url, 1)
        _, _, job = rb.publish(reg_url)
        art = job["artifacts"][0]["id"]
        reg.terminate()
        reg.wait()
        reg, reg_url = rb.registry(data, hub_url, 0)
        procs.append(reg)
        time.sleep(0.5)
        def load(connections, slowloris, seconds):
            out = subprocess.run([f"{rb.ROOT}/target/release/examples/load", "--url", reg_url,
                                  "--artifact", f"/artifact/{art}", "--secret", rb.SECRET, "--pid", str(reg.pid),
                                  "--connections", str(connections), "--slowloris", str(slowloris),
                                  "--seconds", str(seconds)], check=True, capture_output=True, text=True).stdout
            return json.loads(out)

        # Baseline in the same run: one connection of each kind, no slowloris.
        base = load(2, 0, 5)
        r = load(a.connections, a.slowloris, a.seconds)
        t0 = time.perf_counter()
        st = rb.get(f"{reg_url}/status/{job['id']}")
        after_ms = (time.perf_counter() - t0) * 1000
        assert st["state"] == "done", st
        w, g = r["webhooks"], r["ranges"]
        lines = ["# Registry under load", "",
                 f"`python3 bench/load.py --connections {a.connections} --slowloris {a.slowloris} --seconds {a.seconds}` "
                 f"on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; release build; registry with `--workers 0` "
                 "and default limits (max_connections 1024, header timeout 10 s); load generator "
                 "`registry/examples/load.rs` on the same machine (it competes for the same cores).", "",
                 "| Kind | Connections | Requests | Requests/s | p50 (ms) | p99 (ms) | max (ms) | MB/s | Errors | Non-2xx |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k in (base["webhooks"], base["ranges"]):
            lines.append(f"| {k['kind']} (baseline) | 1 | {k['requests']} | {k['per_s']:.0f} | {k['p50_ms']:.1f} | "
                         f"{k['p99_ms']:.1f} | {k['max_ms']:.1f} | {k['mb_per_s']:.0f} | {k['errors']} | {k['non_2xx']} |")
        for k in (w, g):
            lines.append(f"| {k['kind']} | {a.connections // 2} | {k['requests']} | {k['per_s']:.0f} | {k['p50_ms']:.1f} | "
                         f"{k['p99_ms']:.1f} | {k['max_ms']:.1f} | {k['mb_per_s']:.0f} | {k['errors']} | {k['non_2xx']} |")
        lines += ["",
                  f"Slowloris: {a.slowloris} connections sending one header byte every 2 s; "
                  f"{r['slowloris_closed_by_server']} closed by the server within the run (header timeout 10 s).",
                  f"Registry RSS: {r['rss_kib']['idle'] / 1024:.1f} MiB idle, {r['rss_kib']['peak'] / 1024:.1f} MiB peak; "
                  f"open fds: {r['fds']['idle']} idle, {r['fds']['peak']} peak.",
                  f"`/status/{job['id']}` right after the load: {after_ms:.1f} ms.",
                  f"Throughput under load against the one-connection baseline of the same run: webhooks "
                  f"{w['per_s'] / max(base['webhooks']['per_s'], 1e-9):.1f}x the requests/s, ranges "
                  f"{g['mb_per_s'] / max(base['ranges']['mb_per_s'], 1e-9):.1f}x the MB/s (two cores shared with the "
                  "generator: latency grows with the queue, throughput saturates the cores).", "",
                  "Raw:", "", "```json", json.dumps(r, indent=1), "```", ""]
        text = "\n".join(lines)
        print(text)
        with open(os.path.join(rb.ROOT, "bench/results/load.md"), "w") as f:
            f.write(text)
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
