"""Running the workflow's Snakemake CLI from tests: a reduced demo grid and the dry-run plan."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from conftest import ROOT

DEMO = ROOT / "workflow" / "presets" / "demo.yaml"
# The demo cut to 1 model x 2 strategies x (full, 4-shot) x 2 folds = 8 cells, trained briefly, without the
# hierarchical model's MCMC (tests/test_workflow.py runs it on the whole demo).
REDUCED = {
    "benchmark": {"models": ["tiny_resnet"], "strategies": ["lp", "bitfit"]},
    "validation": {"folds": 2},
    "training": {"max_epochs": 4, "patience": 2},
    "report": {"hierarchical": False},
}


def copy_workflow(repo: Path) -> Path:
    """A copy of this checkout's workflow and code at ``repo``, without results, downloads or tests: a run there
    cannot touch the checkout's own results, and its files can be edited to test what reruns."""
    shutil.copytree(
        ROOT, repo, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "results", "resources", "tests")
    )
    return repo


def write_config(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def snakemake(
    root: Path,
    workdir: Path,
    *args: str,
    python: str = sys.executable,
    cwd: Path | None = None,
    env: dict | None = None,
    check: bool = True,
    timeout: int = 1200,
) -> subprocess.CompletedProcess:
    """`python -m snakemake -s <root>/Snakefile -d <workdir> ...`, failing with its output on error."""
    env = dict(os.environ, PATH=f"{Path(python).parent}:{os.environ['PATH']}", **(env or {}))
    cmd = [python, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned(proc: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """What a dry run would do: rule -> set of jobs, a job named by its first output (or '')."""
    jobs: dict[str, set[str]] = defaultdict(set)
    rule = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if match := re.match(r"\s*(?:local)?rule (\w+):$", line):
            rule = match.group(1)
            jobs[rule].add("")
        elif rule and (match := re.match(r"\s*output: ([^,\s]+)", line)):
            jobs[rule].discard("")
            jobs[rule].add(match.group(1))
        elif line.startswith("Job stats") or not line.strip():
            rule = None
    return dict(jobs)
