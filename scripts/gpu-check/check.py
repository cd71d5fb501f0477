#!/usr/bin/env python3
"""The checks of scripts/gpu-check.sh: llmvisor on a real NVIDIA GPU (NVML, placement,
eviction, pinning by UUID, a real CUDA out-of-memory error, shutdown), with
scripts/gpu-check/server.py as the model. Standard library only; the models need
PyTorch in --python.

    check.py --llmvisor BIN --python PY            run every check (a GPU needed)
    check.py --llmvisor BIN --python PY --dry-run  write the configuration for a
                                                   made-up 80 GiB GPU and have
                                                   `llmvisor check-config` check it

One PASS/FAIL/SKIP line per check, then `N passed, N failed` (and skipped).
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024
# What a CUDA context and torch take besides the tensor: vram = hold + this.
OVERHEAD_MIB = 1536

results = []


def report(status, name, detail=""):
    results.append(status)
    print(f"{status} {name}{': ' + detail if detail else ''}", flush=True)


def check(name, ok, detail=""):
    report("PASS" if ok else "FAIL", name, detail)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sizes(gpus):
    """Model sizes from the inventory: `a` and `b` each take 60% of the most free
    memory of any GPU (so they never fit on one GPU together), `huge` asks for more
    than is really free but less than the total, `greedy` holds 125% of the total."""
    best = max(gpus, key=lambda g: g["memory_free"])
    free = best["memory_free"] // MIB
    total = best["memory_total"] // MIB
    big = int(free * 0.6)
    return {
        "best": best,
        "a_vram": big,
        "a_hold": max(big - OVERHEAD_MIB, 64),
        "huge_vram": (free + total) // 2,
        "greedy_hold": int(total * 1.25),
        "total": total,
        "free": free,
    }


def config(listen_port, python, s):
    server = os.path.join(HERE, "server.py")

    def model(name, hold, extra):
        argv = [python, server, "--port", "{port}", "--served-name", "{served_name}", "--hold-mib", str(hold)]
        return f"[models.{name}]\nkind = \"command\"\ncommand = {json.dumps(argv)}\n{extra}\n"

    return (
        f'[server]\nlisten = ["127.0.0.1:{listen_port}"]\nauth = "none"\n\n'
        '[units]\nmanager = "process"\n\n'
        + model("a", s["a_hold"], f'gpus = "any"\nvram = "{s["a_vram"]}MiB"\nstart_timeout = "120s"\nidle_ttl = "30m"')
        + model("b", s["a_hold"], f'gpus = "any"\nvram = "{s["a_vram"]}MiB"\nstart_timeout = "120s"\nidle_ttl = "30m"')
        + model("huge", 64, f'gpus = "any"\nvram = "{s["huge_vram"]}MiB"\nstart_timeout = "3s"')
        + model("pinned", 256, 'gpus = [0]\nvram = "2GiB"\nstart_timeout = "120s"')
        + model(
            "greedy",
            s["greedy_hold"],
            'gpus = [0]\nvram = "2GiB"\nstart_timeout = "120s"\nmax_concurrent = 4\nrestart_backoff = "1s"',
        )
    )


def run(cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def gpus_json(llmvisor, cfg=None):
    cmd = [llmvisor, "gpus", "--json"] + (["--config", cfg] if cfg else [])
    out = run(cmd)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def http(base, method, path, body=None, timeout=150):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chat(base, model):
    code, text = http(base, "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "gpu?"}]})
    info = None
    if code == 200:
        info = json.loads(json.loads(text)["choices"][0]["message"]["content"])
    return code, info, text


def health(base):
    return json.loads(http(base, "GET", "/health")[1])


def wait(pred, timeout, step=0.5):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def gpu_pids(llmvisor):
    inv = gpus_json(llmvisor)
    return {p.get("pid") for g in inv.get("gpus", []) for p in g.get("processes") or []}


def dry_run(a):
    import ast

    for f in ("server.py", "check.py"):
        path = os.path.join(HERE, f)
        try:
            with open(path) as fh:
                ast.parse(fh.read(), path)
            check(f"dry run: {f} parses", True)
        except SyntaxError as e:
            check(f"dry run: {f} parses", False, str(e))
    fake = [{"index": 0, "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "dry run",
             "memory_total": 80 * 1024 * MIB, "memory_free": 79 * 1024 * MIB}]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gpu-check.toml")
        with open(path, "w") as f:
            f.write(config(free_port(), a.python, sizes(fake)))
        out = run([a.llmvisor, "check-config", "--config", path])
        check("dry run: llmvisor check-config accepts the generated configuration", out.returncode == 0,
              (out.stdout + out.stderr).strip().splitlines()[-1] if (out.stdout + out.stderr).strip() else "")


def real(a):
    # 1. The inventory, as NVML gives it (and nvidia-smi, where there is one).
    try:
        inv = gpus_json(a.llmvisor)
    except Exception as e:  # noqa: BLE001
        check("llmvisor gpus reads NVML", False, str(e))
        return
    gpus = inv.get("gpus") or []
    if not check("llmvisor gpus reads NVML", inv.get("source") == "nvml" and gpus,
                 f"source {inv.get('source')}, {len(gpus)} GPU(s), driver {inv.get('driver_version')}; {inv.get('message') or ''}"):
        return
    ok = all(g["uuid"].startswith("GPU-") and g["memory_total"] > 0 and g["memory_free"] <= g["memory_total"] for g in gpus)
    detail = "; ".join(f"{g['index']} {g['name']} {g['uuid']} {g['memory_free'] // MIB}/{g['memory_total'] // MIB} MiB free" for g in gpus)
    smi = run(["sh", "-c", "nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits 2>/dev/null || true"])
    if smi.stdout.strip():
        rows = [l.split(", ") for l in smi.stdout.strip().splitlines()]
        same = sorted((int(r[0]), r[1]) for r in rows) == sorted((g["index"], g["uuid"]) for g in gpus)
        ok = ok and same
        detail += f"; nvidia-smi agrees on indices and UUIDs: {same}"
    check("inventory: UUIDs, memory, as nvidia-smi", ok, detail)
    s = sizes(gpus)
    uuid_of = {g["index"]: g["uuid"] for g in gpus}
    name_of = {g["index"]: g["name"] for g in gpus}
    print(f"     sizes: a/b vram {s['a_vram']} MiB (hold {s['a_hold']}), huge vram {s['huge_vram']} MiB, "
          f"greedy hold {s['greedy_hold']} MiB of {s['total']} MiB", flush=True)

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        cfg = os.path.join(d, "gpu-check.toml")
        with open(cfg, "w") as f:
            f.write(config(port, a.python, s))
        log = open(os.path.join(d, "llmvisor.log"), "w+")
        lv = subprocess.Popen([a.llmvisor, "serve", "--config", cfg], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        pids = set()
        try:
            if not wait(lambda: http(base, "GET", "/health", timeout=2)[0] == 200 if lv.poll() is None else None, 30):
                log.seek(0)
                check("llmvisor serves", False, log.read()[-2000:])
                return
            h = health(base)
            check("/health: gpu.source is nvml", h.get("gpu", {}).get("source") == "nvml", json.dumps(h.get("gpu"))[:300])

            # 2. Placement by real free memory: `huge` fits by total, not by what is free.
            if s["huge_vram"] < s["total"] and s["huge_vram"] > s["free"]:
                code, _, text = chat(base, "huge")
                check("placement uses the real free memory (vram between free and total: 503 no_gpu_room)",
                      code == 503 and "no_gpu_room" in text, f"{code} {text[:300]}")
            else:
                report("SKIP", "placement by real free memory", "NVML reports all memory free")

            # 3. `a` lands on the GPU with the most free memory, sees it by UUID.
            code, info, text = chat(base, "a")
            placed = health(base)["models"]["a"]["gpu"]["placed_on"]
            best = s["best"]["index"]
            if check("gpus = \"any\" starts on the GPU with most free memory", code == 200 and placed == [best],
                     f"{code}, placed on {placed}, most free: {best}; {info or text[:300]}"):
                pids.add(info["pid"])
                check("it sees that GPU by UUID and only it",
                      info["cuda_visible_devices"] == uuid_of[best] and info["device_count"] == 1
                      and info["gpu_name"] == name_of[best]
                      and info["gpu_uuid"] in (None, uuid_of[best]),
                      json.dumps(info))
                inv2 = gpus_json(a.llmvisor, cfg)
                procs = [p for g in inv2.get("gpus", []) for p in g.get("processes") or []]
                mine = [p for p in procs if p.get("pid") == info["pid"]]
                check("llmvisor gpus shows its process and memory (NVML)",
                      bool(mine) and (mine[0].get("used_memory") or 0) >= s["a_hold"] * MIB,
                      json.dumps(mine or procs)[:300])

            # 4. `b` does not fit beside `a`: idle `a` is evicted, NVML shows its memory freed.
            used_before = {g["index"]: g["memory_used"] for g in gpus}
            code, info_b, text = chat(base, "b")
            hb = health(base)
            placed_b = hb["models"]["b"]["gpu"]["placed_on"]
            if code == 200 and placed_b != placed:
                report("SKIP", "eviction", f"b found room on GPU {placed_b}")
            elif check("a model that does not fit evicts the idle one", code == 200 and hb["models"]["a"]["state"] in ("stopped", "stopping"),
                       f"{code}, a is {hb['models']['a']['state']}; {text[:200]}"):
                pids.add(info_b["pid"])
                a_pid = info["pid"] if info else None
                gone = wait(lambda: a_pid not in gpu_pids(a.llmvisor), 30)
                inv3 = gpus_json(a.llmvisor)
                g = next(x for x in inv3["gpus"] if x["index"] == best)
                # With only b's memory in use (plus what was used before), a's is free again.
                limit = used_before[best] + (s["a_hold"] + OVERHEAD_MIB + 2048) * MIB
                check("NVML shows the evicted model's memory freed",
                      bool(gone) and g["memory_used"] <= limit,
                      f"a's pid on the GPU: {not gone}; used {g['memory_used'] // MIB} MiB, at most {limit // MIB} MiB expected")
                metrics = http(base, "GET", "/metrics")[1]
                check("llmvisor_model_evictions_total counts it",
                      re.search(r'llmvisor_model_evictions_total\{[^}]*model="a"[^}]*\} [1-9]', metrics) is not None)

            # 5. A pinned model sees exactly its GPU, by UUID.
            code, info_p, text = chat(base, "pinned")
            if check("pinned model starts", code == 200, f"{code} {text[:200]}"):
                pids.add(info_p["pid"])
                check("pinned to GPU 0: CUDA_VISIBLE_DEVICES is its UUID, one device",
                      info_p["cuda_visible_devices"] == uuid_of[0] and info_p["device_count"] == 1
                      and info_p["gpu_uuid"] in (None, uuid_of[0]),
                      json.dumps(info_p))

            # 6. More memory than the GPU has: torch's real CUDA out-of-memory error.
            code, _, text = chat(base, "greedy")
            g = wait(lambda: (health(base)["models"]["greedy"]["gpu"].get("oom") or None), 60)
            hg = health(base)["models"]["greedy"]
            check("a model asking for more than the GPU has fails the start", code in (502, 503), f"{code} {text[:200]}")
            check("torch's CUDA out-of-memory error is recognised (/health gpu.oom)",
                  bool(g) and "out of memory" in (g.get("reason") or "").lower() and g.get("count", 0) >= 1,
                  json.dumps(g)[:400])
            check("max_concurrent stepped down 4 -> 2", hg.get("max_concurrent") == 2, f"max_concurrent {hg.get('max_concurrent')}")
            st = run([a.llmvisor, "status", "--config", cfg])
            check("llmvisor status says so", "after CUDA out of memory" in st.stdout,
                  next((l for l in st.stdout.splitlines() if l.startswith("greedy")), st.stdout[-300:] + st.stderr[-300:]))
            metrics = http(base, "GET", "/metrics")[1]
            check("llmvisor_model_oom_total counts it",
                  re.search(r'llmvisor_model_oom_total\{[^}]*model="greedy"[^}]*\} [1-9]', metrics) is not None)
        finally:
            # 7. SIGTERM: llmvisor stops every model; nothing is left on the GPU.
            if lv.poll() is None:
                lv.send_signal(signal.SIGTERM)
            try:
                lv.wait(timeout=90)
                exited = True
            except subprocess.TimeoutExpired:
                exited = False
                os.killpg(lv.pid, signal.SIGKILL)
                lv.wait()
            check("SIGTERM: llmvisor exits", exited, f"exit status {lv.returncode}")
            left = wait(lambda: not any(pid_alive(p) for p in pids) and not (pids & gpu_pids(a.llmvisor)), 30)
            check("SIGTERM leaves no model process, and none on the GPU (NVML)", bool(left) and bool(pids),
                  f"model pids {sorted(pids)}; alive: {[p for p in pids if pid_alive(p)]}")
            log.seek(0)
            text = log.read()
            if "FAIL" in results:
                print("---- llmvisor log (last 60 lines) ----")
                print("\n".join(text.splitlines()[-60:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llmvisor", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    if a.dry_run:
        dry_run(a)
    else:
        real(a)
    p, f, s = results.count("PASS"), results.count("FAIL"), results.count("SKIP")
    print(f"gpu-check: {p} passed, {f} failed, {s} skipped in {time.time() - t0:.0f} s")
    sys.exit(1 if f or not p else 0)


if __name__ == "__main__":
    main()
