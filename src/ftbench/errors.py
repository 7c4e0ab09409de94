"""Exceptions the CLI maps to exit codes (torch-free, so the CLI imports them without importing torch)."""


class Preempted(RuntimeError):
    """A stop signal arrived (Slurm's time-limit warning, preemption): the cell's state is saved, rerun it."""
