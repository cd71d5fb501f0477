#!/usr/bin/env python3
"""vLLM's own command-line parser as the judge of the argv llmvisor renders.

Run with the python of the venv scripts/vllm-fixture.sh installs (no GPU needed).
Reads JSON lines on stdin, one per rendered model:

    {"label": "...", "argv": ["vllm", "serve", ...], "env": {"VLLM_...": "1"}}

builds the parser `vllm serve` builds (vllm.entrypoints.cli.main: a
FlexibleArgumentParser with the serve subcommand's make_arg_parser), parses every
argv in this one process (importing vLLM takes ~13 s), runs the serve subcommand's
own validate(), and writes JSON lines on stdout: first
{"vllm": VERSION, "routes": {...}}, then per input
{"label", "ok", "error", "deprecated", "unknown_env", "parsed"}.
"""

import contextlib
import io
import json
import os
import sys
import warnings

# Parse only: no device is probed, nothing is loaded.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def main() -> int:
    import importlib.metadata

    import vllm.entrypoints.cli.serve as serve
    import vllm.envs as envs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    version = importlib.metadata.version("vllm")
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    cmds = {}
    sub = {}
    for cmd in serve.cmd_init():
        sub[cmd.name] = cmd.subparser_init(subparsers)
        sub[cmd.name].set_defaults(dispatch_function=cmd.cmd)
        cmds[cmd.name] = cmd
    known_env = set(getattr(envs, "environment_variables", {}))

    print(json.dumps({"vllm": version, "routes": routes()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        argv = case["argv"]
        out = {"label": case["label"], "ok": False, "error": None}
        err = io.StringIO()
        try:
            with (
                contextlib.redirect_stderr(err),
                contextlib.redirect_stdout(err),
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always")
                args = parser.parse_args(argv[1:])
                if args.subparser in cmds:
                    cmds[args.subparser].validate(args)
            out["ok"] = args.subparser == "serve"
            if not out["ok"]:
                out["error"] = f"not a `vllm serve` command line: {argv[1:2]}"
        except SystemExit as e:
            lines = [l for l in err.getvalue().splitlines() if l.strip()]
            out["error"] = lines[-1] if lines else f"exit {e.code}"
            print(json.dumps(out), flush=True)
            continue
        except Exception as e:  # validate() raises TypeError/ValueError
            out["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(out), flush=True)
            continue
        # Flags vLLM still takes but has deprecated (Python < 3.13 keeps the set).
        dep = getattr(sub.get("serve"), "_deprecated", set())
        out["deprecated"] = sorted(
            "/".join(a.option_strings) or a.dest
            for a in dep
            if getattr(args, a.dest, a.default) != a.default
        ) + sorted(
            # Options whose own action warns (e.g. `--disable-cascade-attn is
            # deprecated and has no effect …`).
            str(w.message)
            for w in caught
            if "deprecat" in str(w.message).lower()
        )
        out["unknown_env"] = sorted(
            k for k in case.get("env", {}) if k.startswith("VLLM_") and k not in known_env
        )
        out["parsed"] = {
            k: getattr(args, k, None)
            for k in (
                "model_tag",
                "host",
                "port",
                "served_model_name",
                "tensor_parallel_size",
                "max_model_len",
                "gpu_memory_utilization",
                "enable_sleep_mode",
            )
        }
        print(json.dumps(out, default=str), flush=True)
    return 0


def routes() -> dict:
    """Where the paths llmvisor calls are defined in vLLM's source, and whether they
    are dev-mode routes: in a `dev` package whose routers vLLM registers only under
    VLLM_SERVER_DEV_MODE (every call of register_vllm_dev_api_routers is guarded by
    it), or in a file that tests the variable itself."""
    import vllm

    root = os.path.dirname(vllm.__file__)
    want = ["/health", "/sleep", "/wake_up", "/is_sleeping", "/v1/models"]
    found = {p: [] for p in want}
    guarded = []
    for d, _, files in os.walk(os.path.join(root, "entrypoints")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, root)
            try:
                text = open(path, encoding="utf-8").read()
            except OSError:
                continue
            lines = text.splitlines()
            for i, line in enumerate(lines):
                if "register_vllm_dev_api_routers(" in line and "def " not in line:
                    before = "\n".join(lines[max(0, i - 4) : i])
                    guarded.append("VLLM_SERVER_DEV_MODE" in before)
            for p in want:
                if f'"{p}"' in text:
                    dev = f"{os.sep}dev{os.sep}" in rel or "VLLM_SERVER_DEV_MODE" in text
                    found[p].append({"file": rel, "dev_mode": dev})
    ok = bool(guarded) and all(guarded)
    for p in found:
        for r in found[p]:
            r["dev_mode"] = r["dev_mode"] and ok
    return found


if __name__ == "__main__":
    sys.exit(main())
