"""The top-level Bazel BUILD stays honest without running Bazel.

BUILD is Starlark (a Python subset); we evaluate it with stub rule functions that record each
target's attributes, then check against the tree:
  (a) every .py under efficientnet_tf/, every tests/*.py and bench/*.py is in some target's srcs;
  (b) every dep / data label (":x", "//:x") names a target that exists;
  (c) every srcs / data file exists, and a py_binary / py_test `main` is one of its srcs;
  (d) the efficientnet_tf modules a file imports (also inside functions, and in the Python
      scripts tests pass to subprocesses as strings), with their parent packages' __init__.py,
      are in the transitive srcs of every target holding that file; and its third-party imports
      are in the transitive requirement() deps;
  (e) requirement() names are pinned in requirements_lock.txt; requirements.txt says what
      setup.py says; setup.py's package_data files are data of some target.
Fast: no TensorFlow import. The checker is fed broken BUILD texts below to show it can fail.
"""
from __future__ import annotations

import ast
import fnmatch
import functools
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

# realpath: under `bazel test` this file is a runfiles symlink; the source tree is what we check.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
PKG = "efficientnet_tf"

# import name -> PyPI name, for the third-party packages the code imports
PYPI = {
    "absl": "absl-py",
    "h5py": "h5py",
    "keras": "keras",
    "matplotlib": "matplotlib",
    "ml_dtypes": "ml-dtypes",
    "numpy": "numpy",
    "packaging": "packaging",
    "PIL": "pillow",
    "pytest": "pytest",
    "skimage": "scikit-image",
    "tensorboard": "tensorboard",
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "tensorflow-datasets",
    "tensorflow_serving": "tensorflow-serving-api",
    "yaml": "pyyaml",
}
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


# ------------------------------------------------------------------------------------------------
# Evaluating BUILD


def _glob(root: str):
    def glob(include, exclude=(), allow_empty=False):
        out = set()
        for pattern in include:
            fixed = []  # walk only below the pattern's wildcard-free leading directories
            for part in pattern.split("/")[:-1]:
                if "*" in part:
                    break
                fixed.append(part)
            top = os.path.join(root, *fixed)
            for dirpath, dirnames, filenames in os.walk(top):
                rel_dir = os.path.relpath(dirpath, root)
                dirnames[:] = [d for d in dirnames if not d.startswith((".", "bazel-"))]
                for f in filenames:
                    rel = os.path.normpath(os.path.join(rel_dir, f))
                    if _match(rel, pattern) and not any(_match(rel, p) for p in exclude):
                        out.add(rel)
        if not out and not allow_empty:
            raise ValueError(f"glob({include!r}) matches no file")
        return sorted(out)
    return glob


def _match(path: str, pattern: str) -> bool:
    """Bazel glob: `**` spans directories, `*` stays within one."""
    return _glob_regex(pattern).fullmatch(path) is not None


@functools.lru_cache(maxsize=None)
def _glob_regex(pattern: str) -> re.Pattern:
    rx = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            rx += ".*"
            i += 2
        elif pattern[i] == "*":
            rx += "[^/]*"
            i += 1
        else:
            rx += re.escape(pattern[i])
            i += 1
    return re.compile(rx)


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
                         "sorted": sorted, "list": list},
        "load": lambda *a, **k: None,
        "package": lambda **k: None,
        "exports_files": lambda *a, **k: None,
        "glob": _glob(root),
        "requirement": lambda name: REQ_PREFIX + norm(name),
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "py_test": rule("py_test"),
    }
    tree = ast.parse(text, "BUILD")
    for node in ast.walk(tree):  # keep to Starlark: no imports, defs, classes, attribute tricks
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef,
                             ast.Lambda, ast.While)):
            raise ValueError(f"BUILD line {node.lineno}: {type(node).__name__} is not Starlark")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ValueError(f"BUILD line {node.lineno}: attribute {node.attr!r} not allowed")
    exec(compile(tree, "BUILD", "exec"), env)  # noqa: S102  (our own file, stub environment)
    return targets


# ------------------------------------------------------------------------------------------------
# Imports of a Python file


def _module_file(dotted: str, root: str) -> str | None:
    base = os.path.join(*dotted.split("."))
    for cand in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(os.path.join(root, cand)):
            return cand
    return None


def _own_imports(tree: ast.AST, package: str) -> set[str]:
    """Dotted efficientnet_tf module names imported anywhere in the tree (incl. `from m import sub`)."""
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.split(".")[0] == PKG)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PKG:
                continue
            mods.add(base)
            mods.update(f"{base}.{a.name}" for a in node.names)  # kept only if a module file
    return mods


@functools.lru_cache(maxsize=None)
def _dynamic_imports(tree: ast.AST) -> set[str]:
    """Modules run as `[..., "-m", "efficientnet_tf.x", ...]` argv (a package also needs its
    __main__, marked by a ".__main__" suffix), or named in import_module()/importorskip()."""
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            for a, b in zip(node.elts, node.elts[1:]):
                if isinstance(a, ast.Constant) and a.value == "-m" and isinstance(b, ast.Constant) \
                        and isinstance(b.value, str) and b.value.split(".")[0] == PKG:
                    mods |= {b.value, b.value + ".__main__"}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            arg = node.args[0].value
            if fn in ("import_module", "importorskip") and isinstance(arg, str) \
                    and arg.split(".")[0] == PKG:
                mods.add(arg)
    return mods


def file_imports(path: str, root: str = ROOT) -> tuple[set[str], set[str], list[str]]:
    """(files of efficientnet_tf modules needed, top-level third-party modules, problems)."""
    src = open(os.path.join(root, path), encoding="utf8").read()
    tree = ast.parse(src, path)
    package = os.path.dirname(path).replace(os.sep, ".")
    mods = _own_imports(tree, package)
    for node in ast.walk(tree):  # Python run in subprocesses, kept in string literals
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PKG in node.value \
                and "import" in node.value:
            try:
                mods |= _own_imports(ast.parse(textwrap.dedent(node.value)), package)
            except SyntaxError:
                pass
    mods |= _dynamic_imports(tree)
    files, problems = set(), []
    for mod in sorted(mods):
        parts = mod.split(".")
        f = _module_file(mod, root)
        if f is None:
            parent = ".".join(parts[:-1])
            if _module_file(parent, root) is None:
                problems.append(f"{path} imports {mod}, which is no module in the tree")
            continue  # `from pkg import name` where name is not a module
        files.add(f)
        if mod.endswith(".__main__"):  # `python -m package` runs package/__main__.py
            if os.path.isfile(os.path.join(root, *parts[:-1], "__main__.py")):
                files.add(os.path.join(*parts[:-1], "__main__.py"))
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            init = _module_file(".".join(parts[:i]), root)
            if init:
                files.add(init)
    third = set()
    local = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, os.path.dirname(path)) or ".")}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        for n in names:
            top = n.split(".")[0]
            if top in (PKG, "__future__") or top in sys.stdlib_module_names or top in local:
                continue
            third.add(top)
    return files, third, problems


# ------------------------------------------------------------------------------------------------
# The checker


def _label(label: str) -> str | None:
    """Target name for a label in this package, None for external (@...) labels."""
    if label.startswith("@"):
        return None
    if label.startswith("//:"):
        return label[3:]
    if label.startswith(":"):
        return label[1:]
    if label.startswith("//"):
        raise ValueError(f"label {label!r} points into another package; there is only the top-level BUILD")
    return label  # bare name: a target if one has it, else a file


def covered_files(root: str) -> list[str]:
    """Python files that must be in some target's srcs."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, PKG)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.endswith(".py")]
    for d in ("tests", "bench"):
        if os.path.isdir(os.path.join(root, d)):
            out += [f"{d}/{f}" for f in os.listdir(os.path.join(root, d)) if f.endswith(".py")]
    return sorted(out)


def check(text: str, root: str = ROOT) -> list[str]:
    """Every problem found in BUILD text against the tree at root (empty list: all good)."""
    try:
        targets = load_build(text, root)
    except (ValueError, SyntaxError, TypeError, NameError) as e:
        return [f"BUILD does not evaluate: {e}"]
    errors: list[str] = []

    # (b) labels, (c) files
    def resolve(t: Target, label: str, attr: str) -> str | None:
        try:
            name = _label(label)
        except ValueError as e:
            errors.append(f"//:{t.name} {attr}: {e}")
            return None
        if name is None:
            if not label.startswith(REQ_PREFIX):
                errors.append(f"//:{t.name} {attr}: external label {label!r} is not a requirement()")
            return label
        if name in targets:
            return ":" + name
        if label.startswith(":") or attr == "deps":
            errors.append(f"//:{t.name} {attr}: {label!r} names no target in BUILD")
        elif not os.path.isfile(os.path.join(root, name)):
            errors.append(f"//:{t.name} {attr}: file {name!r} does not exist")
        return None

    edges: dict[str, list[str]] = {}
    for t in targets.values():
        edges[t.name] = []
        for s in t.srcs:
            if s.startswith((":", "//", "@")) or not s.endswith(".py"):
                errors.append(f"//:{t.name} srcs: {s!r} is not a .py file path")
            elif not os.path.isfile(os.path.join(root, s)):
                errors.append(f"//:{t.name} srcs: file {s!r} does not exist")
        for attr in ("deps", "data"):
            for label in getattr(t, attr):
                r = resolve(t, label, attr)
                if r and r.startswith(":"):
                    edges[t.name].append(r[1:])
                elif r:
                    edges[t.name].append(r)
        if t.kind in ("py_binary", "py_test"):
            main = t.main or t.name + ".py"
            if not any(s == main or s.endswith("/" + main) for s in t.srcs):
                errors.append(f"//:{t.name}: main {main!r} is not one of its srcs")
        for a in t.args:
            if a.endswith(".py") and a not in t.srcs:
                errors.append(f"//:{t.name}: args names {a!r}, which is not in its srcs")

    # Bazel forbids dependency cycles
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in edges.get(n, []):
            if m.startswith("@"):
                continue
            if state.get(m) == 1:
                errors.append("dependency cycle: " + " -> ".join(stack[stack.index(m):] + [n, m]))
            elif m not in state:
                visit(m, stack + [n])
        state[n] = 2
    for n in targets:
        if n not in state:
            visit(n, [])

    closure_cache: dict[str, tuple[set[str], set[str]]] = {}

    def closure(n: str) -> tuple[set[str], set[str]]:
        """(files, requirement names) reachable from target n through deps and data."""
        if n in closure_cache:
            return closure_cache[n]
        closure_cache[n] = (set(), set())  # cycle guard (cycles are reported above)
        t = targets[n]
        files = set(t.srcs) | {d for d in t.data if not d.startswith((":", "@", "//")) and d not in targets}
        reqs: set[str] = set()
        for m in edges[n]:
            if m.startswith(REQ_PREFIX):
                reqs.add(m[len(REQ_PREFIX):])
            else:
                f, r = closure(m)
                files |= f
                reqs |= r
        closure_cache[n] = (files, reqs)
        return files, reqs

    # (a) coverage
    holders: dict[str, list[str]] = {}
    for t in targets.values():
        for s in t.srcs:
            holders.setdefault(s, []).append(t.name)
    for f in covered_files(root):
        if f not in holders:
            errors.append(f"{f} is in no target's srcs")

    # (d) imports vs transitive deps
    for f, names in sorted(holders.items()):
        if not os.path.isfile(os.path.join(root, f)):
            continue
        try:
            need, third, problems = file_imports(f, root)
        except SyntaxError as e:
            errors.append(f"{f} does not parse: {e}")
            continue
        errors += problems
        for name in names:
            have, reqs = closure(name)
            for m in sorted(need - have):
                errors.append(f"{f} imports {m}, but //:{name} does not reach it through deps")
            for top in sorted(third):
                if top not in PYPI:
                    errors.append(f"{f} imports {top!r}: add it to PYPI in tests/test_build_file.py "
                                  "and a requirement() to the target")
                elif norm(PYPI[top]) not in reqs:
                    errors.append(f"{f} imports {top}, but //:{name} has no "
                                  f"requirement({PYPI[top]!r}) in its deps")

    # (e) requirements
    lock = _read_lock(os.path.join(root, "requirements_lock.txt"))
    used = {d[len(REQ_PREFIX):] for t in targets.values() for d in t.deps if d.startswith(REQ_PREFIX)}
    for r in sorted(used - set(lock)):
        errors.append(f"requirement({r!r}) is not pinned in requirements_lock.txt")
    data_files = {d for t in targets.values() for d in t.data}
    for f in _package_data(root):
        if f not in data_files:
            errors.append(f"{f} (setup.py package_data) is no target's data")
    return errors


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
            if k.arg in ("install_requires", "extras_require", "package_data")}


def _package_data(root: str) -> list[str]:
    out = []
    for pkg, patterns in _setup_kwargs(root).get("package_data", {}).items():
        for p in patterns:
            d, pat = os.path.split(os.path.join(pkg.replace(".", "/"), p))
            full = os.path.join(root, d)
            out += [f"{d}/{f}" for f in sorted(os.listdir(full)) if fnmatch.fnmatch(f, pat)] \
                if os.path.isdir(full) else []
    return out


# ------------------------------------------------------------------------------------------------
# Tests


def _build_text() -> str:
    with open(os.path.join(ROOT, "BUILD"), encoding="utf8") as f:
        return f.read()


def _without_target(text: str, name: str) -> str:
    """BUILD text with the rule call whose name= is `name` cut out."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and any(
                k.arg == "name" and isinstance(k.value, ast.Constant) and k.value.value == name
                for k in call.keywords):
            return "".join(lines[: node.lineno - 1] + lines[node.end_lineno:])
    raise AssertionError(f"no target {name!r} in BUILD")


def test_build_file_matches_tree():
    errors = check(_build_text())
    assert not errors, "BUILD is out of date:\n  " + "\n  ".join(errors)


def test_no_other_build_files():
    """Labels here assume one package (the top-level BUILD); a BUILD below would split it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "bazel-"))]
        if dirpath != ROOT:
            found += [os.path.join(dirpath, f) for f in filenames if f in ("BUILD", "BUILD.bazel")]
    assert not found, f"nested BUILD files: {found}"


def test_every_target_kind_present():
    targets = load_build(_build_text())
    binaries = {t.main for t in targets.values() if t.kind == "py_binary"}
    for cli in ("efficientnet_tf/train/__main__.py", "efficientnet_tf/export/__main__.py",
                "efficientnet_tf/data/convert.py", "efficientnet_tf/demo.py"):
        assert cli in binaries, f"no py_binary runs {cli}"
    for f in covered_files(ROOT):
        if f.startswith("bench/"):
            assert f in binaries, f"{f} is not a py_binary main"
    tests = {s for t in targets.values() if t.kind == "py_test" for s in t.args}
    for f in covered_files(ROOT):
        if re.fullmatch(r"tests/test_\w+\.py", f):
            assert f in tests, f"no py_test runs {f}"


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


# --- the checker can fail ------------------------------------------------------------------------


def test_checker_flags_a_missing_test_target():
    errors = check(_without_target(_build_text(), "test_model"))
    assert any("tests/test_model.py is in no target's srcs" in e for e in errors), errors


def test_checker_flags_a_missing_library_target():
    errors = check(_without_target(_build_text(), "data_tfrecord"))
    assert any("efficientnet_tf/data/tfrecord.py is in no target's srcs" in e for e in errors), errors
    assert any("':data_tfrecord' names no target" in e for e in errors), errors


def test_checker_flags_a_missing_dep():
    errors = check(_edit_target(_build_text(), "data_convert", '":data_tfrecord",'))
    assert any("efficientnet_tf/data/convert.py imports efficientnet_tf/data/tfrecord.py" in e
               and "//:data_convert" in e for e in errors), errors


def _edit_target(text: str, name: str, old: str) -> str:
    """BUILD text with `old` removed from the rule call of target `name`."""
    start = text.index(f'name = "{name}"')
    end = text.index(")\n", start)
    cut = text[start:end].replace(old, "", 1)
    assert cut != text[start:end], f"{old!r} not in //:{name}"
    return text[:start] + cut + text[end:]


def test_checker_flags_a_missing_lazy_import_dep():
    text = _edit_target(_build_text(), "data_preprocessing", '":data_augment",  # lazy import')
    errors = check(text)
    assert any("preprocessing.py imports efficientnet_tf/data/augment.py" in e for e in errors), errors


def test_checker_flags_a_missing_requirement():
    text = _edit_target(_build_text(), "train_evaluate", 'requirement("matplotlib"),')
    errors = check(text)
    assert any("evaluate.py imports matplotlib" in e and "requirement('matplotlib')" in e
               for e in errors), errors


def test_checker_flags_missing_files_and_bad_labels():
    text = _build_text().replace('"efficientnet_tf/spec.py",', '"efficientnet_tf/specs.py",', 1)
    text = text.replace('deps = [":train_main"]', 'deps = ["//:train_mian"]', 1)
    errors = check(text)
    assert any("'efficientnet_tf/specs.py' does not exist" in e for e in errors), errors
    assert any("efficientnet_tf/spec.py is in no target's srcs" in e for e in errors), errors
    assert any("'//:train_mian' names no target" in e for e in errors), errors


def test_checker_sees_imports_in_subprocess_scripts(tmp_path):
    (tmp_path / PKG).mkdir()
    (tmp_path / PKG / "__init__.py").write_text("")
    (tmp_path / PKG / "a.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        'import subprocess\nSCRIPT = """\nimport json\nfrom efficientnet_tf import a\n"""\n')
    need, third, problems = file_imports("tests/test_x.py", str(tmp_path))
    assert need == {f"{PKG}/__init__.py", f"{PKG}/a.py"} and not third and not problems


def test_checker_sees_python_dash_m(tmp_path):
    (tmp_path / PKG / "cli").mkdir(parents=True)
    for f in ("__init__.py", "cli/__init__.py", "cli/__main__.py", "cli/run.py"):
        (tmp_path / PKG / f).write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        'import subprocess, sys\n'
        'subprocess.run([sys.executable, "-m", "efficientnet_tf.cli", "--flag"])\n')
    need, _, problems = file_imports("tests/test_x.py", str(tmp_path))
    assert need == {f"{PKG}/__init__.py", f"{PKG}/cli/__init__.py", f"{PKG}/cli/__main__.py"}
    assert not problems


def test_checker_flags_a_missing_cli_in_test_data():
    errors = check(_edit_target(_build_text(), "test_train", '":train",'))
    assert any("tests/test_train.py imports efficientnet_tf/train/__main__.py" in e
               for e in errors), errors


def test_glob_matching():
    assert _match("efficientnet_tf/data/x.py", "**/*.py") and _match("setup.py", "**/*.py")
    assert not _match("efficientnet_tf/x.py", "*.py")
    assert _match(".venv/lib/x.py", ".venv/**") and not _match("tests/x.py", ".venv/**")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
