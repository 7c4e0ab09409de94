"""What cells ask of a cluster, and the Slurm profile as Snakemake reads it (fast: no Slurm needed)."""

import os

import pytest
from conftest import ROOT

from ftbench.plan import cluster, grid


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("test_vit", "xs"),
        ("resnet18", "s"),
        ("dinov2_vits14", "s"),
        ("resnet50", "m"),
        ("densenet121", "m"),
        ("dinov2_vitb14", "m"),
        ("vgg19", "l"),
        ("dinov2_vitl14", "l"),
        ("vit_huge_patch14_224", "xl"),
    ],
)
def test_size_class_from_the_architecture_name(arch, size):
    assert cluster.size_class(arch) == size


def test_requests_grow_with_model_size_image_side_cells_and_attempt(demo_config):
    config = {
        **demo_config,
        "models": {
            "small": {"arch": "resnet18"},
            "large": {"arch": "dinov2_vitl14", "img_size": 224},
            "large_hires": {"arch": "dinov2_vitl14", "img_size": 448},
        },
    }
    job = {name: grid.Job("t", name, "lp", "full") for name in config["models"]}
    runtime = {name: cluster.runtime_min(config, j, 5) for name, j in job.items()}
    assert runtime["small"] < runtime["large"] < runtime["large_hires"]
    assert cluster.runtime_min(config, job["large"], 10) == 2 * runtime["large"]  # time for each of its cells
    assert cluster.runtime_min(config, job["large"], 5, candidates=3) == 3 * runtime["large"]  # each trains 3
    assert cluster.mem_mb(config, job["small"], 5) < cluster.mem_mb(config, job["large"], 5)
    # a retry asks for proportionally more, so a job killed for time or memory gets through
    assert cluster.runtime_min(config, job["large"], 5, attempt=3) == 3 * runtime["large"]
    assert cluster.mem_mb(config, job["large"], 5, attempt=2) == 2 * cluster.mem_mb(config, job["large"], 5)
    fewshot = grid.Job("t", "large", "lp", "k4")
    assert cluster.runtime_min(config, fewshot, 5) < runtime["large"]


def test_a_cost_projection_replaces_the_guesses_where_it_has_the_job(demo_config, tmp_path):
    projection = tmp_path / "cost_cells.csv"
    projection.write_text(
        "cell,seconds,source\n"
        "t/vit/lora/full/fold0,600,measured\nt/vit/lora/full/fold1,1200,job\n"
        "t/vit/fft/full/fold0,300,measured\nt/vit/fft/full/fold1,,\n"
    )
    config = {
        **demo_config,
        "models": {"vit": {"arch": "dinov2_vitl14"}},
        "cluster": {"runtimes": str(projection), "runtime_margin": 1.5},
    }
    lora, fft = grid.Job("t", "vit", "lora", "full"), grid.Job("t", "vit", "fft", "full")
    # 900 s a cell on average x 1.5 x 4 cells = 90 min; twice that on a retry
    assert cluster.runtime_min(config, lora, 4) == 90
    assert cluster.runtime_min(config, lora, 4, attempt=2) == 180
    # a job the projection could not estimate in full keeps the size-class guess, as does one it lacks
    guess = {**config, "cluster": {}}
    assert cluster.runtime_min(config, fft, 2) == cluster.runtime_min(guess, fft, 2) != 2 * 300 * 1.5 / 60
    lp = grid.Job("t", "vit", "lp", "full")
    assert cluster.runtime_min(config, lp, 2) == cluster.runtime_min(guess, lp, 2)


def test_a_job_with_concurrent_cells_asks_for_their_threads_and_memory_and_for_its_rounds_of_cells(demo_config):
    one = {
        **demo_config,
        "models": {"vit": {"arch": "dinov2_vitb14"}},
        "training": {**demo_config["training"], "threads": 2, "concurrent_cells": 1},
    }
    four = {**one, "training": {**one["training"], "concurrent_cells": 4}}
    fewshot = grid.Job("t", "vit", "lora", "k8")
    assert (cluster.threads(one, 25), cluster.threads(four, 25)) == (2, 8)
    assert cluster.mem_mb(four, fewshot, 25) == 4 * cluster.mem_mb(one, fewshot, 25)
    # 25 cells 4 at a time: 7 rounds, the last of one cell
    assert cluster.runtime_min(four, fewshot, 25) == cluster.runtime_min(one, fewshot, 7)
    assert cluster.runtime_min(four, fewshot, 25, attempt=2) == 2 * cluster.runtime_min(four, fewshot, 25)
    # a job of 2 cells runs them both at once: it asks for 2 cells' threads and memory, and one cell's time
    assert cluster.threads(four, 2) == 4 and cluster.mem_mb(four, fewshot, 2) == 2 * cluster.mem_mb(one, fewshot, 2)
    assert cluster.runtime_min(four, fewshot, 2) == cluster.runtime_min(one, fewshot, 1)


def test_a_projection_gives_the_time_of_a_round_of_concurrent_cells(demo_config, tmp_path):
    projection = tmp_path / "cost_cells.csv"
    projection.write_text(
        "cell,seconds,source\n"
        + "".join(f"t/vit/lora/k8/r{r}/fold{f},120,measured\n" for r in range(5) for f in range(5))
    )
    config = {
        **demo_config,
        "models": {"vit": {"arch": "dinov2_vitb14"}},
        "training": {**demo_config["training"], "concurrent_cells": 8},
        "cluster": {"runtimes": str(projection), "runtime_margin": 1.5},
    }
    # 25 cells 8 at a time: 4 rounds of 120 s (measured side by side) x 1.5 = 12 min
    assert cluster.runtime_min(config, grid.Job("t", "vit", "lora", "k8"), 25) == 12


def test_only_fewshot_jobs_are_batched():
    assert cluster.group(grid.Job("t", "m", "lp", "k4")) == cluster.FEWSHOT_GROUP
    assert cluster.group(grid.Job("t", "m", "lp", "full")) is None


def read_profile(monkeypatch, **environ) -> dict:
    """The Slurm profile as `snakemake --profile slurm` run from the repository root reads it."""
    from snakemake.cli import get_profile_dir
    from snakemake.profiles import ProfileConfigFileParser

    for name in [n for n in os.environ if n.startswith("FTBENCH_SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    _, path = get_profile_dir("slurm")
    with open(path) as stream:
        return ProfileConfigFileParser().parse(stream)


def test_profile_is_found_and_takes_account_and_partitions_from_the_environment(monkeypatch):
    profile = read_profile(
        monkeypatch,
        FTBENCH_SLURM_ACCOUNT="proj42",
        FTBENCH_SLURM_PARTITION="cpu",
        FTBENCH_SLURM_GPU_PARTITION="gpu",
        FTBENCH_SLURM_GPU_MODEL="a100",
    )
    assert profile["executor"] == "slurm"
    assert {"slurm_account=proj42", "slurm_partition=cpu"} <= set(profile["default-resources"])
    for rule in ("train", "transfer"):
        assert {f"{rule}:gpu=1", f"{rule}:gpu_model=a100", f"{rule}:slurm_partition=gpu"} <= set(
            profile["set-resources"]
        )
    # data, splits and report jobs ask for no GPU: only training and external validation (the same models) get one
    assert not any("gpu" in entry for entry in profile["default-resources"])
    assert all(entry.startswith(("train:", "transfer:")) for entry in profile["set-resources"])
    assert profile["set-resource-scopes"] == ["gpu=local"]  # one GPU per submitted job, not for the workflow


def test_profile_without_environment_leaves_account_and_partition_to_slurm(monkeypatch):
    profile = read_profile(monkeypatch)
    assert not any(entry.startswith(("slurm_account", "slurm_partition")) for entry in profile["default-resources"])
    assert profile["set-resources"] == ["train:gpu=1", "train:slurm_extra='--signal=USR1@300'", "transfer:gpu=1"]
    assert profile["slurm-requeue"] == "True"  # preempted jobs come back, and resume from their saved state
    assert profile["keep-going"] == "True" and int(profile["retries"]) >= 1
