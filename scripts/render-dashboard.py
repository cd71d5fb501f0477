#!/usr/bin/env python3
"""Render the llmvisor dashboard's main panels from a real run, as a PNG.

Runs llmvisor with examples/two-gpu.toml (mock backends) on 127.0.0.1:18480, drives
a bounded mixed load for `--seconds` (Open WebUI chats and streams, n8n batch work
with long prompts, embeddings, a few requests for a model n8n may not use, one bad
key), scrapes /metrics every 2 s, and draws what the Grafana dashboard
(nixos-modules/grafana/llmvisor-dashboard.json) shows: requests/s by target, p50/p95
latency and time to first token, tokens/s, in flight and queued, model states, plus
`llmvisor usage --by client` from the usage store of the same run.

    python3 scripts/render-dashboard.py [--seconds 60] [--out docs/observability.png]

Needs matplotlib (pip install matplotlib) and built binaries (cargo build).
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 18480


def config(bin_dir, work):
    text = open(os.path.join(ROOT, "examples/two-gpu.toml")).read()
    text = text.replace('"llmvisor-mock"', json.dumps(os.path.join(bin_dir, "llmvisor-mock")))
    text = text.replace('listen = ["127.0.0.1:8080"]', f'listen = ["127.0.0.1:{PORT}"]')
    text = re.sub(r"^port = 80(\d\d)$", lambda m: f"port = {18400 + int(m.group(1))}", text, flags=re.M)
    text += f'\n[store]\npath = {json.dumps(os.path.join(work, "usage.sqlite"))}\n'
    path = os.path.join(work, "llmvisor.toml")
    open(path, "w").write(text)
    return path


def post(path, key, body, stream=False, timeout=60):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0


def load(stop, seed):
    rnd = random.Random(seed)
    while not stop.is_set():
        x = rnd.random()
        words = "word " * rnd.choice([50, 200, 800, 1600])
        if x < 0.35:
            post("/v1/chat/completions", "sk-webui-demo",
                 {"model": rnd.choice(["llama", "qwen-coder", "deepseek"]), "stream": rnd.random() < 0.6,
                  "max_tokens": 16, "messages": [{"role": "user", "content": words}]})
        elif x < 0.75:
            long = "word " * rnd.choice([200, 4800])
            post("/v1/chat/completions", "sk-n8n-demo",
                 {"model": rnd.choice(["llama", "qwen-coder"]), "max_tokens": 12,
                  "messages": [{"role": "user", "content": long}]})
        elif x < 0.95:
            post("/v1/embeddings", "sk-n8n-demo", {"model": "bge-m3", "input": words[:400]})
        elif x < 0.98:
            post("/v1/chat/completions", "sk-n8n-demo", {"model": "deepseek", "messages": []})
        else:
            post("/v1/chat/completions", "sk-wrong", {"model": "llama", "messages": []})
        time.sleep(rnd.uniform(0.0, 0.05))


SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} ([0-9.eE+-]+)$')


def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5).read().decode()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def total(samples, name, key=None, where=None):
    acc = {}
    for n, l, v in samples:
        if n != name or (where and not where(l)):
            continue
        k = l.get(key, "") if key else ""
        acc[k] = acc.get(k, 0.0) + v
    return acc


def quantile(prev, cur, name, key, q):
    """histogram_quantile over the interval, per `key` label."""
    res = {}
    buckets = {}
    for n, l, v in cur:
        if n == name + "_bucket":
            buckets.setdefault(l[key], {})[float(l["le"]) if l["le"] != "+Inf" else float("inf")] = v
    before = {}
    for n, l, v in prev:
        if n == name + "_bucket":
            before.setdefault(l[key], {})[float(l["le"]) if l["le"] != "+Inf" else float("inf")] = v
    for k, b in buckets.items():
        les = sorted(b)
        counts = [b[le] - before.get(k, {}).get(le, 0.0) for le in les]
        n = counts[-1]
        if n <= 0:
            continue
        rank = q * n
        lo, lo_c = 0.0, 0.0
        for le, c in zip(les, counts):
            if c >= rank:
                if le == float("inf"):
                    res[k] = lo
                else:
                    res[k] = lo + (le - lo) * ((rank - lo_c) / max(c - lo_c, 1e-9))
                break
            lo, lo_c = le, c
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/observability.png"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/debug"))
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = tempfile.mkdtemp(prefix="llmvisor-dash-")
    cfg = config(args.bin, work)
    lv = subprocess.Popen([os.path.join(args.bin, "llmvisor"), "serve", "--config", cfg],
                          stderr=open(os.path.join(work, "llmvisor.log"), "w"))
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        stop = threading.Event()
        workers = [threading.Thread(target=load, args=(stop, i), daemon=True) for i in range(12)]
        t0 = time.time()
        series = []
        prev = scrape()
        for w in workers:
            w.start()
        while time.time() - t0 < args.seconds:
            time.sleep(2)
            cur = scrape()
            series.append((time.time() - t0, prev, cur))
            prev = cur
        stop.set()
        for w in workers:
            w.join(timeout=70)
        time.sleep(1.5)
        usage = subprocess.run([os.path.join(args.bin, "llmvisor"), "usage", "--by", "client", "--since", "1h",
                                "--db", os.path.join(work, "usage.sqlite")], capture_output=True, text=True).stdout
    finally:
        lv.terminate()
        lv.wait(timeout=30)

    fig, axes = plt.subplots(3, 2, figsize=(16, 13))
    fig.suptitle(f"llmvisor — seed 003's two-GPU example under a mixed load ({args.seconds} s, mock backends)",
                 fontsize=14)

    def plot(ax, title, unit, per_point):
        lines = {}
        for t, p, c in series:
            for k, v in per_point(p, c).items():
                lines.setdefault(k, []).append((t, v))
        for k in sorted(lines):
            xs, ys = zip(*lines[k])
            ax.plot(xs, ys, label=k or "all")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=7, loc="upper left", ncol=2)

    def rate(name, key, where=None):
        def f(p, c):
            a, b = total(p, name, key, where), total(c, name, key, where)
            return {k: (b[k] - a.get(k, 0.0)) / 2.0 for k in b}
        return f

    plot(axes[0][0], "Requests per second by target", "req/s", rate("llmvisor_requests_total", "target"))
    plot(axes[0][1], "Errors per second by status", "req/s",
         rate("llmvisor_requests_total", "status", lambda l: l.get("status", "0")[0] in "45"))
    plot(axes[1][0], "Request duration p95 by target", "seconds",
         lambda p, c: quantile(p, c, "llmvisor_request_duration_seconds", "target", 0.95))
    plot(axes[1][1], "Time to first token p50 by target", "seconds",
         lambda p, c: quantile(p, c, "llmvisor_time_to_first_token_seconds", "target", 0.5))
    plot(axes[2][0], "Tokens per second by kind", "tokens/s", rate("llmvisor_tokens_total", "kind"))
    plot(axes[2][1], "Queued requests by model", "requests",
         lambda p, c: {k: v for k, v in total(c, "llmvisor_queue_depth", "model").items()})
    fig.text(0.01, 0.005, "llmvisor usage --by client (same run):\n" + usage, family="monospace", fontsize=8,
             va="bottom")
    fig.tight_layout(rect=(0, 0.12, 1, 0.97))
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    print(usage)


if __name__ == "__main__":
    sys.exit(main())
