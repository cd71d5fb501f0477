"""Drive headless Chromium through the operator page (/ui) over the DevTools
protocol, with nothing but the standard library: Chromium's
--remote-debugging-pipe speaks CDP as NUL-terminated JSON on file descriptors 3
(its input) and 4 (its output), so no WebSocket client is needed.

Usage: drive.py BASE SCENARIO SHOTS_DIR
  quickstart: the quick start's three models; start `big` by its button and see
              loading -> ready, each state on the page within 1 s of llmvisor's
              own feed publishing it (start-up itself is reported, not timed:
              spawning the mock under a loaded CI machine varies); a chat appears in
              Requests with its tokens; stop it by its button; a screenshot of
              each view; no console errors.
  day-night:  simulated GPUs and profiles: the GPUs view says "simulated", the
              Profiles view shows the active profile; screenshots.
  cors:       (tests/browsers.rs) a page served on CORS_OK_PORT (an origin in
              [server] cors_origins) and one on CORS_REFUSED_PORT (not listed):
              from the first, a fetch that needs a preflight (POST, JSON,
              Authorization) succeeds and reads exposed headers; from the
              second, the browser refuses it (TypeError, "blocked by CORS
              policy") and never sends the POST.
  soak:       (bench/ui-soak.sh) a page left open while SOAK_N requests go
              through; llmvisor's RSS and the page's JS heap sampled.
Prints "ok" last on success; fails with a message otherwise.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

STARTUP_DELAY_S = 8.0  # examples/quickstart.toml: big's --startup-delay


class Chrome:
    def __init__(self):
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if not binary:
            raise SystemExit("no chromium on PATH")
        self.profile = tempfile.mkdtemp(prefix="llmvisor-ui-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # High numbers, so moving them to 3 and 4 in the child cannot clobber one.
        hi_r = os.dup2(to_chrome_r, 60)
        hi_w = os.dup2(from_chrome_w, 61)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        args = [
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--mute-audio",
            f"--user-data-dir={self.profile}",
        ]
        # Chromium's sandbox needs user namespaces and refuses to run as root:
        # tests only, never for real browsing.
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-', "chromium", binary, *args],
            pass_fds=(hi_r, hi_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.profile, "stderr.log"), "wb"),
        )
        os.close(hi_r)
        os.close(hi_w)
        self.w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read_message(self):
        while b"\0" not in self.buf:
            chunk = self.r.read(65536)
            if not chunk:
                err = open(os.path.join(self.profile, "stderr.log"), "rb").read().decode(errors="replace")
                raise SystemExit(f"chromium closed its pipe; its stderr:\n{err[-3000:]}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise SystemExit(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def open(self, width, height):
        t = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        a = self.call("Target.attachToTarget", {"targetId": t["targetId"], "flatten": True}, session=False)
        self.session = a["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def js(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise SystemExit(f"page script failed: {expr}\n{r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, within, what):
        deadline = time.monotonic() + within
        while True:
            # Before the page has loaded, its elements are not there yet.
            v = self.js(f"(() => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }})()")
            if v:
                return v
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {within} s waiting for {what} ({expr})\n{self.js('document.body.innerText')}")
            time.sleep(0.05)

    def shot(self, path):
        r = self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def errors(self):
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self):
        try:
            self.call("Browser.close", session=False)
        except BaseException:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers.get("x-request-id"), json.loads(r.read())


def view(c, name, shots, ready_expr, what):
    c.js(f"location.hash = '#{name}'")
    c.wait(f"!document.getElementById('view-{name}').hidden && !!({ready_expr})", 10, what)
    time.sleep(0.2)  # let layout settle before the picture
    c.shot(os.path.join(shots, f"{name}.png"))


def follow_states(base, model):
    """Listen to /admin/events as the page does, from this process: returns a dict
    filling with {state: time.monotonic() when llmvisor published it for `model`}.
    The page's own lag is measured against it, not against the wall clock of a
    start-up that depends on how fast the machine spawns processes."""
    seen = {}
    ready = threading.Event()

    def run():
        try:
            with urllib.request.urlopen(base + "/admin/events", timeout=60) as r:
                event = None
                for raw in r:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                        if event == "hello":
                            ready.set()
                    elif line.startswith("data:") and event in ("model", "models"):
                        data = json.loads(line[5:])
                        for v in data if isinstance(data, list) else [data]:
                            if v.get("name") == model:
                                seen.setdefault(v.get("state"), time.monotonic())
        except Exception as e:  # the run ends when the process does
            seen.setdefault("error", repr(e))
            ready.set()

    threading.Thread(target=run, daemon=True).start()
    if not ready.wait(10):
        raise SystemExit("the events feed did not say hello within 10 s")
    return seen


def row_state(model):
    return f"(document.querySelector('#models tr[data-model=\"{model}\"]') || {{dataset: {{}}}}).dataset.state"


def quickstart(c, base, shots):
    c.call("Page.navigate", {"url": base + "/ui"})
    c.wait("document.querySelectorAll('#models tbody tr').length === 3", 15, "three model rows")
    names = c.js("[...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model)")
    assert sorted(names) == ["big", "chat", "embed"], names
    c.wait("document.getElementById('conn').dataset.state === 'up'", 5, "the live feed")

    # Start `big` by its button; follow its row's state as the page shows it, and
    # the same model in llmvisor's feed, so the page's lag is what is checked.
    published = follow_states(base, "big")
    c.js("document.querySelector('button[data-action=start][data-model=big]').click()")
    t0 = time.monotonic()
    seen = []
    shown = {}
    while True:
        s = c.js(row_state("big"))
        if not seen or seen[-1] != s:
            seen.append(s)
            shown.setdefault(s, time.monotonic())
        if s == "ready":
            break
        if s == "failed" or time.monotonic() - t0 > STARTUP_DELAY_S + 30:
            raise SystemExit(f"big did not become ready: states seen {seen}")
        time.sleep(0.02)
    took = time.monotonic() - t0
    assert "loading" in seen, f"never saw loading: {seen}"
    assert took >= STARTUP_DELAY_S, f"ready after {took:.2f} s, before the start-up delay of {STARTUP_DELAY_S} s"
    assert "ready" in published, f"llmvisor's feed never published big as ready: {published}"
    lag = shown["ready"] - published["ready"]
    assert lag <= 1.0, f"the page showed ready {lag:.2f} s after llmvisor published it (1 s allowed); states {seen}"
    print(f"big: {' -> '.join(seen)} in {took:.2f} s (start-up delay {STARTUP_DELAY_S} s); the page showed ready {lag * 1000:.0f} ms after the feed")
    c.wait(f"document.querySelector('#models tr[data-model=big] .load').textContent.endsWith('/ 4')", 5, "big's max_concurrent")
    c.shot(os.path.join(shots, "models.png"))

    # A chat; it must appear in Requests with its tokens.
    rid, resp = post(base, "/v1/chat/completions", {"model": "big", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello from the page test"}]})
    u = resp["usage"]
    want = f"{u['prompt_tokens']} / {u['completion_tokens']}"
    c.js("location.hash = '#requests'")
    sel = f"#requests tr[data-request-id=\"{rid}\"]"
    got = c.wait(f"(document.querySelector('{sel}') || {{}}).querySelector && document.querySelector('{sel} .tokens').textContent", 10, f"request {rid} in Requests")
    assert got == want, f"tokens shown {got!r}, response said {want!r}"
    row = c.js(f"document.querySelector('{sel}').innerText")
    assert "big" in row and "200" in row, row
    view(c, "requests", shots, f"document.querySelector('{sel}')", "the request row")

    view(c, "usage", shots, "document.querySelectorAll('#usage figure rect').length > 0", "usage charts with bars")
    # Logs of big: its captured output (the process manager's).
    c.js("location.hash = '#logs'")
    c.js("const s = document.getElementById('log-model'); s.value = 'big'; s.dispatchEvent(new Event('change'))")
    view(c, "logs", shots, "document.getElementById('log').textContent.includes('llmvisor-mock')", "big's log lines")
    view(c, "gpus", shots, "document.getElementById('gpu-source').textContent.length > 0", "the GPU source")
    view(c, "profiles", shots, "document.getElementById('profile-summary').textContent.length > 0", "the profile summary")

    # Stop it by its button.
    c.js("location.hash = '#models'")
    c.wait("!document.getElementById('view-models').hidden", 5, "the models view")
    c.js("document.querySelector('button[data-action=stop][data-model=big]').click()")
    c.wait(f"{row_state('big')} === 'stopped'", 30, "big stopped")


def day_night(c, base, shots):
    c.call("Page.navigate", {"url": base + "/ui#gpus"})
    c.wait("document.querySelectorAll('#gpus .gpu').length >= 1", 15, "GPU cards")
    assert "Simulated" in c.js("document.getElementById('gpu-source').textContent")
    c.wait("document.querySelectorAll('#gpus .tag').length >= 1", 5, "the simulated tag")
    view(c, "gpus", shots, "document.querySelectorAll('#gpus .seg').length >= 1", "a model on a GPU bar")
    view(c, "profiles", shots, "document.querySelectorAll('#profiles tbody tr.on').length >= 1", "an active profile")


def serve_page(port):
    """A page on 127.0.0.1:port, in a thread: the origin a browser app has."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>a browser app</title><p>cross-origin page</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


CORS_FETCH = """(async () => {
  try {
    const r = await fetch(%s + '/v1/chat/completions', {
      method: 'POST',
      headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer none'},
      body: JSON.stringify({model: 'chat', max_tokens: 4, messages: [{role: 'user', content: 'from %s'}]}),
    });
    const j = await r.json();
    return {ok: true, status: r.status, target: r.headers.get('x-llmvisor-target'),
            request_id: r.headers.get('x-request-id'), object: j.object};
  } catch (e) {
    return {ok: false, error: String(e)};
  }
})()"""


def cors(c, base, shots):
    servers = []
    try:
        ok_port, refused_port = int(os.environ["CORS_OK_PORT"]), int(os.environ["CORS_REFUSED_PORT"])
        servers = [serve_page(ok_port), serve_page(refused_port)]
        c.call("Network.enable")
        results = {}
        for port in (ok_port, refused_port):
            origin = f"http://127.0.0.1:{port}"
            c.call("Page.navigate", {"url": origin + "/"})
            c.wait("document.body && document.body.innerText.includes('cross-origin page')", 10, f"the page on {origin}")
            assert c.js("location.origin") == origin
            results[origin] = c.js(CORS_FETCH % (json.dumps(base), origin))
            print(f"fetch from {origin}: {results[origin]}")
        ok, refused = results[f"http://127.0.0.1:{ok_port}"], results[f"http://127.0.0.1:{refused_port}"]
        assert ok.get("ok") and ok["status"] == 200 and ok["object"] == "chat.completion", ok
        # Only readable because llmvisor exposes them (Access-Control-Expose-Headers).
        assert ok["target"] == "chat" and ok["request_id"], ok
        assert not refused.get("ok") and "TypeError" in refused["error"], refused

        # What the browser did: a preflight (OPTIONS) from each origin; the POST
        # from the allowed one answered, the other's failed on CORS before it was sent
        # (llmvisor's own record of one request is checked by tests/browsers.rs).
        sent, posts = [], []
        for e in c.events:
            if e.get("method") == "Network.requestWillBeSent" and e["params"]["request"]["url"].startswith(base):
                req = e["params"]["request"]
                sent.append((req["method"], req.get("headers", {}).get("Origin")))
                if req["method"] == "POST":
                    posts.append(e["params"]["requestId"])
        print(f"requests to llmvisor in the browser: {sent}")
        assert ("OPTIONS", f"http://127.0.0.1:{ok_port}") in sent and ("OPTIONS", f"http://127.0.0.1:{refused_port}") in sent, sent
        assert len(posts) == 2, sent
        answered = {e["params"]["requestId"]: e["params"]["response"]["status"] for e in c.events if e.get("method") == "Network.responseReceived"}
        failed = {e["params"]["requestId"]: e["params"] for e in c.events if e.get("method") == "Network.loadingFailed"}
        assert answered.get(posts[0]) == 200, (answered, failed)
        assert posts[1] not in answered and failed.get(posts[1], {}).get("corsErrorStatus"), (answered, failed)
        print(f"the refused POST: {failed[posts[1]]['corsErrorStatus']}")
        blocked = [e for e in c.events if e.get("method") == "Log.entryAdded" and "CORS policy" in e["params"]["entry"].get("text", "")]
        assert blocked, "no 'blocked by CORS policy' message from the browser"
        texts = [b["params"]["entry"]["text"] for b in blocked]
        print(f"the browser said: {texts}")
        assert all(f"http://127.0.0.1:{refused_port}" in t for t in texts), texts
        # That refusal is the expected error; any other is not.
        c.events = [e for e in c.events if e not in blocked and not (
            e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("url", "").startswith(base)
            and e["params"]["entry"].get("text", "").startswith("Failed to load resource"))]
    finally:
        for s in servers:
            s.shutdown()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak(c, base, shots):
    """A page left open: N requests (each a `request` event, two `model` events and
    a log line on the followed model), one more feed that is never read; llmvisor's
    RSS and the page's JS heap (after a forced GC) sampled along the way."""
    import socket

    pid, n, model = int(os.environ["SOAK_PID"]), int(os.environ.get("SOAK_N", "5000")), os.environ.get("SOAK_MODEL", "fast")
    host, port = base.split("//")[1].split(":")
    stuck = socket.create_connection((host, int(port)))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /admin/events?logs={model} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    c.call("Page.navigate", {"url": base + "/ui#requests"})
    c.wait("document.getElementById('conn').dataset.state === 'up'", 10, "the live feed")
    c.js(f"const s = document.getElementById('log-model'); s.value = '{model}'; s.dispatchEvent(new Event('change'))")
    c.call("HeapProfiler.enable")
    import http.client

    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    rows = []
    t0 = time.monotonic()

    def sample(done):
        c.wait("document.getElementById('conn').dataset.state === 'up'", 10, "the live feed")
        c.call("HeapProfiler.collectGarbage")
        heap = c.call("Runtime.getHeapUsage")["usedSize"]
        shown = c.js("S.requests.length")
        rows.append((done, rss_kib(pid), heap // 1024, shown, round(time.monotonic() - t0, 1)))
        print(f"after {done:6d} requests: llmvisor RSS {rows[-1][1]:7d} KiB, page JS heap {rows[-1][2]:6d} KiB, requests kept by the page {shown}, {rows[-1][4]} s", flush=True)

    marks = sorted({n // 10, n // 4, n // 2, 3 * n // 4, n})
    for i in range(1, n + 1):
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed the keep-alive connection (idle while sampling).
            conn.close()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        if i == 1:
            sample(0)
        if i in marks:
            sample(i)
    stuck.close()
    lagged = c.js("document.getElementById('message').textContent")
    print(f"page message: {lagged!r}")


def main():
    base, scenario, shots = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(shots, exist_ok=True)
    c = Chrome()
    try:
        c.open(1200, 640)
        {"quickstart": quickstart, "day-night": day_night, "cors": cors, "soak": soak}[scenario](c, base, shots)
        errors = c.errors()
        assert not errors, "console errors:\n" + "\n".join(errors)
    finally:
        c.close()
    print("ok")


if __name__ == "__main__":
    main()
