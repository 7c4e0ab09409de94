"""Every strategy learns the strongly separable synthetic task: MCC >= 0.5 on held-out patients.

A cell of each (strategy, tiny model) pair where the strategy applies, 15 epochs on CPU, the backbone at
lr 1e-3 and the head at 1e-2 (biases, scales and prompts of a random-weight backbone wreck it at higher
rates). The ResNet loads a "pretrained" file of its random weights in which every BatchNorm weight is 1:
timm starts the last BatchNorm of each residual branch at weight 0, and a strategy that freezes it (all
but FFT and the schedules) would otherwise leave every branch, and every adapter inside it, dead.
"""

import json

import pytest
import torch
from conftest import cell_settings

from ftbench.models import backbones, strategies, strategy_kinds, weights
from ftbench.models.zoo import resolve
from ftbench.train.cell import run_cell

pytestmark = pytest.mark.slow

SPEC = {  # strategy settings for the tiny models, beyond the common learning rates
    "lp_ft": {"lp_epochs": 3, "lp_lr": 1e-2, "head_lr": 1e-3},
    "gradual_unfreezing": {"unfreeze_every": 1},
    "vpt": {"prompt_tokens": 4},
    "vera": {"rank": 64},
}
CNN_SPEC = {  # peft's BOFT multiplies dense (C*k*k)^2 butterfly matrices every step: with every conv of
    "boft": {"target_modules": [r"layer[12]\..*conv\d"]},  # the ResNet, this cell takes ~90 s on CPU
}
PAIRS = [
    (k, a)
    for k in sorted(strategies.STRATEGIES)
    for a in ("test_vit", "test_resnet")
    if not strategy_kinds.not_applicable(k, resolve(a))
]


@pytest.fixture(scope="module")
def live_resnet(tmp_path_factory) -> str:
    """test_resnet's random weights with every BatchNorm weight at 1, as a local weight file."""
    from safetensors.torch import save_file

    backbone = backbones.build(resolve("test_resnet", img_size=48)).backbone
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet_live.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, path)
    loaded = weights.build("test_resnet", resolve("test_resnet", img_size=48), path)  # as run_cell loads it
    assert loaded.backbone.layer1[0].bn2.weight.eq(1).all()  # timm's zero-initialised branch end is live
    return str(path)


@pytest.mark.parametrize("kind, arch", PAIRS)
def test_every_strategy_learns_the_synthetic_signal(kind, arch, synthetic_data, live_resnet, tmp_path):
    spec = {"head_lr": 1e-2} | SPEC.get(kind, {}) | (CNN_SPEC.get(kind, {}) if arch == "test_resnet" else {})
    settings = cell_settings(arch, kind, 1e-3, strategy=spec, training={"patience": 15})
    run = run_cell(
        settings,
        synthetic_data["task_path"],
        synthetic_data["split"],
        synthetic_data["store"],
        str(tmp_path),
        weights_path=live_resnet if arch == "test_resnet" else None,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["mcc"] >= (0.8 if kind == "fft" else 0.5), metrics
    # run.json: what trains at some point over all parameters of the adapted model
    assert run["trainable_fraction"] == pytest.approx(run["trainable_params"] / run["total_params"])
    full = kind in {"fft", "lp_ft", "gradual_unfreezing", "l2_sp", "auto_rgn", "llrd"}
    assert (run["trainable_fraction"] == 1) == full and run["trainable_fraction"] > 0
