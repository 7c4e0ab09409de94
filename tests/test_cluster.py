"""What cells ask of a cluster, and the Slurm profile as Snakemake reads it (fast: no Slurm needed)."""

import os

import pytest
from conftest import ROOT

from ftbench import cluster, grid


@pytest.mark.parametrize(("arch", "size"), [
    ("test_vit", "xs"), ("resnet18", "s"), ("dinov2_vits14", "s"), ("resnet50", "m"), ("densenet121", "m"),
    ("dinov2_vitb14", "m"), ("vgg19", "l"), ("dinov2_vitl14", "l"), ("vit_huge_patch14_224", "xl"),
])
def test_size_class_from_the_architecture_name(arch, size):
    assert cluster.size_class(arch) == size


def test_requests_grow_with_model_size_image_side_and_attempt(demo_config):
    config = {**demo_config, "models": {
        "small": {"arch": "resnet18"}, "large": {"arch": "dinov2_vitl14", "img_size": 224},
        "large_hires": {"arch": "dinov2_vitl14", "img_size": 448}}}
    cell = {name: grid.Cell("t", name, "lp", "full", 0) for name in config["models"]}
    runtime = {name: cluster.runtime_min(config, c) for name, c in cell.items()}
    assert runtime["small"] < runtime["large"] < runtime["large_hires"]
    assert cluster.mem_mb(config, cell["small"]) < cluster.mem_mb(config, cell["large"])
    # a retry asks for proportionally more, so a cell killed for time or memory gets through
    assert cluster.runtime_min(config, cell["large"], attempt=3) == 3 * runtime["large"]
    assert cluster.mem_mb(config, cell["large"], attempt=2) == 2 * cluster.mem_mb(config, cell["large"])
    fewshot = grid.Cell("t", "large", "lp", "k4r0", 0)
    assert cluster.runtime_min(config, fewshot) < runtime["large"]


def test_only_fewshot_cells_are_batched():
    assert cluster.group(grid.Cell("t", "m", "lp", "k4r0", 0)) == cluster.FEWSHOT_GROUP
    assert cluster.group(grid.Cell("t", "m", "lp", "full", 0)) is None


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
    profile = read_profile(monkeypatch, FTBENCH_SLURM_ACCOUNT="proj42", FTBENCH_SLURM_PARTITION="cpu",
                           FTBENCH_SLURM_GPU_PARTITION="gpu", FTBENCH_SLURM_GPU_MODEL="a100")
    assert profile["executor"] == "slurm"
    assert {"slurm_account=proj42", "slurm_partition=cpu"} <= set(profile["default-resources"])
    assert {"train:gpu=1", "train:gpu_model=a100", "train:slurm_partition=gpu"} <= set(profile["set-resources"])
    # data, splits and report jobs ask for no GPU: only the training rule gets one
    assert not any("gpu" in entry for entry in profile["default-resources"])
    assert all(entry.startswith("train:") for entry in profile["set-resources"])
    assert profile["set-resource-scopes"] == ["gpu=local"]  # one GPU per submitted job, not for the workflow


def test_profile_without_environment_leaves_account_and_partition_to_slurm(monkeypatch):
    profile = read_profile(monkeypatch)
    assert not any(entry.startswith(("slurm_account", "slurm_partition")) for entry in profile["default-resources"])
    assert profile["set-resources"] == ["train:gpu=1"]
    assert profile["keep-going"] == "True" and int(profile["retries"]) >= 1
