#!/usr/bin/env python3
"""Reads the JSON of tests/nix-eval/eval.nix (one case per file argument, or one
object of every case on stdin), prints each check, writes each case's settings as
TOML and runs `llmvisor check-config` on it, and compares each host's settings with
its golden file tests/nix-eval/hosts/<host>.toml. Exit status 1 on any failure.

    report.py LLMVISOR_BIN OUT_DIR CASE_NAME=FILE.json ...
"""

import json
import pathlib
import subprocess
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent


def toml_key(k):
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return json.dumps(k)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def to_toml(data, path=()):
    """TOML text of a JSON object: tables for objects, arrays of tables for lists
    of objects, inline values otherwise (what nixpkgs' formats.toml writes, though
    not byte for byte)."""
    lines = []
    tables = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif is_table_array(v):
            tables.append((k, v))
        else:
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        sub = path + (k,)
        name = ".".join(toml_key(p) for p in sub)
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + to_toml(v, sub)
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + to_toml(item, sub)
    return out


def main():
    llmvisor, out_dir, *cases = sys.argv[1:]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for arg in cases:
        name, _, file = arg.partition("=")
        text = pathlib.Path(file).read_text()
        try:
            case = json.loads(text)
        except json.JSONDecodeError:
            print(f"FAIL {name}: evaluation failed:\n{text.strip()}")
            failures += 1
            continue
        for msg in case["failedAssertions"]:
            print(f"FAIL {name}: assertion: {msg}")
            failures += 1
        for c in case["checks"]:
            if c["ok"]:
                print(f"ok   {name}: {c['name']}")
            else:
                print(f"FAIL {name}: {c['name']}: got {json.dumps(c['got'])[:600]}")
                failures += 1
        settings = case.get("toml")
        if settings is None:
            continue
        path = out_dir / f"{name}.toml"
        path.write_text(to_toml(settings))
        golden = case.get("golden")
        if golden:
            gpath = HERE / "hosts" / f"{golden}.toml"
            if not gpath.exists():
                print(f"FAIL {name}: no golden file {gpath} (generated: {path})")
                failures += 1
                continue
            want = tomllib.loads(gpath.read_text())
            got = tomllib.loads(path.read_text())
            if want == got:
                print(f"ok   {name}: settings equal {gpath.relative_to(HERE.parent.parent)}")
            else:
                print(f"FAIL {name}: settings differ from {gpath} (generated: {path})")
                failures += 1
        run = subprocess.run(
            [llmvisor, "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        if run.returncode == 0:
            print(f"ok   {name}: llmvisor check-config accepts the generated TOML")
        else:
            print(f"FAIL {name}: llmvisor check-config {path}:\n{run.stdout}{run.stderr}")
            failures += 1
    print(f"nix-eval: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
