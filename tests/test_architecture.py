"""The package's layout: imports go one way between the stages' subpackages, and planning stays torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# docs/architecture.md: data, splits <- models <- plan <- train <- analysis <- cli; errors and files are shared
LAYERS = {"data": 0, "splits": 0, "models": 1, "plan": 2, "train": 3, "analysis": 4, "cli": 5, "__main__": 5}
SHARED = {"errors", "files", ""}


def _stage(module: str) -> str:
    """The stage of a dotted module name under ftbench ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftbench"):
            names |= {f"{node.module}.{a.name}" if node.module == "ftbench" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("ftbench")}
    return names


def test_imports_go_one_way():
    wrong = []
    for path in sorted((SRC / "ftbench").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        own = _stage(module)
        if own in SHARED or own == "__init__":
            continue
        for name in _imports(path):
            other = _stage(name)
            if other in SHARED or other == own or other not in LAYERS:
                continue
            if LAYERS[other] > LAYERS[own]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the stage order of docs/architecture.md:\n" + "\n".join(wrong)


def test_top_level_is_small():
    """Each stage is a folder; the top level keeps the CLI and a few shared helpers (issue 26: about 8)."""
    top = [p.name for p in (SRC / "ftbench").glob("*.py")]
    assert len(top) <= 8, top


@pytest.mark.parametrize(
    "module",
    [
        "ftbench.plan.grid",
        "ftbench.plan.cluster",
        "ftbench.plan.config",
        "ftbench.plan.reach",
        "ftbench.analysis.captions",
        "ftbench.data.sources",
    ],
)
def test_planning_modules_are_torch_free(module):
    """What the Snakefile imports must not import torch: every Slurm job re-parses it."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
