#!/usr/bin/env python3
"""Reads the JSON of tests/nix-eval/eval.nix (one case per file argument, or one
object of every case on stdin), prints each check, writes each case's settings as
TOML and runs `llmvisor check-config` on it, and compares each host's settings with
its golden file tests/nix-eval/hosts/<host>.toml. Exit status 1 on any failure.

    report.py LLMVISOR_BIN OUT_DIR CASE_NAME=FILE.json ...

Each FILE.json holds only what Nix printed on stdout; its stderr is in FILE.err
beside it (shown when the case does not evaluate).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
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


REPO = HERE.parent.parent


def check_src_files(name, src_files):
    """The package's source file set holds tracked files only (a flake sees no
    others) and every file cargo builds or the tests open from the source tree."""
    failures = 0
    src = set(src_files)
    tracked = set(
        subprocess.run(
            ["git", "ls-files", "--cached"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    )
    untracked = sorted(src - tracked)
    if untracked:
        print(f"FAIL {name}: src holds files git does not track (a flake build lacks them): {untracked[:10]}")
        failures += 1
    else:
        print(f"ok   {name}: src holds {len(src)} tracked files")
    # What the tests and binaries read below CARGO_MANIFEST_DIR.
    wanted = set()
    for rs in sorted(REPO.glob("tests/*.rs")) + sorted(REPO.glob("tests/**/*.rs")) + sorted(REPO.glob("src/**/*.rs")):
        text = rs.read_text()
        for m in re.finditer(r'env!\("CARGO_MANIFEST_DIR"\)\s*,?\s*"/([^"{]*)', text):
            wanted.add(m[1])
        for m in re.finditer(r'"\{\}/([^"{]*)[^"]*",\s*env!\("CARGO_MANIFEST_DIR"\)', text):
            wanted.add(m[1])
        # Files compiled in, relative to the source file.
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', text):
            wanted.add(str((rs.parent / m[1]).resolve().relative_to(REPO.resolve())))
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    for section in ("bin", "example", "test", "bench"):
        for target in cargo.get(section, []):
            if "path" in target:
                wanted.add(target["path"])
    def under(files, w):
        return any(f == w or f.startswith(w.rstrip("/") + "/") for f in files)

    # Paths that are not in the repository at all (the `.venv/` a test uses when
    # it exists) cannot be in any source; the rest must be in this one.
    wanted = {w for w in wanted if w and under(tracked, w)}
    missing = sorted(w for w in wanted if not under(src, w))
    if missing:
        print(f"FAIL {name}: files the build or the tests read are not in src: {missing}")
        failures += 1
    else:
        print(f"ok   {name}: src has all {len(wanted)} paths the build and the tests read")
    return failures


def main():
    llmvisor, out_dir, *cases = sys.argv[1:]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    # Each expected failure's messages, by case, to compare a `real:` case (the
    # real NixOS modules in place of stubs) with its stub twin.
    expected_messages = {}
    for arg in cases:
        name, _, file = arg.partition("=")
        text = pathlib.Path(file).read_text()
        # What Nix printed on stderr, kept apart from the JSON (check-nix.sh).
        err_file = pathlib.Path(file).with_suffix(".err")
        err = err_file.read_text().strip() if err_file.exists() else ""
        try:
            case = json.loads(text)
        except json.JSONDecodeError:
            print(f"FAIL {name}: evaluation failed:\n{err or text.strip()}")
            failures += 1
            continue
        for msg in case["failedAssertions"]:
            print(f"FAIL {name}: assertion: {msg}")
            failures += 1
        # lib.getExe on a package without meta.mainProgram only warns, and runs
        # a guessed bin/<name> (the stubs give packages nixpkgs' own mainProgram,
        # or none where nixpkgs has none).
        for line in err.splitlines():
            if "getExe" in line and "mainProgram" in line:
                print(f"FAIL {name}: {line.strip()}")
                failures += 1
        if case.get("expectedFailureMessages") is not None:
            expected_messages[name] = case["expectedFailureMessages"]
            twin = name.removeprefix("real:")
            if twin != name and twin in expected_messages:
                want = sorted(expected_messages[twin])
                got = sorted(case["expectedFailureMessages"])
                if want == got:
                    print(f"ok   {name}: fails with the same {len(got)} message(s) as with the stubs")
                else:
                    print(f"FAIL {name}: failed assertions differ from the stubs' ({twin}):")
                    for m in got:
                        if m not in want:
                            print(f"       only here: {m}")
                    for m in want:
                        if m not in got:
                            print(f"       only with the stubs: {m}")
                    failures += 1
        for c in case["checks"]:
            if c["ok"]:
                print(f"ok   {name}: {c['name']}")
            else:
                print(f"FAIL {name}: {c['name']}: got {json.dumps(c['got'])[:600]}")
                failures += 1
        if "srcFiles" in case:
            failures += check_src_files(name, case["srcFiles"])
        # Scripts a module writes, kept as golden files in tests/system/ that the
        # system tests run for real (tests/system_backup.rs runs vm-backup's).
        for script, text in sorted((case.get("scripts") or {}).items()):
            # `real:<case>` (the real NixOS modules in place of stubs) has the same.
            spath = HERE.parent / "system" / f"{name.removeprefix('real:')}.{script}.sh"
            if not spath.exists():
                print(f"FAIL {name}: no golden script {spath}")
                failures += 1
            elif spath.read_text() == text:
                print(f"ok   {name}: {script} script equals {spath.relative_to(HERE.parent.parent)}")
            elif os.environ.get("UPDATE_GOLDEN") == "1":
                # After a deliberate change of the module: the golden file is
                # written anew (and reviewed in the diff).
                spath.write_text(text)
                print(f"ok   {name}: {script} script written to {spath.relative_to(HERE.parent.parent)} (UPDATE_GOLDEN=1)")
            else:
                print(f"FAIL {name}: the {script} script differs from {spath} (UPDATE_GOLDEN=1 writes it)")
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
        env = {"PATH": "/usr/bin:/bin"}
        # A VM node's credentials (its key files' text, by credential name): read
        # from $CREDENTIALS_DIRECTORY as the service reads them, so what only the
        # keys show (two clients with one key) fails here, not in the VM.
        creds = case.get("credentials")
        cred_dir = None
        if creds:
            cred_dir = tempfile.mkdtemp(prefix=f"creds-{name.replace(':', '-')}-")
            for cname, text in creds.items():
                f = pathlib.Path(cred_dir) / cname
                f.write_text(text)
                f.chmod(0o400)
            env["CREDENTIALS_DIRECTORY"] = cred_dir
        run = subprocess.run(
            [llmvisor, "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
        )
        if cred_dir:
            shutil.rmtree(cred_dir)
        with_creds = f" with its {len(creds)} credential(s)" if creds else ""
        if run.returncode == 0:
            print(f"ok   {name}: llmvisor check-config accepts the generated TOML{with_creds}")
        else:
            print(f"FAIL {name}: llmvisor check-config {path}{with_creds}:\n{run.stdout}{run.stderr}")
            failures += 1
    print(f"nix-eval: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
