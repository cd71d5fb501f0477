#!/usr/bin/env python3
"""A small OpenAI-compatible server for scripts/gpu-check.sh (Python + PyTorch).

At start it takes --hold-mib MiB of GPU memory with torch (one tensor on cuda:0, kept
until exit), then serves on 127.0.0.1:--port:

  GET  /health, /v1/models
  POST /v1/chat/completions   the answer's content is JSON: the GPU's name and UUID,
                              CUDA_VISIBLE_DEVICES and the device count it sees, and
                              the memory it holds.

Asking for more memory than the GPU has fails the start with torch's own CUDA
out-of-memory error (a traceback ending in `torch.OutOfMemoryError: CUDA out of
memory. …`), which llmvisor recognises.
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served-name", required=True)
    ap.add_argument("--hold-mib", type=int, default=0)
    a = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu-check server: torch sees no CUDA device", file=sys.stderr)
        sys.exit(1)
    n = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    # Raises torch.OutOfMemoryError when the GPU has less (not caught: its traceback
    # is what llmvisor reads).
    held = torch.empty(a.hold_mib * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    uuid = getattr(props, "uuid", None)
    info = {
        "gpu_name": props.name,
        "gpu_uuid": f"GPU-{uuid}" if uuid is not None else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": n,
        "held_mib": held.numel() // (1024 * 1024),
        "pid": os.getpid(),
    }
    print(f"gpu-check server: {json.dumps(info)}", file=sys.stderr, flush=True)

    class H(BaseHTTPRequestHandler):
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": a.served_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            self._send(
                200,
                {
                    "id": "chatcmpl-gpu-check",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": a.served_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": json.dumps(info)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", a.port), H).serve_forever()


if __name__ == "__main__":
    main()
