"""The package layout: each folder of edgeconv/ is one layer, and every import (lazy ones inside functions too)
points to the same layer or one below it, with no circle between modules. Read from the source, so it holds on
every machine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "edgeconv"
# bottom to top; a module may import its own layer and the layers before it
LAYERS = (
    "common",
    "artifacts",
    "data",
    "models",
    "train",
    "compress",
    "runtime",
    "export",
    "quantize",
    "measure",
    "inspection",
    "pipeline",
    "cli",
)


def _name(p: Path) -> str:
    parts = p.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> str:
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The edgeconv modules a file imports at run time (TYPE_CHECKING-only imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(x)
        for n in ast.walk(tree)
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        for x in ast.walk(n)
    }
    out = set()
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "edgeconv":
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                out.add(sub if sub in MODULES else _resolve(n.module))
        elif isinstance(n, ast.Import):
            out |= {_resolve(a.name) for a in n.names if a.name.split(".")[0] == "edgeconv"}
        elif isinstance(n, ast.ImportFrom) and n.level:
            raise AssertionError(f"{path}: relative import; edgeconv imports by absolute name")
    return out


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> int:
    if module == "edgeconv.__main__":
        return LAYERS.index("cli")
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1  # edgeconv/__init__.py: the version only


def test_every_folder_is_a_layer_and_every_module_sits_in_one():
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
    assert {p.name for p in PKG.glob("*.py")} == {"__init__.py", "__main__.py"}


MAX_LINES = 600


def test_no_module_is_longer_than_a_reader_can_hold():
    """Over MAX_LINES a module does more than one job: split it along the jobs (quantize/ort_options, ort_tree, ort)."""
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_imports_point_down_only():
    up = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a))
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_no_import_circles():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not cycles, f"import circles: {cycles}"


def test_the_checker_sees_an_upward_lazy_import(tmp_path):
    """The rule is not vacuous: a lazy import from common up to models is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edgeconv.models import create_model\n    return create_model\n")
    assert "edgeconv.models" in _imports(bad)
    assert _layer("edgeconv.models") > _layer("edgeconv.common.checks")


def test_common_is_torch_free():
    code = (
        "import sys, importlib\n"
        "for m in ('errors', 'options', 'settings', 'checks', 'console', 'trust', 'stats'):\n"
        "    importlib.import_module('edgeconv.common.' + m)\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_python_dash_m_edgeconv_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "edgeconv", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("edgeconv ")


def test_public_entry_points_keep_their_names():
    from edgeconv.cli import main  # the console script's target (pyproject: edgeconv.cli:main)
    from edgeconv.models import create_model

    assert callable(main)
    assert create_model("routed-tiny").cfg["family"] == "routed"


OLD = Path(__file__).resolve().parent / "fixtures" / "v0.1-fe550e6"


def test_artifacts_written_before_the_layout_change_still_load_and_validate():
    import numpy as np
    import onnxruntime as ort
    import torch

    from edgeconv.measure.describe import describe
    from edgeconv.models import load_model

    model, ckpt = load_model(OLD / "routed.pt")
    assert ckpt["family"] == "routed"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(OLD / "routed.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4
    assert describe(OLD / "routed.pt")["model"]["family"] == "routed"
    desc = describe(OLD / "routed.int8.onnx")
    assert any("quantiz" in section.lower() for section in desc), list(desc)
