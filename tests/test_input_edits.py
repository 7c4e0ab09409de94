"""An edited input reruns what depends on it, and nothing else (issue 24, items 1 and 2).

A dataset given by a local ``path:`` is read where it lies: its table file is an input of the dataset stage,
and its images are fingerprinted by size and modification time (``ftbench.data.sources``).
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smk import DEMO, copy_workflow, planned, snakemake, write_config

from ftbench.data import sources

# ---- the fingerprint, without Snakemake


def _png(path: Path, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(path)


def _manifest(folder: Path, patients: int = 16, side: int = 32) -> Path:
    """A manifest of one PNG per patient, half of them 'poor' (the class carries a brightness shift)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["file,patient_id,outcome"]
    for p in range(patients):
        _png(folder / "img" / f"p{p}.png", side, p)
        lines.append(f"img/p{p}.png,p{p},{'poor' if p % 2 else 'good'}")
    csv = folder / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _replace_keeping_mtime(path: Path, side: int) -> None:
    """Overwrite an image with other pixels and give it back its old modification time (cp -p, rsync -t)."""
    before = path.stat()
    _png(path, side, 999)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_fingerprint_sees_a_replaced_added_or_missing_image(tmp_path):
    csv = _manifest(tmp_path, patients=4)
    spec = {"adapter": "manifest", "path": str(csv)}
    first = sources.fingerprint("mine", spec)
    assert first.startswith("4 image files") and sources.fingerprint("mine", spec) == first
    _replace_keeping_mtime(tmp_path / "img" / "p1.png", 40)
    second = sources.fingerprint("mine", spec)
    assert second != first
    (tmp_path / "img" / "p2.png").unlink()
    assert sources.fingerprint("mine", spec) not in (first, second)
    csv.write_text(csv.read_text() + "img/p9.png,p9,good\n")
    assert sources.fingerprint("mine", spec).startswith("5 image files")


def test_a_table_that_cannot_be_read_gives_its_error_not_a_crash(tmp_path):
    spec = {"adapter": "manifest", "path": str(tmp_path / "absent.csv")}
    assert sources.fingerprint("mine", spec).startswith("unlisted: FileNotFoundError")
    assert sources.tables(spec) == []  # the dataset job reports it, with the adapter's advice


def test_a_cohen_checkout_updated_by_git_pull(cohen_sample, tmp_path):
    """metadata.csv is an input; an image the pull replaced changes the fingerprint."""
    checkout = tmp_path / "covid-chestxray-dataset"
    shutil.copytree(cohen_sample, checkout)
    spec = {"adapter": "cohen", "path": str(checkout)}
    assert sources.tables(spec) == [str(checkout / "metadata.csv")]
    first = sources.fingerprint("cohen", spec)
    assert first.startswith("101 image files")
    image = sorted((checkout / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert sources.fingerprint("cohen", spec) != first


def test_generated_and_downloaded_datasets_have_no_local_source():
    """The demo's and the default config's dataset jobs keep their inputs: their finished results stay done."""
    assert sources.local({"adapter": "synthetic", "synthetic": {}}) is None
    assert sources.local({"adapter": "cohen", "url": "https://example.org/x.zip"}) is None
    assert sources.tables({"adapter": "tcia", "collection": "COVID-19-NY-SBU"}) == []


# ---- the workflow: a finished run of a tiny manifest benchmark, then dry runs after each edit

DOWNSTREAM = {
    *(
        "dataset_table",
        "image_store",
        "task_table",
        "folds",
        "embeddings",
        "train",
        "aggregate",
        "stats",
        "transfer",
        "aggregate_external",
        "stats_external",
        "report",
        "all",
    )
}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> dict:
    """A copy of the workflow and a finished run: 16 patients, one model, linear probing, 2 folds, full data, its
    models validated externally on a second manifest dataset of 8 patients (another hospital)."""
    tmp = tmp_path_factory.mktemp("inputedits")
    repo = copy_workflow(tmp / "repo")
    csv, theirs = _manifest(tmp / "data"), _manifest(tmp / "theirs", patients=8)
    outcome = {"label": "outcome", "positive": ["poor"], "negative": ["good"]}
    config = {
        "benchmark": {"tasks": ["mine_outcome"], "models": ["tiny_resnet"], "strategies": ["lp"]},
        "datasets": {
            "mine": {"adapter": "manifest", "path": str(csv)},
            "theirs": {"adapter": "manifest", "path": str(theirs)},
        },
        "tasks": {"mine_outcome": {"dataset": "mine", **outcome}, "theirs_outcome": {"dataset": "theirs", **outcome}},
        "models": {"tiny_resnet": {"arch": "test_resnet", "img_size": 32, "family": "cnn"}},
        "regimes": {"fewshot": None, "transfer": {"mine_outcome": ["theirs_outcome"]}},
        "validation": {"folds": 2},
        "training": {"max_epochs": 2, "patience": 1},
        "report": {"hierarchical": False},
    }
    configs = ["--configfile", str(DEMO), str(write_config(tmp / "mine.yaml", config))]
    work = tmp / "work"
    snakemake(repo, work, *configs, "--cores", "2")
    return {"repo": repo, "work": work, "configs": configs, "csv": csv, "theirs": theirs}


def _plan(done: dict) -> dict[str, set[str]]:
    return planned(snakemake(done["repo"], done["work"], *done["configs"], "-n"))


@pytest.mark.slow
def test_an_untouched_manifest_reruns_nothing(done):
    assert _plan(done) == {}


@pytest.mark.slow
def test_an_edited_manifest_reruns_the_dataset_and_all_that_follows(done):
    csv = done["csv"]
    original, stat = csv.read_bytes(), csv.stat()
    try:
        csv.write_text(original.decode().replace("img/p1.png,p1,poor", "img/p1.png,p1,good"))  # one label flipped
        jobs = _plan(done)
        assert set(jobs) == DOWNSTREAM  # the images did not change: their fingerprint does not rerun
        assert jobs["dataset_table"] == {"results/data/mine/table.parquet"}
        assert jobs["task_table"] == {"results/tasks/mine_outcome/images.parquet"}
    finally:
        csv.write_bytes(original)
        os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _plan(done) == {}


@pytest.mark.slow
def test_an_edited_target_manifest_rescores_the_kept_models_and_trains_nothing(done):
    """The external cohort's table is an input of the transfer jobs only: the source's cells stay."""
    csv = done["theirs"]
    original, stat = csv.read_bytes(), csv.stat()
    try:
        csv.write_text(original.decode().replace("img/p1.png,p1,poor", "img/p1.png,p1,good"))
        jobs = _plan(done)
        assert jobs["transfer"] == {"results/external/cells/mine_outcome@theirs_outcome/tiny_resnet"}
        assert jobs["task_table"] == {"results/tasks/theirs_outcome/images.parquet"}
        assert set(jobs) == DOWNSTREAM - {"folds", "train", "aggregate", "stats"}
    finally:
        csv.write_bytes(original)
        os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _plan(done) == {}


@pytest.mark.slow
def test_an_image_replaced_in_place_reruns_the_dataset_and_all_that_follows(done):
    """Overwritten with its old modification time: only the fingerprint can see it (item 2). Last of the module:
    the image stays replaced."""
    _replace_keeping_mtime(done["csv"].parent / "img" / "p3.png", 36)
    jobs = _plan(done)
    assert jobs.pop("source_files") == {"results/data/mine/source_files.txt"}
    assert set(jobs) == DOWNSTREAM
