"""A training job: every cell of one (task, model, strategy, regime group), trained one after another."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ftbench.cell import run_cell
from ftbench.grid import CELL_FILES

log = logging.getLogger("ftbench.train")


def finished(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds a completed cell trained with exactly ``settings``."""
    try:
        return all((folder / f).is_file() for f in CELL_FILES) and \
            json.loads((folder / "run.json").read_text())["settings"] == settings
    except (OSError, ValueError, KeyError):
        return False


def run_job(job: dict, task_table: str, split: str, store: str | None, out_dir: str, checkpoints: str,
            fewshot: str | None = None, threads: int = 1, embeddings: str | None = None,
            weights_path: str | None = None) -> None:
    """Train every cell of a job (see ``grid.Job``) into ``out_dir/<cell leaf>``.

    Cells are trained into ``checkpoints`` first, which Snakemake never deletes: when a job dies (time
    limit, preemption, a crash in a later cell), its rerun skips the cells already finished there.
    The finished job moves them into ``out_dir`` and removes its checkpoints.
    """
    shared = {k: v for k, v in job.items() if k not in ("cells", "group")}
    work, out = Path(checkpoints), Path(out_dir)
    for number, cell in enumerate(job["cells"], start=1):
        settings = shared | {"regime": cell["regime"], "fold": cell["fold"]}
        folder = work / cell["leaf"]
        if finished(folder, settings):
            log.info("cell %d/%d (%s) already finished in %s", number, len(job["cells"]), cell["leaf"], folder)
            continue
        log.info("cell %d/%d: %s", number, len(job["cells"]), cell["leaf"])
        run_cell(settings, task_table, split, store, str(folder), fewshot, threads, embeddings, weights_path)
    for cell in job["cells"]:
        (out / cell["leaf"]).mkdir(parents=True, exist_ok=True)
        for name in CELL_FILES:
            os.replace(work / cell["leaf"] / name, out / cell["leaf"] / name)
    shutil.rmtree(work, ignore_errors=True)
