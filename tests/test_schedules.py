"""Strategies that act during training: L2-SP's penalty, LP-FT's phases, gradual unfreezing, Auto-RGN's
learning rates, layer-wise decay, AdaLoRA's rank budget, and fit() calling all of it."""

import math
import os
import signal

import polars as pl
import pytest
import torch

from ftbench.errors import Preempted
from ftbench.models import backbones, blocks, inputs, strategies
from ftbench.models.zoo import resolve
from ftbench.train.loop import Checkpoint, Part, fit

TRAINING = {"lr": 1e-3, "weight_decay": 0.0}


def _setup(arch, spec, training=TRAINING):
    entry = resolve(arch, img_size=32)
    model = backbones.build(entry)
    plan = strategies.apply(model, entry, spec, training)
    return model, plan, torch.optim.AdamW(plan.param_groups, weight_decay=training["weight_decay"])


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _step(model, plan, optimizer, n=8):
    x, y = torch.randn(n, 3, 32, 32), torch.arange(n) % 2
    loss = torch.nn.functional.cross_entropy(model(x), y) + (plan.penalty() if plan.penalty else 0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_l2_sp_penalty_is_zero_at_the_start_and_grows_with_distance(arch):
    torch.manual_seed(0)
    model, plan, optimizer = _setup(arch, {"kind": "l2_sp", "sp_alpha": 0.1, "sp_beta": 0.05})
    assert plan.penalty().item() == 0.0
    _step(model, plan, optimizer)
    first = plan.penalty().item()
    assert first > 0
    start = backbones.build(resolve(arch, img_size=32)).backbone  # the same fixed-seed initialisation
    with torch.no_grad():
        delta = sum((p - q).pow(2).sum() for p, q in zip(model.backbone.parameters(), start.parameters()))
    assert first == pytest.approx(0.1 / 2 * delta.item(), rel=1e-4)  # alpha/2 * ||w - w0||^2 over the backbone
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {"backbone": 0.0, "head": 0.05}  # no pull to zero for the backbone; plain L2 on the head


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_lp_ft_probes_the_head_then_fine_tunes_everything(arch):
    model, plan, optimizer = _setup(
        arch, {"kind": "lp_ft", "lp_epochs": 2, "lp_lr": 0.05}, {"lr": 1e-4, "weight_decay": 0.0}
    )
    head_lr = lambda: next(g["lr"] for g in optimizer.param_groups if g["name"] == "head")  # noqa: E731
    for epoch in (0, 1):
        assert plan.on_epoch(optimizer, epoch) is False
        assert _trainable(model) == {"head.weight", "head.bias"} and head_lr() == 0.05
    assert plan.on_epoch(optimizer, 2) is True  # phase 2 starts: fit() restarts patience
    assert _trainable(model) == {n for n, _ in model.named_parameters()} and head_lr() == 1e-4
    assert plan.on_epoch(optimizer, 3) is False
    head = model.head.weight.detach().clone()
    _step(model, plan, optimizer)
    assert not torch.equal(model.head.weight, head)


@pytest.mark.parametrize(
    "arch, order",
    [
        ("test_vit", [f"blocks.{i}" for i in range(5, -1, -1)] + ["stem"]),
        ("test_resnet", ["layer4", "layer3", "layer2", "layer1", "stem"]),
    ],
)
def test_gradual_unfreezing_opens_one_block_from_the_top_on_schedule(arch, order):
    model, plan, optimizer = _setup(arch, {"kind": "gradual_unfreezing", "unfreeze_every": 2})
    stack = {b.name: {f"backbone.{n}" for n, _ in b.params} for b in blocks.blocks(model.backbone)}
    expected = {"head.weight", "head.bias"}
    for epoch in range(2 * len(order) + 3):
        opened = epoch // 2
        new_phase = plan.on_epoch(optimizer, epoch)
        assert new_phase == (epoch % 2 == 0 and 1 <= opened <= len(order))
        if new_phase:
            expected |= stack[order[opened - 1]]
        assert _trainable(model) == expected, epoch
    assert expected == {n for n, _ in model.named_parameters()}


def test_auto_rgn_sets_each_learning_rate_from_its_relative_gradient_norm():
    model, plan, optimizer = _setup("test_vit", {"kind": "auto_rgn"}, {"lr": 0.01, "weight_decay": 0.0})
    groups = optimizer.param_groups
    names = [g["name"] for g in groups]
    assert names[:3] == ["backbone", "backbone.patch_embed.proj", "backbone.blocks.0.norm1"]  # one per layer
    assert names[-1] == "head" and groups[-1]["params"] == [model.head.weight, model.head.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert plan.on_epoch(optimizer, 0) is False and all(g["lr"] == 0.01 for g in groups)  # nothing measured yet
    ratios = torch.linspace(0.1, 2.0, len(groups))
    for step in (1, 2):  # the epoch's average counts: step 2 doubles every ratio, which keeps them relative
        for g, r in zip(groups, ratios):
            for p in g["params"]:
                p.grad = step * r * p.detach()  # |g| / |w| of the layer = step * r
        plan.on_step(optimizer, step, 10)
    plan.on_epoch(optimizer, 1)
    lrs = torch.tensor([g["lr"] for g in groups])
    torch.testing.assert_close(lrs, 0.01 * ratios / ratios.max(), rtol=1e-4, atol=1e-9)
    # the next epoch uses fresh measurements: reversed gradient norms reverse the rates
    for g, r in zip(groups, ratios.flip(0)):
        for p in g["params"]:
            p.grad = r * p.detach()
    plan.on_step(optimizer, 3, 10)
    plan.on_epoch(optimizer, 2)
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[-1]["lr"] == pytest.approx(0.01 * 0.1 / 2.0, rel=1e-4)


def test_auto_rgn_keeps_the_base_rate_of_a_layer_without_weights_to_compare_to():
    """timm starts a ResNet block's last BN at weight 0 and bias 0: |g|/|w| is undefined there."""
    model, plan, optimizer = _setup("test_resnet", {"kind": "auto_rgn"}, {"lr": 0.01, "weight_decay": 0.0})
    zero = [g for g in optimizer.param_groups if all(p.count_nonzero() == 0 for p in g["params"])]
    assert zero and zero[0]["name"] == "backbone.layer1.0.bn2"
    _step(model, plan, optimizer)
    for g in zero:  # measure them at 0, as they were when the gradient was taken
        for p in g["params"]:
            p.data.zero_()
    plan.on_step(optimizer, 1, 10)
    plan.on_epoch(optimizer, 1)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert all(lrs[g["name"]] == 0.01 for g in zero)
    assert all(0 <= lr <= 0.01 for lr in lrs.values()) and max(lrs.values()) == pytest.approx(0.01)
    assert len({round(lr, 12) for lr in lrs.values()}) > len(zero) + 1  # the others follow their own norms


def test_layer_wise_decay_slows_learning_towards_the_input():
    model, plan, optimizer = _setup("test_vit", {"kind": "llrd", "lr_decay": 0.5}, {"lr": 0.01, "weight_decay": 0.0})
    lrs = [(g["name"], g["lr"]) for g in optimizer.param_groups]
    assert [n for n, _ in lrs] == ["stem"] + [f"blocks.{i}" for i in range(6)] + ["head"]
    assert [lr for _, lr in lrs] == pytest.approx([0.01 * 0.5**k for k in range(7, -1, -1)])


def test_adalora_prunes_its_rank_budget_over_the_steps():
    torch.manual_seed(0)
    model, plan, optimizer = _setup(
        "test_vit",
        {"kind": "adalora", "rank": 2, "init_rank": 6, "warmup_fraction": 0.2, "final_fraction": 0.2},
        {"lr": 1e-2, "weight_decay": 0.0},
    )
    ranks = lambda: sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)  # noqa: E731
    sites = sum(1 for n, _ in model.named_parameters() if "lora_E" in n)
    for step in range(1, 21):
        _step(model, plan, optimizer, n=4)
        plan.on_step(optimizer, step, 20)
    assert sites * 6 > ranks() and ranks() <= sites * 2  # from init_rank per site down to rank on average
    assert plan.penalty().item() > 0  # P and Q are not orthogonal: the penalty pushes them to be


def test_adalora_keeps_its_schedule_when_resumed_mid_run():
    """A run resumed from a checkpoint calls the step hook first at a step > 1: the schedule still holds."""
    torch.manual_seed(0)
    model, plan, optimizer = _setup(
        "test_vit",
        {"kind": "adalora", "rank": 2, "init_rank": 6, "warmup_fraction": 0.2, "final_fraction": 0.2},
        {"lr": 1e-2, "weight_decay": 0.0},
    )
    sites = sum(1 for n, _ in model.named_parameters() if "lora_E" in n)
    for step in range(11, 31):  # resumed after step 10 of 30
        _step(model, plan, optimizer, n=4)
        plan.on_step(optimizer, step, 30)
    assert sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n) <= sites * 2


def _parts(n=24, side=32):
    gen = torch.Generator().manual_seed(0)
    frame = pl.DataFrame({"row": range(n), "patient_id": [f"p{i}" for i in range(n)]})
    return {
        part: Part(torch.randint(0, 255, (n, side, side), dtype=torch.uint8, generator=gen), torch.arange(n) % 2, frame)
        for part in ("train", "val", "test")
    }


def test_fit_runs_the_hooks_and_restarts_patience_at_a_new_phase():
    entry = resolve("test_vit", img_size=32)
    model = backbones.build(entry)
    plan = strategies.apply(model, entry, {"kind": "lp"}, {"lr": 0.0})  # lr 0: the validation loss never improves
    calls = {"epochs": [], "steps": [], "penalty": 0}

    def penalty():
        calls["penalty"] += 1
        return torch.zeros(())

    plan.penalty = penalty
    plan.on_step = lambda optimizer, step, total: calls["steps"].append((step, total))
    plan.on_epoch = lambda optimizer, epoch: calls["epochs"].append(epoch) or epoch == 2
    training = {"lr": 0.0, "weight_decay": 0.0, "batch_size": 10, "max_epochs": 12, "patience": 2}
    history = fit(
        model,
        plan,
        _parts(),
        inputs.Preprocess(entry, torch.device("cpu"), False),
        training,
        torch.Generator().manual_seed(0),
    )
    # without a new phase the run stops after epoch 2 (best epoch 0, patience 2); the phase that starts
    # at epoch 2 gets its own 2 epochs of patience
    assert calls["epochs"] == [0, 1, 2, 3] and len(history["epochs"]) == 4 and history["best_epoch"] == 0
    steps_per_epoch = math.ceil(24 / 10)
    assert calls["steps"] == [(s, 12 * steps_per_epoch) for s in range(1, 4 * steps_per_epoch + 1)]
    assert calls["penalty"] == 4 * steps_per_epoch


def test_early_stopping_cannot_cut_adalora_short_of_its_rank_budget():
    """With a validation loss that never improves (lr 0) and patience 1, plain early stopping would stop after
    epoch 1 with the full starting rank. AdaLoRA's epochs count only once its budget is final (after
    total - final_fraction of the steps): the kept epoch is the first of those, patience counts from it."""
    entry = resolve("test_vit", img_size=32)
    model = backbones.build(entry)
    spec = {"kind": "adalora", "rank": 2, "init_rank": 6, "warmup_fraction": 0.1, "final_fraction": 0.3}
    plan = strategies.apply(model, entry, spec, {"lr": 0.0, "weight_decay": 0.0})
    training = {"lr": 0.0, "weight_decay": 0.0, "batch_size": 12, "max_epochs": 10, "patience": 1}
    history = fit(
        model,
        plan,
        _parts(),
        inputs.Preprocess(entry, torch.device("cpu"), False),
        training,
        torch.Generator().manual_seed(0),
    )
    total = 10 * math.ceil(24 / 12)
    first_ready = next(e for e in range(10) if (e + 1) * 2 > total - int(0.3 * total))  # epoch 7 (steps 15, 16)
    assert history["best_epoch"] == first_ready and len(history["epochs"]) == first_ready + 2
    sites = sum(1 for n, _ in model.named_parameters() if "lora_E" in n)
    budget = plan.state()["rank_pattern"]
    assert budget and sum(sum(mask) for mask in budget.values()) <= sites * 2  # the target: rank 2 on average


@pytest.mark.parametrize(
    "kind, spec",
    [
        ("auto_rgn", {}),
        ("adalora", {"rank": 2, "init_rank": 6, "warmup_fraction": 0.2, "final_fraction": 0.3}),
        ("lp_ft", {"lp_epochs": 2}),
        ("gradual_unfreezing", {"unfreeze_every": 1}),
    ],
)
def test_a_schedule_resumed_after_a_stop_signal_ends_bit_identical(kind, spec, tmp_path):
    """The hooks' own state (Auto-RGN's gradient sums, AdaLoRA's importance scores and rank pattern, the
    phases) survives a stop and a resume: the final weights equal those of a run never stopped."""
    entry = resolve("test_vit", img_size=32)
    training = {"lr": 1e-2, "weight_decay": 0.0, "batch_size": 6, "max_epochs": 6, "patience": 6}

    def run(stop_at_step: int | None = None) -> tuple[dict, list[float]]:
        torch.manual_seed(0)  # as a cell seeds before it builds: adapters (AdaLoRA's P, Q) draw their start from it
        model = backbones.build(entry)
        plan = strategies.apply(model, entry, {"kind": kind} | spec, training)
        hook = plan.on_step

        def on_step(optimizer, step, total):
            if hook is not None:
                hook(optimizer, step, total)
            if step == stop_at_step:
                os.kill(os.getpid(), signal.SIGUSR1)  # like Slurm before the time limit: finish the epoch, save

        plan.on_step = on_step
        prep = inputs.Preprocess(entry, torch.device("cpu"), augment=True, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        history = fit(
            model,
            plan,
            _parts(),
            prep,
            training,
            torch.Generator().manual_seed(0),
            Checkpoint(tmp_path / f"{kind}.pt", every=0),
        )
        return model.state_dict(), [epoch["val_loss"] for epoch in history["epochs"]]

    with pytest.raises(Preempted):
        run(stop_at_step=9)  # in epoch 2 of 6 (4 steps an epoch)
    assert (tmp_path / f"{kind}.pt").is_file()
    resumed, resumed_losses = run()
    (tmp_path / f"{kind}.pt").unlink(missing_ok=True)
    whole, whole_losses = run()
    assert len(whole_losses) == 6 and resumed_losses == whole_losses  # every epoch, not only the best one
    assert [k for k in whole if not torch.equal(resumed[k], whole[k])] == []
