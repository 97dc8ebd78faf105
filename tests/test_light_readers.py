"""Reading results must stay light: `vggprune report` and `vggprune compare` never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

PROBE = """
import sys
from vggprune.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "torchvision", "torch_pruning") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


def _probe(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_report_does_not_import_torch(tmp_path):
    line = _probe("report", str(FIXTURES / "run_cpu.json"), "--out", str(tmp_path), "--format", "csv")
    assert line == "HEAVY [] CODE 0"


def test_compare_does_not_import_torch():
    line = _probe("compare", str(FIXTURES / "run_cpu.json"), str(FIXTURES / "run_cpu.json"))
    assert line == "HEAVY [] CODE 0"


PACKAGE = Path(__file__).parent.parent / "vggprune"
HEAVY = ("torch", "torchvision", "torch_pruning", "onnx", "onnxruntime", "openvino")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts, "__init__.py"), PACKAGE.joinpath(*parts).with_suffix(".py")):
        if parts and candidate.exists():
            return candidate
    return PACKAGE / "__init__.py" if not parts else None


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (a lazy import counts)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module.startswith("vggprune"))
    return found


def heavy_imports(start: str) -> dict[str, list[str]]:
    """For each module reachable from ``start`` through vggprune imports: the heavy ones it imports."""
    seen, todo, heavy = set(), [start], {}
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        imports = _imports(path)
        bad = sorted(m for m in imports if m.split(".")[0] in HEAVY)
        if bad:
            heavy[name] = bad
        todo.extend(m for m in imports if m.startswith("vggprune"))
    return heavy


def test_the_results_package_imports_no_torch_however_deep():
    """The contract for vggprune/results: reading, reporting and comparing runs need no torch."""
    modules = sorted(f"vggprune.results.{p.stem}" for p in (PACKAGE / "results").glob("*.py") if p.stem != "__init__")
    assert len(modules) >= 6
    assert {m: heavy_imports(m) for m in modules if heavy_imports(m)} == {}


def test_the_contract_sees_an_import_hidden_in_a_function():
    assert "vggprune.timing.pairing" in heavy_imports("vggprune.timing.pairing")
    assert heavy_imports("vggprune.cli.prune")  # its sub-commands build models, lazily
