"""The top-level Bazel BUILD stays honest without running Bazel.

BUILD is Starlark (here a Python subset): we exec it with stub rules and a glob() that expands
against the tree, then check:
  (a) every .py under efficientnet_tf/, every tests/*.py and bench/*.py is in some target's srcs;
      the CLIs, bench scripts and test files have the py_binary / py_test targets docs/testing.md names;
  (b) every srcs / data file exists, every ":x" label names a target, a `main` is in its srcs;
  (c) requirement() names are pinned in requirements_lock.txt, the package target has setup.py's
      install_requires and every py_test also the test extras; setup.py package_data is some
      target's data; requirements.txt says what setup.py says; MODULE.bazel reads the lock file.
Deps are not checked against imports: one glob()bed library holds the whole package.
Fast: no TensorFlow import. The checker is fed broken BUILD texts below to show it can fail.
"""
from __future__ import annotations

import ast
import glob as pyglob
import os
import re
import sys
from dataclasses import dataclass, field

import pytest

# realpath: under `bazel test` this file is a runfiles symlink; the source tree is what we check.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
PKG = "efficientnet_tf"
REQ_PREFIX = "@pip//"


def norm(name: str) -> str:
    """PEP 503 name normalization (pip_parse treats `PyYAML`, `pyyaml` and `py_yaml` alike)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Target:
    kind: str
    name: str
    srcs: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    main: str | None = None
    args: list[str] = field(default_factory=list)


def make_glob(root: str):
    """Bazel's glob(): files only, `**` spans directories, exclude is a set difference."""
    def expand(patterns):
        return {p for pat in patterns for p in pyglob.glob(pat, root_dir=root, recursive=True)
                if os.path.isfile(os.path.join(root, p))}

    def glob(include, exclude=(), allow_empty=False):
        out = sorted(expand(include) - expand(exclude))
        if not out and not allow_empty:  # Bazel 8 default (--incompatible_disallow_empty_glob)
            raise ValueError(f"glob({include!r}) matches no file")
        return out
    return glob


def load_build(text: str, root: str = ROOT) -> dict[str, Target]:
    """Evaluates BUILD text with stub rules; returns {name: Target}. Raises ValueError on misuse."""
    targets: dict[str, Target] = {}

    def rule(kind):
        def record(name, srcs=(), data=(), deps=(), main=None, args=(), **_):
            if name in targets:
                raise ValueError(f"BUILD: target name {name!r} defined twice")
            targets[name] = Target(kind, name, list(srcs), list(data), list(deps), main, list(args))
        return record

    env = {
        "__builtins__": {"True": True, "False": False, "None": None, "len": len,
                         "sorted": sorted, "list": list, "dict": dict},
        "package": lambda **k: None,
        "exports_files": lambda *a, **k: None,
        "glob": make_glob(root),
        "requirement": lambda name: REQ_PREFIX + norm(name),
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "py_test": rule("py_test"),
    }

    def load(_label, *symbols):
        for s in symbols:
            if s not in env:
                raise ValueError(f"BUILD loads {s!r}, which the checker does not know")
    env["load"] = load
    tree = ast.parse(text, "BUILD")
    for node in ast.walk(tree):  # keep to Starlark: no imports, defs, classes, attribute tricks
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef,
                             ast.Lambda, ast.While)):
            raise ValueError(f"BUILD line {node.lineno}: {type(node).__name__} is not Starlark")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ValueError(f"BUILD line {node.lineno}: attribute {node.attr!r} not allowed")
    exec(compile(tree, "BUILD", "exec"), env)  # noqa: S102  (our own file, stub environment)
    return targets


def covered_files(root: str) -> list[str]:
    """Python files that must be in some target's srcs."""
    return sorted(make_glob(root)([f"{PKG}/**/*.py", "tests/*.py", "bench/*.py"]))


def check(text: str, root: str = ROOT) -> list[str]:
    """Every problem found in BUILD text against the tree at root (empty list: all good)."""
    try:
        targets = load_build(text, root)
    except (ValueError, SyntaxError, TypeError, NameError) as e:
        return [f"BUILD does not evaluate: {e}"]
    errors: list[str] = []

    def exists(f):
        return os.path.isfile(os.path.join(root, f))

    # (b) files and labels
    for t in targets.values():
        for s in t.srcs:
            if s.startswith((":", "//", "@")) or not s.endswith(".py"):
                errors.append(f"//:{t.name} srcs: {s!r} is not a .py file path")
            elif not exists(s):
                errors.append(f"//:{t.name} srcs: file {s!r} does not exist")
        for attr in ("deps", "data"):
            for label in getattr(t, attr):
                name = label[3:] if label.startswith("//:") else label.lstrip(":")
                if label.startswith("@"):
                    if not label.startswith(REQ_PREFIX):
                        errors.append(f"//:{t.name} {attr}: external {label!r} is not a requirement()")
                elif label.startswith("//"):
                    errors.append(f"//:{t.name} {attr}: {label!r} points into another package")
                elif name in targets:
                    pass
                elif label.startswith(":") or attr == "deps":
                    errors.append(f"//:{t.name} {attr}: {label!r} names no target in BUILD")
                elif not exists(name):
                    errors.append(f"//:{t.name} {attr}: file {name!r} does not exist")
        if t.kind in ("py_binary", "py_test") and (t.main or t.name + ".py") not in t.srcs:
            errors.append(f"//:{t.name}: main {t.main or t.name + '.py'!r} is not one of its srcs")
        for a in t.args:
            if a.endswith(".py") and a not in t.srcs:
                errors.append(f"//:{t.name}: args names {a!r}, which is not in its srcs")

    # Bazel forbids dependency cycles; reqs(n): requirement names reachable from n
    def edges(n):
        return [lb.lstrip("/:") for lb in targets[n].deps + targets[n].data
                if not lb.startswith("@") and lb.lstrip("/:") in targets]

    def reqs(n, stack=()):
        if n in stack:
            errors.append("dependency cycle: " + " -> ".join(stack[stack.index(n):] + (n,)))
            return set()
        out = {d[len(REQ_PREFIX):] for d in targets[n].deps if d.startswith(REQ_PREFIX)}
        for m in edges(n):
            out |= reqs(m, stack + (n,))
        return out

    # (a) coverage
    srcs = {s for t in targets.values() for s in t.srcs}
    errors += [f"{f} is in no target's srcs" for f in covered_files(root) if f not in srcs]

    # (c) requirements, package data
    lock = _read_lock(os.path.join(root, "requirements_lock.txt"))
    used = {d[len(REQ_PREFIX):] for t in targets.values() for d in t.deps if d.startswith(REQ_PREFIX)}
    for r in sorted(used - set(lock)):
        errors.append(f"requirement({r!r}) is not pinned in requirements_lock.txt")
    kw = _setup_kwargs(root)
    install = {_req_name(r) for r in kw.get("install_requires", [])}
    test = install | {_req_name(r) for r in kw.get("extras_require", {}).get("test", [])}
    for t in targets.values():
        want = test if t.kind == "py_test" else install if f"{PKG}/__init__.py" in t.srcs else set()
        for r in sorted(want - reqs(t.name)):
            errors.append(f"//:{t.name} does not reach requirement({r!r}) (setup.py needs it)")
    data_files = {d for t in targets.values() for d in t.data}
    for pkg, patterns in kw.get("package_data", {}).items():
        for f in make_glob(root)([pkg.replace(".", "/") + "/" + p for p in patterns], allow_empty=True):
            if f not in data_files:
                errors.append(f"{f} (setup.py package_data) is no target's data")
    return errors


def _req_name(spec: str) -> str:
    return norm(re.match(r"[A-Za-z0-9._-]+", spec).group(0))


def _read_lock(path: str) -> dict[str, str]:
    pins = {}
    if not os.path.isfile(path):
        return pins
    for line in open(path, encoding="utf8"):
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip()
    return pins


def _setup_kwargs(root: str) -> dict:
    tree = ast.parse(open(os.path.join(root, "setup.py"), encoding="utf8").read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("install_requires", "extras_require", "package_data", "entry_points")}


# ------------------------------------------------------------------------------------------------
# Tests


def _build_text() -> str:
    with open(os.path.join(ROOT, "BUILD"), encoding="utf8") as f:
        return f.read()


def _without_target(text: str, name: str) -> str:
    """BUILD text with the top-level rule call whose name= is `name` cut out."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and any(
                k.arg == "name" and isinstance(k.value, ast.Constant) and k.value.value == name
                for k in call.keywords):
            return "".join(lines[: node.lineno - 1] + lines[node.end_lineno:])
    raise AssertionError(f"no target {name!r} in BUILD")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not in BUILD"
    return text.replace(old, new, 1)


def test_build_file_matches_tree():
    errors = check(_build_text())
    assert not errors, "BUILD is out of date:\n  " + "\n  ".join(errors)


def test_no_other_build_files():
    """Labels here assume one package (the top-level BUILD): a BUILD in a directory the targets
    take files from would make it a package of its own and cut its files out of glob()."""
    tops = {f.split("/")[0] for t in load_build(_build_text()).values() for f in t.srcs + t.data
            if "/" in f and not f.startswith((":", "@"))}
    found = []
    for top in sorted(tops):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top), followlinks=True):
            found += [os.path.join(dirpath, f) for f in filenames if f in ("BUILD", "BUILD.bazel")]
    assert not found, f"nested BUILD files: {found}"


def test_every_target_kind_present():
    """The targets docs/testing.md names: CLIs, bench scripts, one py_test per test file."""
    targets = load_build(_build_text())
    for name, cli in [("train", "efficientnet_tf/train/__main__.py"),
                      ("export", "efficientnet_tf/export/__main__.py"),
                      ("convert", "efficientnet_tf/data/convert.py"), ("demo", "efficientnet_tf/demo.py")]:
        assert name in targets and targets[name].kind == "py_binary" and targets[name].main == cli, \
            f"//:{name} should be a py_binary running {cli}"
    for f in covered_files(ROOT):
        stem = os.path.basename(f)[:-3]
        if f.startswith("bench/"):
            t = targets.get("bench_" + stem)
            assert t and t.kind == "py_binary" and t.main == f, f"no //:bench_{stem} runs {f}"
        if re.fullmatch(r"tests/test_\w+\.py", f):
            t = targets.get(stem)
            assert t and t.kind == "py_test" and f in t.args, f"no //:{stem} py_test runs {f}"


def test_requirements_match_setup_py():
    from packaging.requirements import Requirement
    from packaging.version import Version

    kw = _setup_kwargs(ROOT)
    declared = list(kw["install_requires"]) + list(kw["extras_require"].get("test", []))
    want = {norm(Requirement(r).name): Requirement(r).specifier for r in declared}
    lines = [ln.split("#")[0].strip() for ln in open(os.path.join(ROOT, "requirements.txt"))]
    got = {norm(Requirement(ln).name): Requirement(ln).specifier for ln in lines if ln}
    assert got == want, "requirements.txt differs from setup.py install_requires + test extras"
    lock = _read_lock(os.path.join(ROOT, "requirements_lock.txt"))
    for name, spec in want.items():
        assert name in lock, f"{name} is not pinned in requirements_lock.txt"
        assert Version(lock[name]) in spec, f"lock pins {name}=={lock[name]}, outside {spec}"


def test_module_bazel_reads_the_lock_file_into_the_hub_build_loads():
    module = open(os.path.join(ROOT, "MODULE.bazel"), encoding="utf8").read()
    lock = re.search(r'requirements_lock\s*=\s*"//:([^"]+)"', module)
    hub = re.search(r'hub_name\s*=\s*"([^"]+)"', module)
    assert lock and os.path.isfile(os.path.join(ROOT, lock.group(1))), "MODULE.bazel: lock file"
    assert hub and f'load("@{hub.group(1)}//:requirements.bzl", "requirement")' in _build_text()
    assert f'use_repo(pip, "{hub.group(1)}")' in module


# --- the checker can fail ------------------------------------------------------------------------


def test_checker_flags_uncovered_tests_and_modules():
    text = _replace(_build_text(), 'glob(["tests/test_*.py"])', 'glob(["tests/test_m*.py"])')
    text = _replace(text, 'glob(["bench/*.py"])', 'glob(["bench/m*.py"])')
    errors = check(text)
    assert "tests/test_tfrecord.py is in no target's srcs" in errors, errors
    assert "bench/train.py is in no target's srcs" in errors, errors
    assert "tests/test_model.py is in no target's srcs" not in errors, errors


def test_checker_flags_a_missing_library_target():
    errors = check(_without_target(_build_text(), "efficientnet_tf"))
    assert f"{PKG}/data/tfrecord.py is in no target's srcs" in errors, errors
    assert any("':efficientnet_tf' names no target" in e for e in errors), errors
    assert any("efficientnet_tf/resources/imagenet_class_index.json (setup.py package_data)" in e
               for e in errors), errors


def test_checker_flags_missing_files_and_bad_labels():
    text = _replace(_build_text(), 'srcs = ["tpu/commands.py"]', 'srcs = ["tpu/command.py"]')
    text = _replace(text, 'data = [":tpu_commands"]', 'data = [":tpu_comands", "tpu/nope.sh"]')
    errors = check(text)
    assert any("file 'tpu/command.py' does not exist" in e for e in errors), errors
    assert any("main 'tpu/commands.py' is not one of its srcs" in e for e in errors), errors
    assert any("':tpu_comands' names no target" in e for e in errors), errors
    assert any("file 'tpu/nope.sh' does not exist" in e for e in errors), errors


def test_checker_flags_requirements():
    text = _replace(_build_text(), '"matplotlib",', '"matplotlb",')
    text = _replace(text, '"pillow",', '')
    errors = check(text)
    assert "requirement('matplotlb') is not pinned in requirements_lock.txt" in errors, errors
    assert any("//:efficientnet_tf does not reach requirement('matplotlib')" in e for e in errors)
    assert any("//:test_tfrecord does not reach requirement('pillow')" in e for e in errors), errors


def test_checker_rejects_non_starlark_and_unknown_loads():
    assert "is not Starlark" in check("def f():\n    pass\n")[0]
    assert "does not know" in check('load("@x//:defs.bzl", "cc_library")\n')[0]
    assert "defined twice" in check('py_library(name = "a")\npy_library(name = "a")\n')[0]
    assert "dependency cycle" in "\n".join(check(
        'py_library(name = "a", deps = [":b"])\npy_library(name = "b", deps = ["//:a"])\n'))


def test_glob(tmp_path):
    for f in ("a/x.py", "a/b/y.py", "a/b/z.txt", "x.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    glob = make_glob(str(tmp_path))
    assert glob(["a/**/*.py"]) == ["a/b/y.py", "a/x.py"] and glob(["a/*.py"]) == ["a/x.py"]
    assert glob(["**/*.py"], exclude=["a/b/*"]) == ["a/x.py", "x.py"] and glob(["a/**"])[0] == "a/b/y.py"
    assert glob(["c/*"], allow_empty=True) == []
    with pytest.raises(ValueError, match="matches no file"):
        glob(["c/*"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_console_scripts_run_the_python_m_entry_points():
    """efficientnet-train, -export, -predict, -convert, -evaluate (setup.py) call the function
    that `python -m efficientnet_tf.<module>` runs; an installed script works like it."""
    import importlib
    import subprocess

    scripts = dict(line.split("=") for line in _setup_kwargs(ROOT)["entry_points"]["console_scripts"])
    assert set(scripts) == {f"efficientnet-{n}" for n in
                            ("train", "export", "predict", "convert", "evaluate")}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
        # The file `python -m` runs: the module itself, or its package's __main__.py.
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        if module.endswith(".main"):
            path = os.path.join(os.path.dirname(path), "__main__.py")
        text = open(path, encoding="utf8").read()
        assert f"\n    {func}()" in text or f"\n{func}()" in text, (name, path)
    script = os.path.join(os.path.dirname(sys.executable), "efficientnet-predict")
    assert os.path.exists(script), f"{script} missing: run `pip install -e .` again (setup.py changed)"
    p = subprocess.run([script, "--model=none.tflite", "--top_k=0", "x.jpg"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "--top_k must be an integer >= 1, got 0" in p.stderr, p.stderr[-2000:]
