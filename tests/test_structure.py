"""The package's layers point one way (README "Layout"): checked on every import, lazy ones too."""
import ast
import fnmatch
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "efficientnet_tf")

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = {
    "basics": {"constants", "spec", "scaling", "modelspec", "config", "fileio", "rundir", "cli"},
    "data": {"data"},
    "model": {"layers", "builder", "model", "weights", "profile", "imagenet", "ema", "factory",
              "recipe", "recompute"},
    "products": {"export"},
    "orchestration": {"train", "research"},
    "entry points": {"demo", "evaluate", "predict"},
}
ORDER = list(LAYERS)
PURE = {"constants", "spec", "scaling", "modelspec", "config", "fileio", "rundir", "cli"}  # no TensorFlow / Keras at import time
FLAG_FILES = {"train/main.py", "export/__main__.py", "data/convert.py", "train/__main__.py",
              "weights/__main__.py", "evaluate.py", "predict.py", "research/__main__.py",
              "cli.py"}


def _layer(top: str) -> str:
    return next(name for name, tops in LAYERS.items() if top in tops)


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                yield os.path.relpath(path, PKG).replace(os.sep, "/"), path


def _imports(path):
    """(imported module, lineno, at module level?) for every import in the file."""
    tree = ast.parse(open(path).read())
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in top_level


def _top(rel: str) -> str:
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".py") else first


def test_every_module_has_a_layer():
    tops = {_top(rel) for rel, _ in _modules()} - {"__init__"}
    known = set().union(*LAYERS.values())
    assert tops <= known, f"put {sorted(tops - known)} in a layer of tests/test_structure.py"


def test_imports_point_down():
    wrong = []
    for rel, path in _modules():
        top = _top(rel)
        if top == "__init__":
            continue
        mine = ORDER.index(_layer(top))
        for name, line, _ in _imports(path):
            parts = name.split(".")
            if parts[0] != "efficientnet_tf" or len(parts) < 2 or parts[1] not in set().union(
                    *LAYERS.values()):
                continue
            if ORDER.index(_layer(parts[1])) > mine:
                wrong.append(f"{rel}:{line} imports {name} ({_layer(parts[1])} is above "
                             f"{_layer(top)})")
    assert not wrong, "\n".join(wrong)


def test_export_never_imports_train():
    hits = [f"{rel}:{line} {name}" for rel, path in _modules() if rel.startswith("export/")
            for name, line, _ in _imports(path) if name.startswith("efficientnet_tf.train")]
    assert not hits, hits


def test_basics_import_no_tensorflow_at_module_level():
    hits = [f"{rel}:{line} {name}" for rel, path in _modules() if _top(rel) in PURE
            for name, line, top_level in _imports(path)
            if top_level and name.split(".")[0] in ("tensorflow", "keras")]
    assert not hits, hits


def test_only_entry_points_touch_absl_flags():
    hits = [f"{rel}:{line}" for rel, path in _modules() if rel not in FLAG_FILES
            for name, line, _ in _imports(path) if name in ("absl.flags", "absl.app")]
    assert not hits, hits


def _module_name(rel: str) -> str:
    name = "efficientnet_tf." + rel[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _import_graph(pkg_dir=None) -> dict:
    """{module: {package modules it imports}}, lazy imports included. `from a.b import c`
    points at a.b.c when that is a module, else at a.b; a package's __init__ is not counted as
    imported by its own submodules' imports of their siblings (Python runs it first anyway)."""
    pkg = pkg_dir or PKG
    rels = {}
    for root, _, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rels[_module_name(os.path.relpath(path, pkg).replace(os.sep, "/"))] = path
    graph = {}
    for mod, path in rels.items():
        edges = set()
        for name, _, _ in _imports(path):
            while name and name not in rels:
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):
                edges.add(name)
        graph[mod] = edges
    return graph


def _cycles(graph: dict) -> list:
    """Each import circle once, as the list of modules around it."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_circles_even_within_a_layer():
    """model -> weights -> model would pass the layer check (one layer): checked here, with
    imports inside functions counted too."""
    cycles = _cycles(_import_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_circle_check_finds_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("from efficientnet_tf import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from efficientnet_tf.a import x\n")
    assert _cycles(_import_graph(str(tmp_path))) == [
        ["efficientnet_tf.a", "efficientnet_tf.b", "efficientnet_tf.a"]]


def test_the_applications_surface_is_written_out():
    """def EfficientNetB0 ... exists in model.py for every built-in variant: grep finds it."""
    import efficientnet_tf.spec as spec

    tree = ast.parse(open(os.path.join(PKG, "model.py")).read())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {v.constructor_name for v in spec.VARIANTS.values()} <= defined


@pytest.mark.parametrize("bad, expected", [
    ("from efficientnet_tf.train import loop\n", "above"),
])
def test_the_check_catches_an_upward_import(tmp_path, bad, expected, monkeypatch):
    """The import check is not vacuous: an export module importing train/ is reported."""
    fake = tmp_path / "export"
    fake.mkdir()
    (fake / "x.py").write_text(bad)
    monkeypatch.setattr(sys.modules[__name__], "PKG", str(tmp_path))
    with pytest.raises(AssertionError, match=expected):
        test_imports_point_down()
    with pytest.raises(AssertionError, match="efficientnet_tf.train"):
        test_export_never_imports_train()


def _test_index(text: str) -> dict:
    """{module path: [test files]} from docs/testing.md's "Where a module's tests are" table."""
    section = text.split("## Where a module's tests are", 1)[1].split("\n## ", 1)[0]
    index = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        files = [f.strip() for f in cells[1].split(",")]
        for module in re.findall(r"`([^`]+)`", cells[0]):
            index[module] = files
    return index


def _index_problems(text: str) -> tuple[list, list]:
    """(modules without a row, test files named that do not exist)."""
    index = _test_index(text)
    rels = {rel for rel, _ in _modules() if not rel.endswith("/__init__.py")}
    covered = {rel for rel in rels for pattern in index if fnmatch.fnmatch(rel, pattern)}
    absent = {f for files in index.values() for f in files
              if not os.path.isfile(os.path.join(REPO, "tests", f))}
    return sorted(rels - covered), sorted(absent)


def test_every_module_has_its_tests_named_in_docs_testing():
    missing, absent = _index_problems(open(os.path.join(REPO, "docs", "testing.md")).read())
    assert not missing, f"add rows for {missing} to docs/testing.md"
    assert not absent, f"docs/testing.md names missing test files {absent}"


def test_the_index_check_finds_a_missing_row_and_a_missing_file():
    text = open(os.path.join(REPO, "docs", "testing.md")).read()
    text = text.replace("| `modelspec.py` | test_modelspec.py |", "").replace(
        "| `rundir.py` | test_rundir.py |", "| `rundir.py` | test_nothing_here.py |")
    assert _index_problems(text) == (["modelspec.py"], ["test_nothing_here.py"])


def _named_tests_missing(text: str) -> list:
    """`tests/<file>.py::<name>` references in text whose test function does not exist."""
    missing = []
    for path, name in sorted(set(re.findall(r"tests/(test_\w+\.py)::(\w+)", text))):
        full = os.path.join(REPO, "tests", path)
        source = open(full, encoding="utf8").read() if os.path.isfile(full) else ""
        if not re.search(rf"^def {name}\(", source, re.M):
            missing.append(f"tests/{path}::{name}")
    return missing


def test_tests_named_in_the_docs_exist():
    """The README and docs/ name tests as evidence (the fault-tolerance table): a renamed or
    removed test must not leave its name behind."""
    pages = [os.path.join(REPO, "README.md")] + [
        os.path.join(REPO, "docs", f) for f in sorted(os.listdir(os.path.join(REPO, "docs")))
        if f.endswith(".md")]
    text = "\n".join(open(p, encoding="utf8").read() for p in pages)
    assert len(re.findall(r"tests/test_\w+\.py::\w+", text)) > 10  # the check sees them
    assert not _named_tests_missing(text)
    assert _named_tests_missing("tests/test_cli.py::test_gone and "
                                "tests/test_nothing_here.py::test_x") == [
        "tests/test_cli.py::test_gone", "tests/test_nothing_here.py::test_x"]
