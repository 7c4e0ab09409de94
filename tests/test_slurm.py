"""`snakemake --profile slurm` on a real single-node Slurm started on this machine.

Slurm comes from Debian packages (slurm-wlm, munge; `.ci/run` installs them, this test tries too when
run as root). The test writes /etc/slurm/slurm.conf (never over a configuration it did not write), starts
munged, slurmctld and slurmd, runs the reduced demo through the repository's Slurm profile with a CPU-only
override, and checks that the cells ran as Slurm jobs: full-data cells one job each, few-shot cells in
batches. Accounting is off, so jobs are traced in the controller's log and in squeue's history
(MinJobAge keeps finished jobs listed, which the plugin's `status_command: squeue` relies on).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT
from smk import DEMO, REDUCED, snakemake, write_config

pytestmark = pytest.mark.slow

CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by ftbench tests/test_slurm.py"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol")


def _sbin(tool: str) -> str | None:
    """Path of a Slurm/munge program (daemons live in /usr/sbin, which a non-login PATH may lack)."""
    return shutil.which(tool, path=f"{os.environ['PATH']}:/usr/sbin")


def _missing() -> list[str]:
    return [tool for tool in (*DAEMONS, *CLIENTS) if not _sbin(tool)]


def _install() -> str | None:
    """Install Slurm from Debian packages if needed; the reason it is unavailable, or None."""
    if not _missing():
        return None
    if not shutil.which("apt-get"):
        return f"Slurm is not installed ({', '.join(_missing())} missing) and there is no apt-get to install it"

    def apt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["apt-get", *args],
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )

    proc = apt("install", "-y", "-q", "slurm-wlm", "munge")
    if proc.returncode:  # stale package lists: refresh once
        apt("update", "-q")
        proc = apt("install", "-y", "-q", "slurm-wlm", "munge")
    if _missing():
        return f"apt-get could not install slurm-wlm and munge: {proc.stderr.strip()[-500:]}"
    return None


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _node() -> tuple[str, str]:
    """This machine's node name and CPU layout, as slurmd sees them (`slurmd -C`)."""
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    name = line.split()[0].removeprefix("NodeName=")
    cpus = " ".join(
        f
        for f in line.split()[1:]
        if f.split("=")[0] in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    )
    return name, cpus


def _slurm_conf(state: Path) -> str:
    # The node is addressed by 127.0.0.1 (no DNS needed) and trusted for its memory (config_overrides), so
    # the jobs' memory requests fit on a small machine too.
    host, cpus = _node()
    return f"""{MARK}
ClusterName=ftbench-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 {cpus} RealMemory=32000 State=UNKNOWN
PartitionName=local Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start_munged() -> int | None:
    """Start munged unless one answers already; its pid when this test started it."""
    if _ok("sh", "-c", "munge -n | unmunge"):
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():  # the Debian package makes one; a random key does as well on a single node
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(key, "munge", "munge")
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged")], check=True)
    _wait(lambda: _ok("sh", "-c", "munge -n | unmunge"), "munged")
    return int((run / "munged.pid").read_text())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm (partition `local`); stopped, and its config removed, afterwards."""
    if os.geteuid() != 0:
        pytest.skip("starting Slurm's daemons and writing /etc/slurm/slurm.conf needs root")
    reason = _install()
    if reason:
        pytest.skip(reason)
    if CONF.exists() and MARK not in CONF.read_text():
        pytest.skip(f"{CONF} exists and was not written by this test: not touching a real Slurm configuration")
    if _ok("scontrol", "ping") or _ok("pgrep", "-x", "slurmctld"):
        pytest.skip("a Slurm controller already runs on this machine")
    state = tmp_path_factory.mktemp("slurm")
    for sub in ("ctld", "d"):
        (state / sub).mkdir()
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(_slurm_conf(state))
    munged = _start_munged()
    try:
        subprocess.run([_sbin("slurmctld")], check=True)
        subprocess.run([_sbin("slurmd")], check=True)
        _wait(
            lambda: (
                subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
                in {"idle", "mixed"}
            ),
            "the Slurm node to become idle",
        )
        yield state
    finally:
        subprocess.run(["scontrol", "shutdown"], capture_output=True)
        for daemon in ("slurmd", "slurmctld"):
            pidfile = state / f"{daemon}.pid"
            if pidfile.exists():
                _stop(int(pidfile.read_text()))
        if munged:
            _stop(munged)
        CONF.unlink(missing_ok=True)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: not Path(f"/proc/{pid}").exists(), f"process {pid} to stop", timeout=30)
    except (ProcessLookupError, TimeoutError):
        pass


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    """The reduced demo through `--profile slurm`: CPU-only, few-shot training jobs in batches of 2."""
    tmp = tmp_path_factory.mktemp("slurm_run")
    work = tmp / "work"
    proc = snakemake(
        ROOT,
        work,
        "--profile",
        "slurm",
        "--configfile",
        str(DEMO),
        str(write_config(tmp / "reduced.yaml", REDUCED)),
        # the README's recipe for CPU-only partitions: no GPU, and --cores (>= training.threads) stacks a
        # batch's cells in series as the GPU limit does on GPU partitions
        "--set-resources",
        "train:gpu=0",
        "transfer:gpu=0",
        "--cores",
        "1",
        "--group-components",
        "fewshot_cells=2",
        "fewshot_splits=20",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        cwd=ROOT,  # `--profile slurm` is found in the repository root, as users run it
        # the partition through the profile's environment variable; none of the caller's other settings
        env={
            "FTBENCH_SLURM_PARTITION": "local",
            "FTBENCH_SLURM_ACCOUNT": "",
            "FTBENCH_SLURM_GPU_PARTITION": "",
            "FTBENCH_SLURM_GPU_MODEL": "",
        },
    )
    return {"work": work, "log": proc.stdout + proc.stderr, "ctld": (slurm / "slurmctld.log").read_text()}


def test_demo_outputs_via_slurm(slurm_run):
    results = slurm_run["work"] / "results"
    assert (results / "report" / "index.html").stat().st_size > 0
    cells = pl.read_parquet(results / "cells.parquet")
    assert cells.height == 8 and (cells["status"] == "ok").all()


def test_cells_ran_as_slurm_jobs(slurm_run):
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(\w+?)/", slurm_run["log"]))
    kinds = list(submitted.values())
    assert kinds.count("rule_train") == 2, kinds  # full-data training jobs (2 folds each): one Slurm job each
    assert kinds.count("group_fewshot_cells_train") == 1, kinds  # the 2 few-shot training jobs in one batch
    assert {"rule_dataset_table", "rule_folds", "rule_aggregate", "rule_report"} <= set(kinds)
    # the controller ran every one of them to a clean exit on the partition named in the environment
    completed = set(re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0", slurm_run["ctld"]))
    # started by the main scheduler ("Allocate ... Partition=local") or by backfill ("Started ... in local")
    started = {
        a or b
        for a, b in re.findall(
            r"Allocate JobId=(\d+) NodeList=\S+ #CPUs=\d+ Partition=local"
            r"|Started JobId=(\d+) in local on",
            slurm_run["ctld"],
        )
    }
    assert set(submitted) <= completed & started
    # a batch asks for the CPUs of one job and the summed wall time of its jobs (2 x 1 min)
    for job in (job for job, kind in submitted.items() if kind.startswith("group_fewshot_cells")):
        info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        assert "NumCPUs=1 " in info and "TimeLimit=00:02:00 " in info, info
    history = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i %T"], capture_output=True, text=True, check=True
    ).stdout
    states = dict(line.split() for line in history.splitlines())
    assert all(states.get(job) == "COMPLETED" for job in submitted), states
