"""Rerun semantics: after a run, Snakemake plans exactly the training jobs whose definition changed.

The workflow is copied to a temporary folder so that its sources can be edited like a developer would.
"""

import re
import sys
from pathlib import Path

import pytest
from smk import DEMO, REDUCED, copy_workflow, planned, snakemake, write_config

pytestmark = pytest.mark.slow

# training jobs (every fold, and few-shot repetition, of a regime group) of the reduced demo
JOBS = {
    f"results/cells/synthetic_outcome/{model}/{strategy}/{group}"
    for model in ["tiny_resnet"]
    for strategy in ["lp", "bitfit"]
    for group in ["full", "k4"]
}
# the demo's external validation: each full-data job's kept models scored on synthetic_external
PAIR = "results/external/cells/synthetic_outcome@synthetic_external"
TRANSFERS = {f"{PAIR}/tiny_resnet"}  # one job per model scores all its strategies
DOWNSTREAM = {
    "aggregate": {"results/cells.parquet"},
    "stats": {"results/stats/friedman.csv"},
    "aggregate_external": {"results/external/cells.parquet"},
    "stats_external": {"results/external/stats/friedman.csv"},
    "report": {"results/report/index.html"},
    "all": {""},
}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> dict:
    """A copy of the workflow and a finished run of the reduced demo."""
    tmp = tmp_path_factory.mktemp("rerun")
    repo = copy_workflow(tmp / "repo")
    configs = ["--configfile", str(DEMO), str(write_config(tmp / "reduced.yaml", REDUCED))]
    work = tmp / "work"
    snakemake(repo, work, *configs, "--cores", "2")
    return {"tmp": tmp, "repo": repo, "work": work, "configs": configs}


def plan(done: dict, *extra_configs: Path, args: tuple[str, ...] = (), python: str = sys.executable) -> dict:
    """The dry-run plan (rule -> jobs) with the run's configs, extra ones and extra Snakemake arguments."""
    configs = [*done["configs"], *map(str, extra_configs)]
    return planned(snakemake(done["repo"], done["work"], *configs, "-n", *args, python=python))


def test_nothing_to_do_after_the_run(done):
    assert plan(done) == {}


def test_changing_one_learning_rate_reruns_only_that_strategy(done):
    lr = write_config(done["tmp"] / "lr.yaml", {"strategies": {"lp": {"kind": "lp", "lr": 0.05}}})
    jobs = plan(done, lr)
    assert jobs.pop("train") == {job for job in JOBS if "/lp/" in job}
    assert jobs.pop("transfer") == TRANSFERS  # the model's other strategy is rescored too: forward passes only
    assert jobs == DOWNSTREAM


def test_adding_a_model_runs_only_its_cells(done):
    models = write_config(done["tmp"] / "models.yaml", {"benchmark": {"models": ["tiny_resnet", "tiny_vit"]}})
    jobs = plan(done, models)
    assert jobs.pop("train") == {job.replace("tiny_resnet", "tiny_vit") for job in JOBS}
    assert jobs.pop("transfer") == {job.replace("tiny_resnet", "tiny_vit") for job in TRANSFERS}
    # its linear probes need its embedding cache, of the source and of the target; the lists of expected cells are
    # inputs of the reports: they are rewritten, nothing else upstream reruns
    assert jobs == {
        **DOWNSTREAM,
        "embeddings": {f"results/embeddings/{d}/tiny_vit.npy" for d in ("synthetic", "synthetic_external")},
        "grid_list": {"results/grid.txt"},
        "external_grid": {"results/external/grid.txt"},
    }


def test_adding_a_target_scores_the_kept_models_and_trains_nothing(done):
    third = {
        "datasets": {"third": {"adapter": "synthetic", "synthetic": {"patients": 30, "side": 64, "seed": 2}}},
        "tasks": {
            "third_outcome": {"dataset": "third", "label": "outcome", "positive": ["poor"], "negative": ["good"]}
        },
        "regimes": {"transfer": {"synthetic_outcome": ["synthetic_external", "third_outcome"]}},
    }
    jobs = plan(done, write_config(done["tmp"] / "target.yaml", third))
    assert "train" not in jobs
    assert jobs.pop("transfer") == {job.replace("synthetic_external", "third_outcome") for job in TRANSFERS}
    assert jobs == {
        **{key: value for key, value in DOWNSTREAM.items() if key not in ("aggregate", "stats")},
        "dataset_table": {"results/data/third/table.parquet"},
        "image_store": {"results/data/third/images_64.npy"},
        "task_table": {"results/tasks/third_outcome/images.parquet"},
        "embeddings": {"results/embeddings/third/tiny_resnet.npy"},  # the linear probe's head reads the cache
        "external_grid": {"results/external/grid.txt"},
    }


def test_a_task_that_stops_being_a_source_reruns_its_full_data_jobs_once(done):
    """Its full-data cells kept their models; without the key their settings change (docs/reruns.md says so)."""
    jobs = plan(done, write_config(done["tmp"] / "no_transfer.yaml", {"regimes": {"transfer": None}}))
    assert jobs.pop("train") == {job for job in JOBS if job.endswith("/full")}
    assert jobs == {key: value for key, value in DOWNSTREAM.items() if "external" not in key}


def test_refactoring_code_or_changing_the_interpreter_reruns_nothing(done):
    for module in ("train/loop.py", "plan/grid.py", "models/strategies.py"):
        path = done["repo"] / "src" / "ftbench" / module
        path.write_text(path.read_text() + "\n# a refactor that keeps results bit-identical\n")
    assert plan(done) == {}
    # {FTBENCH} in the shell commands holds the interpreter path; Snakemake's code trigger compares the
    # rule's command template, not the formatted command, so another path to the same Python changes nothing
    other = next(
        (
            str(p)
            for p in Path(sys.executable).parent.glob("python3*")
            if re.fullmatch(r"python3(\.\d+)?", p.name) and str(p) != sys.executable
        ),
        None,
    )
    if other:
        assert plan(done, python=other) == {}


def test_forcing_one_job(done):
    job = sorted(JOBS)[0]
    jobs = plan(done, args=("--forcerun", job))
    assert jobs.pop("train") == {job}
    assert jobs.pop("transfer") == TRANSFERS
    assert jobs == DOWNSTREAM


def test_bumping_the_training_version_reruns_every_cell(done):
    init = done["repo"] / "src" / "ftbench" / "__init__.py"
    original = init.read_text()
    bumped, n = re.subn(r"TRAINING_VERSION = (\d+)", lambda m: f"TRAINING_VERSION = {int(m[1]) + 1}", original)
    assert n == 1
    init.write_text(bumped)
    try:
        jobs = plan(done)
    finally:
        init.write_text(original)
    assert jobs.pop("train") == JOBS
    assert jobs.pop("transfer") == TRANSFERS
    assert jobs == DOWNSTREAM
