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
