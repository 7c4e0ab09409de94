"""What the across-task tests of a grid can conclude, known before anything runs.

Torch- and scipy-free on purpose: the Snakefile prints it beside the resolved grid at planning. The unit across
tasks is the **cohort**: tasks that share patients (Cohen's three tasks, NY-SBU's two) are one independent group
of patients, so they count as one block (docs/methods.md). With N cohorts the exact Wilcoxon signed-rank test
cannot give a two-sided p below 2 / 2^N, and Holm's correction multiplies the smallest p by the number of
comparisons: k(k - 1)/2 pairs of k strategies, or k - 1 against a named control (``report.control``; Demšar 2006,
§3.2.2). If that product is not below alpha, no pairwise across-task test can reject, whatever the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT_UP_TO = 50  # scipy.stats.wilcoxon's method="auto" is exact up to 50 pairs (no zeros or ties), normal beyond


def cohort_of(task: dict) -> str:
    """The independent group of patients a task belongs to: its ``cohort`` key, else its dataset's name."""
    return task.get("cohort") or task["dataset"]


def cohorts(config: dict) -> dict[str, str]:
    """The cohort of every selected task, in selection order."""
    return {name: cohort_of(config["tasks"][name]) for name in config["benchmark"]["tasks"]}


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value scipy's signed-rank test gives with ``n`` untied pairs (all of one sign):
    2 / 2^n where it is exact, else its normal approximation (no continuity correction, as scipy's default)."""
    if n <= 0:
        return math.nan
    if n <= EXACT_UP_TO:
        return min(1.0, 2.0 / 2**n)
    mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return math.erfc(mean / sd / math.sqrt(2))


def comparisons(strategies: int, control: bool) -> int:
    """How many pairwise across-task tests Holm corrects over: k - 1 against a control, else k(k - 1)/2."""
    return strategies - 1 if control else strategies * (strategies - 1) // 2


@dataclass(frozen=True)
class Reach:
    """The smallest Holm-adjusted Wilcoxon p that ``blocks`` cohorts and ``comparisons`` tests can produce."""

    blocks: int
    comparisons: int
    alpha: float

    @property
    def smallest_p(self) -> float:
        if self.blocks <= 0 or self.comparisons <= 0:
            return math.nan
        return min(1.0, self.comparisons * smallest_wilcoxon_p(self.blocks))

    @property
    def can_reject(self) -> bool:
        return self.smallest_p < self.alpha

    def sentence(self, across: str = "across-task") -> str:
        """One line: the comparisons, the floor of their adjusted p, and whether any can reject (``across``: what the
        blocks are, in words)."""
        if self.comparisons <= 0:
            return "one strategy: nothing to compare across tasks"
        tests = f"{self.comparisons} pairwise Wilcoxon test{'s' if self.comparisons > 1 else ''} with Holm"
        floor = f"smallest adjusted p {self.smallest_p:.3g}"
        if self.can_reject:
            return f"{tests}: {floor} < alpha {self.alpha:g}, a pairwise test can reject"
        return (
            f"{tests}: {floor} ≥ alpha {self.alpha:g}: no pairwise {across} test can reject "
            f"(the Bayesian hierarchical comparison is the {across} result)"
        )


def design_line(config: dict) -> str:
    """The planning line about across-task inference: tasks, cohorts, and what the pairwise tests can reach."""
    by_task = cohorts(config)
    blocks = len(set(by_task.values()))
    report = config.get("report", {})
    control = report.get("control")
    k = len(config["benchmark"]["strategies"])
    reach = Reach(blocks, comparisons(k, bool(control)), report.get("alpha", 0.05))
    against = f" against the control {control}" if control else ""
    return (
        f"ftbench: across tasks: {len(by_task)} task(s) in {blocks} cohort(s) of patients (the independent blocks); "
        f"{k} strategies{against}: {reach.sentence()}"
    )
