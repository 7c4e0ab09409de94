"""The signals that stop a training job (torch-free: a job's parent process and its workers use them before
torch is imported).

SIGUSR1 (what the Slurm profile asks for some minutes before the time limit) lets a cell's current epoch finish
and be saved; SIGTERM (preemption, the limit itself) stops it at the next batch. Either way the cell resumes
later from its last saved epoch (``ftbench.train.loop``), and a job passes them on to the cells it trains
(``ftbench.train.job``).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRecorder:
    """Records the last of SIGTERM / SIGUSR1 a process receives, calling ``then(signum)`` on each, instead of
    dying of it (their default action)."""

    def __init__(self, then: Callable[[int], None] = lambda signum: None):
        self.received: int | None = None
        self.then = then

    def __enter__(self) -> StopRecorder:
        self.previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        self.received = signum
        self.then(signum)
