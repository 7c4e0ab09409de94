"""A training job: every cell of one (task, model, strategy, regime group), one after another or, with
``concurrent`` > 1, several at a time in worker processes sharing the job's one device.

Torch is imported only where a cell trains (here or in a worker), so a worker process records stop signals
from its first moments on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from ftbench.errors import Preempted
from ftbench.plan.grid import CELL_FILES
from ftbench.plan.transfer import KEPT_FILES
from ftbench.train.stop_signals import StopRecorder

log = logging.getLogger("ftbench.train")
POLL_SECONDS = 0.2  # how often a job, and a worker holding a stop signal for its cell's training, look again


def finished(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds a completed cell trained with exactly ``settings``."""
    try:
        return (
            all((folder / f).is_file() for f in CELL_FILES)
            and json.loads((folder / "run.json").read_text())["settings"] == settings
        )
    except (OSError, ValueError, KeyError):
        return False


def run_job(
    job: dict,
    task_table: str,
    split: str,
    store: str | None,
    out_dir: str,
    checkpoints: str,
    fewshot: str | None = None,
    threads: int = 1,
    embeddings: str | None = None,
    weights_path: str | None = None,
    concurrent: int = 1,
) -> None:
    """Train every cell of a job (see ``grid.Job``) into ``out_dir/<cell leaf>``.

    Cells are trained into ``checkpoints`` first, which Snakemake never deletes: when a job dies (time
    limit, preemption, a crash in a later cell), its rerun skips the cells already finished there.
    The finished job moves them into ``out_dir`` and removes its checkpoints.

    Up to ``concurrent`` cells train at the same time, each in a worker process with its own seeds and
    generators, so the results are those of training them one by one. ``threads`` is the job's CPU count:
    each cell gets ``threads // min(concurrent, cells)`` torch threads, whatever is left to train, so that
    a resumed job runs its cells as the first run did.
    """
    shared = {k: v for k, v in job.items() if k not in ("cells", "group")}
    work, out = Path(checkpoints), Path(out_dir)
    width = max(1, min(concurrent, len(job["cells"])))
    common = {
        "task_table": task_table,
        "split": split,
        "store": store,
        "fewshot": fewshot,
        "threads": max(1, threads // width),
        "embeddings": embeddings,
        "weights_path": weights_path,
    }
    todo = []
    for number, cell in enumerate(job["cells"], start=1):
        settings = shared | {"regime": cell["regime"], "fold": cell["fold"]}
        folder = work / cell["leaf"]
        if finished(folder, settings):
            log.info("cell %d/%d (%s) already finished in %s", number, len(job["cells"]), cell["leaf"], folder)
        else:
            todo.append(Task(number, cell["leaf"], settings, str(folder)))
    if min(width, len(todo)) > 1:
        Workers(min(width, len(todo)), common, len(job["cells"])).run(todo)
    else:
        from ftbench.train.cell import run_cell

        for task in todo:
            log.info("cell %d/%d: %s", task.number, len(job["cells"]), task.leaf)
            run_cell(task.settings, out_dir=task.folder, **common)
    for cell in job["cells"]:
        (out / cell["leaf"]).mkdir(parents=True, exist_ok=True)
        for name in CELL_FILES:
            os.replace(work / cell["leaf"] / name, out / cell["leaf"] / name)
        for name in KEPT_FILES:  # a transfer source's trained model (ftbench.train.transfer)
            if (work / cell["leaf"] / name).is_file():
                os.replace(work / cell["leaf"] / name, out / cell["leaf"] / name)
    shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Task:
    """A cell left to train: its number in the job, its leaf, its settings and the folder it trains into."""

    number: int
    leaf: str
    settings: dict
    folder: str


@dataclass
class Worker:
    """A worker process as the job sees it: ready once it records stop signals; the cell it trains."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    task: Task | None = None
    told: int | None = None  # the stop signal passed on to it
    closing: bool = False  # told to exit


class Workers:
    """``size`` worker processes (``spawn``: each a fresh interpreter, no state shared with the job) that train
    the cells they are sent, one at a time, with the ``common`` arguments of ``run_cell``.

    Stop signals: the job passes SIGTERM / SIGUSR1 on to every worker that trains a cell (Slurm may signal
    them too: twice is the same as once), sends no more cells, waits for the running ones to save their
    state and stop, and raises ``Preempted``. An error or a dead worker stops the sending too: the running
    cells finish (a finished cell stays in the checkpoints folder), then the first error is raised.
    """

    def __init__(self, size: int, common: dict, cells: int):
        self.size, self.common, self.cells = size, common, cells

    def run(self, todo: list[Task]) -> None:
        queue, pool = deque(todo), []
        stopped, errors = [], []
        context = multiprocessing.get_context("spawn")
        with StopRecorder() as stop:
            try:
                for number in range(self.size):
                    ours, theirs = context.Pipe()
                    process = context.Process(
                        target=work,
                        args=(theirs, self.common, logging.getLogger().level),
                        name=f"ftbench-cell-worker-{number}",
                    )
                    process.start()
                    theirs.close()
                    pool.append(Worker(process, ours))
                while pool:
                    go = stop.received is None and not stopped and not errors
                    for worker in pool:
                        self._send(worker, queue, go)
                        if stop.received is not None and worker.task is not None and worker.told != stop.received:
                            log.warning(
                                "%s: cell %s saves its state and stops",
                                signal.Signals(stop.received).name,
                                worker.task.leaf,
                            )
                            os.kill(worker.process.pid, stop.received)
                            worker.told = stop.received
                    ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool], POLL_SECONDS))
                    for worker in [w for w in pool if {w.conn, w.process.sentinel} & ready]:
                        if self._receive(worker, stopped, errors):
                            pool.remove(worker)
            finally:
                for worker in pool:  # left only when the job itself fails (or is interrupted)
                    worker.conn.close()
                    worker.process.terminate()
                for worker in pool:
                    worker.process.join()
        left = [task.leaf for task in queue]
        for leaf, err in errors[1:]:
            log.error("cell %s failed too: %s", leaf, err)
        if errors:
            raise errors[0][1]
        if stopped or (left and stop.received is not None):
            raise Preempted(
                f"{len(stopped)} cell(s) stopped with their state saved ({', '.join(stopped)}), {len(left)} not started"
            )
        if left:
            raise RuntimeError(f"cells {left} were not trained: the worker processes exited (see the log above)")

    def _send(self, worker: Worker, queue: deque, go: bool) -> None:
        """Give an idle ready worker the next cell, or tell it to exit when there is none or the job stops."""
        if not worker.ready or worker.task is not None or worker.closing:
            return
        task = queue.popleft() if go and queue else None
        try:
            worker.conn.send(task)
        except OSError:  # it died: its sentinel says so next
            if task is not None:
                queue.appendleft(task)
            return
        worker.task, worker.closing = task, task is None
        if task is not None:
            log.info("cell %d/%d: %s (worker %d)", task.number, self.cells, task.leaf, worker.process.pid)

    @staticmethod
    def _receive(worker: Worker, stopped: list[str], errors: list[tuple[str, BaseException]]) -> bool:
        """Read what a worker said; True when it has exited (a cell it was training is an error then)."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message == "ready":
                    worker.ready = True
                    continue
                if isinstance(message, Preempted):
                    stopped.append(worker.task.leaf)
                elif message is not None:
                    errors.append((worker.task.leaf, message))
                worker.task = None
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return False
        worker.process.join()
        if worker.task is not None:
            errors.append(
                (
                    worker.task.leaf,
                    RuntimeError(
                        f"cell {worker.task.leaf}: its worker process died (exit code {worker.process.exitcode}; "
                        "a negative code is the signal that killed it, e.g. -9 by the out-of-memory killer)"
                    ),
                )
            )
        return True


def work(conn: Connection, common: dict, level: int) -> None:
    """A worker process: trains the cells the job sends, one at a time, and answers each with None, or the
    exception it raised (``Preempted`` when a stop signal stopped it with its state saved).

    A stop signal that comes while no training handles it (the cell is loading its data, building its model)
    is recorded, and raised again once the cell's training has its own handler: the cell still saves its
    state and stops.
    """
    recorder = StopRecorder()
    recorder.then = lambda signum: threading.Thread(
        target=_pass_on, args=(signum, recorder.handle), daemon=True
    ).start()
    with recorder:
        logging.basicConfig(level=level, stream=sys.stderr)
        try:
            conn.send("ready")
            from ftbench.train.cell import run_cell

            while (task := conn.recv()) is not None:
                logging.basicConfig(
                    level=level,
                    stream=sys.stderr,
                    force=True,
                    format=f"%(asctime)s %(levelname)s %(name)s [{task.leaf}]: %(message)s",
                )
                try:
                    run_cell(task.settings, out_dir=task.folder, **common)
                    answer = None
                except Preempted as err:
                    log.warning("%s", err)
                    answer = err
                except Exception as err:
                    log.exception("cell %s failed", task.leaf)
                    answer = err
                conn.send(answer if _pickles(answer) else RuntimeError(f"{type(answer).__name__}: {answer}"))
        except (EOFError, OSError):  # the job has gone
            return


def _pickles(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False


def _pass_on(signum: int, handler) -> None:
    """Raise ``signum`` again in this process as soon as something other than ``handler`` (a cell's training)
    handles it."""
    while signal.getsignal(signum) == handler:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signum)
