#!/usr/bin/env python3
"""Soak and slow-client attacks against a running llmvisor (bench/soak.sh starts it).

Three phases of PHASE seconds each: quiet (normal requests only), attacked (normal
requests while 5,000 idle sockets, 200 slow-body senders and 20 clients that never
read their stream are held open), after (normal requests again, attackers gone).
Normal requests: 4 keep-alive connections sending small chat completions in a loop.
Printed: latency p50/p99 of normal requests per phase and their outcomes, each
attack's outcomes, and llmvisor's RSS, open fds, open connections and requests in
flight before, during and after. Loopback only, bounded in count and time.

    soak.py --url http://127.0.0.1:18500 --pid PID --model fast
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
import http.client
import urllib.request


def proc_stats(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def metrics(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out = {"connections": 0.0, "in_flight": 0.0}
    for line in text.splitlines():
        if line.startswith("llmvisor_connections_open "):
            out["connections"] = float(line.split()[1])
        elif line.startswith("llmvisor_requests_in_flight{"):
            out["in_flight"] += float(line.split()[-1])
    return out


def snapshot(label, args):
    rss, fds = proc_stats(args.pid)
    try:
        m = metrics(args.url)
    except OSError as e:  # refused or timed out: say so in the table
        m = {"connections": float("nan"), "in_flight": float("nan")}
        label += f" (/metrics: {e})"
    print(
        f"| {label} | {rss} MB | {fds} | {m['connections']:.0f} | {m['in_flight']:.0f} |",
        flush=True,
    )


class Normal(threading.Thread):
    """One keep-alive connection sending small chat requests until stopped."""

    def __init__(self, host, port, model, results):
        super().__init__(daemon=True)
        self.host, self.port, self.model = host, port, model
        self.results = results
        self.stop = False
        self.phase = "quiet"

    def run(self):
        body = json.dumps(
            {"model": self.model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        )
        conn = None
        while not self.stop:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                outcome = str(r.status)
            except Exception as e:  # noqa: BLE001 - every failure is an outcome
                outcome = type(e).__name__
                conn = None
            self.results.append((self.phase, outcome, time.monotonic() - t0))


async def idle_sockets(host, port, n, hold, counts):
    """n connections from 127.0.0.2.. that send nothing; counts how they end."""
    loop = asyncio.get_running_loop()

    async def one(i):
        src = f"127.0.0.{2 + i // 250}"
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((src, 0))
            await loop.sock_connect(s, (host, port))
        except OSError as e:
            counts[f"connect failed: {e.strerror}"] = counts.get(f"connect failed: {e.strerror}", 0) + 1
            s.close()
            return
        try:
            data = await asyncio.wait_for(loop.sock_recv(s, 4096), hold)
            key = "refused (503)" if data.startswith(b"HTTP/1.1 503") else "closed by llmvisor"
        except asyncio.TimeoutError:
            key = "still open at the end"
        except OSError:
            key = "closed by llmvisor"
        counts[key] = counts.get(key, 0) + 1
        s.close()

    await asyncio.gather(*(one(i) for i in range(n)))


async def slow_bodies(host, port, n, hold, model, counts):
    """n requests announcing 1 MB and sending one byte every 10 s."""
    async def one(i):
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(f"127.0.1.{1 + i // 100}", 0))
        except OSError as e:
            counts[f"connect failed: {e.strerror}"] = counts.get(f"connect failed: {e.strerror}", 0) + 1
            return
        w.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n".encode()
        )
        end = time.monotonic() + hold
        key = "still sending at the end"
        try:
            while time.monotonic() < end:
                w.write(b" ")
                await w.drain()
                try:
                    data = await asyncio.wait_for(r.read(4096), 10)
                    if data:
                        key = "answered " + data.split(b" ")[1].decode()
                    else:
                        key = "closed by llmvisor"
                    break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            key = "closed by llmvisor"
        counts[key] = counts.get(key, 0) + 1
        w.close()

    await asyncio.gather(*(one(i) for i in range(n)))


async def non_readers(host, port, n, hold, model, counts):
    """n long streams whose clients never read a byte."""
    body = json.dumps(
        {"model": model, "stream": True, "max_tokens": 1000000, "messages": [{"role": "user", "content": "go"}]}
    ).encode()

    async def one(i):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            s.bind((f"127.0.2.{1 + i}", 0))
            await loop.sock_connect(s, (host, port))
            await loop.sock_sendall(
                s,
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body,
            )
        except OSError as e:
            counts[f"connect failed: {e.strerror}"] = counts.get(f"connect failed: {e.strerror}", 0) + 1
            s.close()
            return
        await asyncio.sleep(hold)
        # Now read: a cut connection ends in EOF or a reset after what was buffered.
        key = "still streaming at the end"
        try:
            while True:
                data = await asyncio.wait_for(loop.sock_recv(s, 1 << 20), 2)
                if not data:
                    key = "cut by llmvisor"
                    break
        except asyncio.TimeoutError:
            pass
        except OSError:
            key = "cut by llmvisor"
        counts[key] = counts.get(key, 0) + 1
        s.close()

    await asyncio.gather(*(one(i) for i in range(n)))


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--model", default="fast")
    ap.add_argument("--stream-model", default="long")
    ap.add_argument("--phase", type=float, default=20.0)
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--readers", type=int, default=20)
    args = ap.parse_args()
    host, port = args.url.removeprefix("http://").split(":")
    port = int(port)

    print("| when | RSS | fds | connections | in flight |")
    print("| --- | --- | --- | --- | --- |")
    snapshot("before", args)
    results = []
    normals = [Normal(host, port, args.model, results) for _ in range(4)]
    for n in normals:
        n.start()
    time.sleep(args.phase)
    snapshot("quiet load", args)

    counts = {"idle": {}, "slow": {}, "readers": {}}
    hold = args.phase + 5

    def attack():
        async def all_attacks():
            await asyncio.gather(
                idle_sockets(host, port, args.idle, hold, counts["idle"]),
                slow_bodies(host, port, args.slow, hold, args.model, counts["slow"]),
                non_readers(host, port, args.readers, hold, args.stream_model, counts["readers"]),
            )

        asyncio.run(all_attacks())

    for n in normals:
        n.phase = "attacked"
    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    for i in range(3):
        time.sleep(args.phase / 3)
        snapshot(f"attacked, {int((i + 1) * args.phase / 3)} s", args)
    attacker.join(timeout=hold + 30)
    for n in normals:
        n.phase = "after"
    time.sleep(args.phase)
    for n in normals:
        n.stop = True
    for n in normals:
        n.join(timeout=15)
    snapshot("after", args)

    print()
    print("| normal requests | count | outcomes | p50 | p99 |")
    print("| --- | --- | --- | --- | --- |")
    p99 = {}
    for phase in ("quiet", "attacked", "after"):
        rows = [r for r in results if r[0] == phase]
        lat = [r[2] * 1000 for r in rows if r[1] == "200"]
        outcomes = {}
        for r in rows:
            outcomes[r[1]] = outcomes.get(r[1], 0) + 1
        p99[phase] = percentile(lat, 0.99)
        print(
            f"| {phase} | {len(rows)} | {', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))} "
            f"| {percentile(lat, 0.5):.2f} ms | {p99[phase]:.2f} ms |"
        )
    print()
    print("| attack | outcomes |")
    print("| --- | --- |")
    for name, label in (
        ("idle", f"{args.idle} idle sockets"),
        ("slow", f"{args.slow} slow-body senders"),
        ("readers", f"{args.readers} streams never read"),
    ):
        print(f"| {label} | {', '.join(f'{k}: {v}' for k, v in sorted(counts[name].items()))} |")
    print()
    ratio = p99["attacked"] / p99["quiet"] if p99["quiet"] else float("nan")
    print(f"p99 attacked / quiet: {ratio:.2f}x")


if __name__ == "__main__":
    main()
