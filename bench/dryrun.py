"""Dry-run time and Slurm job count of the default config's full grid (the protocol benchmark).

    python bench/dryrun.py                      # config.yaml
    python bench/dryrun.py --configfile X.yaml  # config.yaml overridden by X.yaml

Plans the whole grid in an empty working directory (nothing is run) and prints:
- the wall and CPU time of `snakemake -n --quiet` (parse + DAG + job stats), without and with the Slurm
  profile (slurm/), and of a plain `snakemake -n` that lists every job, as a user runs them;
- the jobs of the plan by rule, and the Slurm jobs they become with the profile's grouping, next to the
  count without grouping. Local rules and the target rule `all` run in the Snakemake process: not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from record import record

ROOT = Path(__file__).resolve().parents[1]


def timed_dry_run(workdir: Path, *args: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `snakemake -n ...` in a fresh interpreter, as a user runs it; CPU time does not
    depend on what else the machine runs."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n", *args]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def planned_submissions(workdir: Path, *args: str) -> tuple[Counter, Counter, int]:
    """Jobs of the plan by rule, Slurm submissions by rule or group, and the submissions without grouping,
    of a dry run with the Slurm profile.

    Runs Snakemake in this process and records what its dry-run executor is handed: the same jobs and
    group jobs the Slurm executor would submit.
    """
    from snakemake import cli
    from snakemake.executors import dryrun

    jobs, submitted = Counter(), Counter()
    ungrouped = 0
    run_job = dryrun.Executor.run_job

    def record(executor, job):
        nonlocal ungrouped
        if job.is_group():  # grouped rules are never local
            jobs.update(member.rule.name for member in job.jobs)
            submitted[f"group {job.name}"] += 1
            ungrouped += len(job.jobs)
        else:
            jobs[job.rule.name] += 1
            if not (job.rule.norun or job.rule.name in executor.workflow._localrules):
                submitted[job.rule.name] += 1
                ungrouped += 1
        run_job(executor, job)

    dryrun.Executor.run_job = record
    # `--quiet all`, unlike a bare `--quiet`, still hands every job to the executor (silently)
    argv = [
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--profile",
        str(ROOT / "slurm"),
        "-n",
        "--quiet",
        "all",
        *args,
    ]
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            cli.main(argv)
    except SystemExit as exit_:
        if exit_.code:
            raise RuntimeError(f"snakemake {' '.join(argv)} failed ({exit_.code}):\n{log.getvalue()[-3000:]}") from None
    finally:
        dryrun.Executor.run_job = run_job
    return jobs, submitted, ungrouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="*", default=[], help="configs on top of config.yaml")
    extra = parser.parse_args().configfile
    config_args = ["--configfile", *extra] if extra else []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        quiet = timed_dry_run(workdir, "--quiet", *config_args)
        profiled = timed_dry_run(workdir, "--quiet", "--profile", "slurm", *config_args)
        listed = timed_dry_run(workdir, *config_args)
        start = time.perf_counter()
        jobs, submitted, ungrouped = planned_submissions(workdir, *config_args)
        scheduled = time.perf_counter() - start

    print(f"config: config.yaml {' '.join(extra)}".rstrip())
    print(f"jobs in the plan: {sum(jobs.values())}  ({', '.join(f'{r} {n}' for r, n in jobs.most_common())})")
    print(
        f"Slurm jobs with the profile's grouping: {sum(submitted.values())}  "
        f"({', '.join(f'{k} {n}' for k, n in submitted.most_common())})"
    )
    print(
        f"Slurm jobs without grouping: {ungrouped}  "
        f"(grouping submits {ungrouped / sum(submitted.values()):.1f}x fewer jobs)"
    )
    n = sum(jobs.values())
    print(
        f"`snakemake -n --quiet` (parse, DAG, job stats): {quiet[0]:.1f} s wall, {quiet[1]:.1f} s CPU "
        f"({1000 * quiet[1] / n:.2f} ms CPU per job)"
    )
    print(
        f"  with --profile slurm (+ grouping): {profiled[0]:.1f} s wall, {profiled[1]:.1f} s CPU "
        f"(x{profiled[1] / quiet[1]:.2f} CPU)"
    )
    print(
        f"  `snakemake -n` listing every job: {listed[0]:.1f} s wall, {listed[1]:.1f} s CPU "
        f"(x{listed[1] / quiet[1]:.2f} CPU)"
    )
    print(f"  in-process dry run scheduling every job (--profile slurm, the count above): {scheduled:.1f} s wall")
    record(
        "dryrun" + "".join(f"_{Path(c).stem}" for c in extra),
        {
            "jobs": n,
            "jobs_by_rule": dict(jobs),
            "slurm_jobs": sum(submitted.values()),
            "slurm_jobs_ungrouped": ungrouped,
            "quiet_wall_s": quiet[0],
            "quiet_cpu_s": quiet[1],
            "profile_cpu_s": profiled[1],
            "listed_cpu_s": listed[1],
        },
    )


if __name__ == "__main__":
    main()
