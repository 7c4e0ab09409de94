"""Where fine-tuning strategies are set up: which parameters train, how fast, and what else the loop does.

Each strategy is a function ``(model, entry, spec, training) -> Plan`` in :data:`STRATEGIES`; it freezes
or adapts the model in place and returns the optimizer parameter groups plus, where the strategy needs
them, an extra loss term and per-epoch / per-step hooks that ``loop.fit`` calls. The head always
trains. Each kind's settings, their defaults and the backbones it applies to are declared torch-free in
``ftbench.models.strategy_kinds``; the functions here receive its settings resolved.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ftbench.models import blocks, tuners
from ftbench.models import strategy_kinds as kinds
from ftbench.models.backbones import Classifier
from ftbench.models.zoo import LAYOUTS, ZooEntry

log = logging.getLogger("ftbench.models.strategies")

NORM_LAYERS = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)


class NotApplicable(ValueError):
    """The strategy cannot work on this backbone (the grid leaves such pairs out; see ``strategy_kinds``)."""


@dataclass
class Plan:
    """What the training loop needs from a strategy.

    ``param_groups`` hold every parameter the strategy ever trains (schedules may unfreeze some later;
    AdamW skips a parameter while it has no gradient). Hooks receive the optimizer, whose groups are these.
    State the hooks carry between epochs goes through ``state`` / ``load_state``, so a checkpointed run
    resumes exactly (the epoch-indexed schedules are replayed instead).
    """

    param_groups: list[dict]
    penalty: Callable[[], torch.Tensor] | None = None  # added to each training batch's loss
    on_epoch: Callable[[torch.optim.Optimizer, int], bool] | None = None  # before each epoch; True = new phase
    on_step: Callable[[torch.optim.Optimizer, int, int], None] | None = None  # after each step: (step, total)
    state: Callable[[], dict] = dict  # the hooks' state, saved with a checkpoint
    load_state: Callable[[dict], None] = lambda state: None  # restores it (its tensors come on the CPU)
    # whether the model after optimizer step (step, total steps) is the strategy's final form: only then may an
    # epoch be kept as the best or early stopping end training (AdaLoRA: once its rank budget is final)
    ready: Callable[[int, int], bool] = lambda step, total_steps: True

    def parameters(self) -> list[nn.Parameter]:
        """The distinct parameters of the groups."""
        return list({id(p): p for g in self.param_groups for p in g["params"]}.values())

    def trains(self, module: nn.Module) -> bool:
        """Whether any parameter of ``module`` trains at some point."""
        mine = {id(p) for p in self.parameters()}
        return any(id(p) in mine for p in module.parameters())


def count_parameters(model: nn.Module, plan: Plan) -> tuple[int, int]:
    """(parameters the strategy trains at some point, all parameters of the adapted model)."""
    return sum(p.numel() for p in plan.parameters()), sum(p.numel() for p in model.parameters())


def _freeze_backbone(model: Classifier) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def _head_group(model: Classifier, spec: dict, training: dict) -> dict:
    return {"params": list(model.head.parameters()), "lr": spec["head_lr"], "name": "head"}


def _trainable_backbone_group(model: Classifier, training: dict) -> dict:
    return {
        "params": [p for p in model.backbone.parameters() if p.requires_grad],
        "lr": training["lr"],
        "name": "backbone",
    }


def _backbone_and_head(model: Classifier, spec: dict, training: dict) -> Plan:
    return Plan([_trainable_backbone_group(model, training), _head_group(model, spec, training)])


# ---------------------------------------------------------------------------------------------------------
# Strategies that choose which existing parameters train (S1, S2, S3)


def fft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Full fine-tuning: every parameter trains."""
    return _backbone_and_head(model, spec, training)


def lp(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Linear probing: frozen backbone, only the head trains."""
    _freeze_backbone(model)
    return Plan([_head_group(model, spec, training)])


def bitfit(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """BitFit: only the backbone's biases (and the head) train."""
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return _backbone_and_head(model, spec, training)


def last_block(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Last-block tuning: the top ``last_blocks`` blocks (with the final norm) and the head train."""
    _freeze_backbone(model)
    for block in blocks.blocks(model.backbone, entry.blocks or None)[-spec["last_blocks"] :]:
        for _, p in block.params:
            p.requires_grad_(True)
    return _backbone_and_head(model, spec, training)


def llrd(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Layer-wise learning-rate decay: block k from the top learns at ``lr * lr_decay**k`` (head: k = 0)."""
    decay, stack = spec["lr_decay"], blocks.blocks(model.backbone, entry.blocks or None)
    groups = [
        {"params": [p for _, p in block.params], "lr": training["lr"] * decay ** (len(stack) - i), "name": block.name}
        for i, block in enumerate(stack)
    ]
    return Plan(groups + [_head_group(model, spec, training)])


def l2_sp(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """L2-SP (Li et al. 2018): all train; the loss gets ``sp_alpha/2 * ||w - w0||^2`` over the backbone.

    The head, which has no starting point, gets plain L2 as AdamW weight decay ``sp_beta``; the backbone
    gets no weight decay (it would pull towards zero instead of towards the pretrained weights).
    """
    alpha, params = spec["sp_alpha"], list(model.backbone.parameters())
    starts = [p.detach().clone() for p in params]

    def penalty() -> torch.Tensor:
        if starts[0].device != params[0].device:  # the model moved to its device after the plan was made
            starts[:] = [s.to(p.device) for s, p in zip(starts, params)]
        return alpha / 2 * sum(((p - s) ** 2).sum() for p, s in zip(params, starts))

    backbone = _trainable_backbone_group(model, training) | {"weight_decay": 0.0}
    head = _head_group(model, spec, training) | {"weight_decay": spec["sp_beta"]}
    return Plan([backbone, head], penalty=penalty)


def lp_ft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LP-FT (Kumar et al. 2022): ``lp_epochs`` of linear probing at ``lp_lr``, then every parameter
    trains at the (small) ``lr`` from that head; early-stopping patience restarts with phase 2."""
    _freeze_backbone(model)
    lp_epochs, ft_head_lr = spec["lp_epochs"], _head_group(model, spec, training)["lr"]
    head = _head_group(model, spec, training) | {"lr": spec["lp_lr"]}
    backbone = {"params": list(model.backbone.parameters()), "lr": training["lr"], "name": "backbone"}

    def on_epoch(optimizer: torch.optim.Optimizer, epoch: int) -> bool:
        if epoch != lp_epochs:
            return False
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        for g in optimizer.param_groups:
            if g["name"] == "head":
                g["lr"] = ft_head_lr
        return True

    return Plan([backbone, head], on_epoch=on_epoch)


def gradual_unfreezing(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Gradual unfreezing (Howard & Ruder 2018): the head alone first, then one more block from the top
    every ``unfreeze_every`` epochs; early-stopping patience restarts at each unfreezing."""
    _freeze_backbone(model)
    every, stack = spec["unfreeze_every"], blocks.blocks(model.backbone, entry.blocks or None)
    backbone = {"params": list(model.backbone.parameters()), "lr": training["lr"], "name": "backbone"}

    def on_epoch(optimizer: torch.optim.Optimizer, epoch: int) -> bool:
        opened = epoch // every
        if epoch % every or not 1 <= opened <= len(stack):
            return False
        for _, p in stack[-opened].params:
            p.requires_grad_(True)
        return True

    return Plan([backbone, _head_group(model, spec, training)], on_epoch=on_epoch)


def _layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Each module's own parameters (a layer's weight and bias) as one entry, in registration order."""
    out = [(name or "root", list(m.parameters(recurse=False))) for name, m in model.named_modules()]
    return [(name, params) for name, params in out if params]


def auto_rgn(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Auto-RGN (Lee et al. 2023): every layer is a group whose learning rate is rescaled each epoch by
    its relative gradient norm |g|/|w|, averaged over the previous epoch's steps and divided by the
    largest; the first epoch runs at the base rates, and a layer whose weights are all 0 (no relative
    scale) keeps its base rate."""
    head_lr = _head_group(model, spec, training)["lr"]
    groups = [
        {"params": params, "lr": head_lr if name == "head" else training["lr"], "name": name}
        for name, params in _layers(model)
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    sums: dict = {"rgn": 0, "steps": 0}

    @torch.no_grad()
    def on_step(optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        rgn = []
        for g in optimizer.param_groups:
            weight = torch.linalg.vector_norm(torch.stack([p.norm() for p in g["params"]]))
            grad = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() if p.grad is not None else p.new_zeros(()) for p in g["params"]])
            )
            rgn.append(torch.where(weight > 0, grad / weight, torch.nan))
        sums["rgn"] = sums["rgn"] + torch.stack(rgn).float()
        sums["steps"] += 1

    def on_epoch(optimizer: torch.optim.Optimizer, epoch: int) -> bool:
        if sums["steps"]:
            rgn = sums["rgn"] / sums["steps"]
            known = ~torch.isnan(rgn)
            top = rgn[known].max() if known.any() else rgn.new_zeros(())
            scale = torch.where(known & (top > 0), rgn / top.clamp_min(1e-30), 1.0)
            for g, s in zip(optimizer.param_groups, scale.tolist()):
                g["lr"] = g["base_lr"] * s
            sums.update(rgn=0, steps=0)
        return False

    def load_state(state: dict) -> None:
        device = groups[0]["params"][0].device
        sums.update(state, rgn=state["rgn"].to(device) if torch.is_tensor(state["rgn"]) else state["rgn"])

    return Plan(groups, on_epoch=on_epoch, on_step=on_step, state=lambda: dict(sums), load_state=load_state)


def ln_tuning(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LayerNorm tuning (peft LN tuning): trainable copies of the LayerNorms' scales and shifts, + head."""
    from peft import LNTuningConfig

    names = [n for n, m in model.backbone.named_modules() if isinstance(m, nn.LayerNorm)]
    if not names:
        raise NotApplicable(f"'{entry.name}' has no LayerNorm")
    _inject(model, LNTuningConfig(target_modules=_exactly(names)))
    return _backbone_and_head(model, spec, training)


def ssf(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """SSF (Lian et al. 2022): a per-channel scale and shift after every normalisation layer and, in a ViT,
    after the patch embedding; after the adapter targets too where no BatchNorm follows them (a BatchNorm
    renormalises each channel of the convolution before it, so a scale there could change nothing). Only
    those (and the head) train."""
    _freeze_backbone(model)
    norms = [n for n, m in model.backbone.named_modules() if isinstance(m, NORM_LAYERS)]
    stem = [n for n, m in model.backbone.named_modules() if entry.kind == "vit" and isinstance(m, nn.Conv2d)]
    targets = [] if LAYOUTS[entry.layout] == "batch" else _targets(model, entry, spec)
    tuners.add_ssf(model.backbone, sorted(set(targets) | set(norms) | set(stem)))
    return _backbone_and_head(model, spec, training)


def vpt(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """VPT (Jia et al. 2022): ``prompt_tokens`` learnable tokens per block (``deep``) or before the first
    block only; only the prompts and the head train."""
    _freeze_backbone(model)
    try:
        tuners.add_prompts(model.backbone, spec["prompt_tokens"], spec["deep"])
    except TypeError as err:
        raise NotApplicable(str(err)) from None
    return _backbone_and_head(model, spec, training)


# ---------------------------------------------------------------------------------------------------------
# peft adapters: the backbone is frozen, adapters on the zoo entry's target modules train (S1, S3)


def adapter_targets(backbone: nn.Module, patterns: tuple[str, ...] | list[str], convs: bool) -> list[str]:
    """Names of the Linear (with ``convs`` also the ungrouped Conv2d) modules whose full name matches one of
    ``patterns``. An error when none does: an adapter on no module would leave the cell a linear probe."""
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    names = [
        name
        for name, module in backbone.named_modules()
        if (isinstance(module, nn.Linear) or (convs and isinstance(module, nn.Conv2d) and module.groups == 1))
        and regex.fullmatch(name)
    ]
    if not names:
        kinds_ = "Linear/Conv2d" if convs else "Linear"
        raise ValueError(f"no {kinds_} module matches the adapter targets {list(patterns)}")
    return names


def _exactly(names: list[str]) -> str:
    """A peft ``target_modules`` that selects exactly ``names`` (peft matches a list by name suffix,
    so ``norm`` would also catch ``blocks.0.attn.norm``; a string is matched in full)."""
    return "|".join(re.escape(n) for n in names)


def _targets(model: Classifier, entry: ZooEntry, spec: dict) -> list[str]:
    return adapter_targets(model.backbone, spec["target_modules"], entry.kind == "cnn")


def _in_blocks_of(backbone: nn.Module, names: list[str], size: int) -> list[str]:
    """The targets whose input width (a conv's in_channels x kernel area) is a multiple of ``size``: OFT
    and BOFT rotate it in blocks of ``size``. The others (e.g. a 3-channel 7x7 stem: 147) are left out,
    and said so."""

    def width(m: nn.Module) -> int:
        return m.in_features if isinstance(m, nn.Linear) else m.in_channels * m.kernel_size[0] * m.kernel_size[1]

    fit = [n for n in names if width(backbone.get_submodule(n)) % size == 0]
    if not fit:
        raise ValueError(f"no adapter target has an input width divisible by block_size {size}")
    if skipped := sorted(set(names) - set(fit)):
        log.warning("block_size %d does not divide the input width of %s: left without adapter", size, skipped)
    return fit


def _inject(model: Classifier, config) -> nn.Module:
    """Inject peft's adapter for ``config`` into the backbone in place; returns peft's tuner object.

    The tuner class is called directly rather than through ``inject_adapter_in_model`` because VeRA
    keeps its shared projections on it and AdaLoRA's rank allocation runs through it; the backbone
    stays the same module with the same parameter names. peft marks only the adapters trainable.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    return PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](model.backbone, config, "default")


def _lora_config(spec: dict, targets: str, dora: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], target_modules=targets, use_dora=dora
    )


def lora(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LoRA (Hu et al. 2021): rank-``rank`` updates B·A (B starts at 0) on the targets."""
    _inject(model, _lora_config(spec, _exactly(_targets(model, entry, spec))))
    return _backbone_and_head(model, spec, training)


def dora(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """DoRA (Liu et al. 2024): LoRA on the direction of each weight plus a trainable magnitude vector."""
    _inject(model, _lora_config(spec, _exactly(_targets(model, entry, spec)), dora=True))
    return _backbone_and_head(model, spec, training)


def vera(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """VeRA (Kopiczko et al. 2024): frozen random projections shared by all targets; only the scaling
    vectors d (rank ``rank``) and b (output width, starts at 0) train."""
    from peft import VeraConfig

    _inject(
        model,
        VeraConfig(r=spec["rank"], vera_dropout=spec["dropout"], target_modules=_exactly(_targets(model, entry, spec))),
    )
    return _backbone_and_head(model, spec, training)


def ia3(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """IA3 (Liu et al. 2022): a learned vector (starts at 1) rescales the keys, the values and the feed-forward
    intermediate activation: each target's output, or its input for the feed-forward targets (the MLP's second
    linear, whose input is that activation; every convolution of a CNN, whose output a BatchNorm would
    renormalise). A timm ViT's fused qkv is split into q, k and v first so that the queries stay as they are."""
    from peft import IA3Config

    tuners.split_qkv(model.backbone)
    targets = _targets(model, entry, spec)
    ff = re.compile("|".join(f"(?:{p})" for p in spec["feedforward_modules"]))
    _inject(
        model,
        IA3Config(
            target_modules=_exactly(targets),
            feedforward_modules=_exactly([t for t in targets if ff.fullmatch(t)] or ["^$"]),
        ),
    )
    return _backbone_and_head(model, spec, training)


def loha(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LoHa (Hyeon-Woo et al. 2022): the update is the Hadamard product of two rank-``rank`` products."""
    from peft import LoHaConfig

    _inject(
        model,
        LoHaConfig(
            r=spec["rank"],
            alpha=spec["alpha"],
            module_dropout=spec["dropout"],
            target_modules=_exactly(_targets(model, entry, spec)),
        ),
    )
    return _backbone_and_head(model, spec, training)


def lokr(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """LoKr (Yeh et al. 2024): the update is a Kronecker product, its larger factor of rank ``rank``."""
    from peft import LoKrConfig

    _inject(
        model,
        LoKrConfig(
            r=spec["rank"],
            alpha=spec["alpha"],
            module_dropout=spec["dropout"],
            target_modules=_exactly(_targets(model, entry, spec)),
        ),
    )
    return _backbone_and_head(model, spec, training)


def oft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """OFT (Qiu et al. 2023): a block-diagonal orthogonal rotation (blocks of ``block_size``) of each
    target's input, starting at the identity."""
    from peft import OFTConfig

    size = spec["block_size"]
    targets = _in_blocks_of(model.backbone, _targets(model, entry, spec), size)
    _inject(
        model, OFTConfig(r=0, oft_block_size=size, module_dropout=spec["dropout"], target_modules=_exactly(targets))
    )
    return _backbone_and_head(model, spec, training)


def boft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """BOFT (Liu et al. 2024): OFT whose orthogonal matrix is a product of ``butterfly_factor`` butterfly
    factors of ``block_size`` blocks, plus a trainable output scale."""
    from peft import BOFTConfig

    size = spec["block_size"]
    targets = _in_blocks_of(model.backbone, _targets(model, entry, spec), size)
    _inject(
        model,
        BOFTConfig(
            boft_block_size=size,
            boft_n_butterfly_factor=spec["butterfly_factor"],
            boft_dropout=spec["dropout"],
            target_modules=_exactly(targets),
        ),
    )
    return _backbone_and_head(model, spec, training)


def fourierft(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """FourierFT (Gao et al. 2024): ``n_frequency`` trainable spectral coefficients per target at fixed
    random frequencies; the update is their inverse 2-D DFT times ``scaling``. Starts at 0 (identity)."""
    from peft import FourierFTConfig

    _inject(
        model,
        FourierFTConfig(
            n_frequency=spec["n_frequency"],
            scaling=spec["scaling"],
            init_weights=True,
            target_modules=_exactly(_targets(model, entry, spec)),
        ),
    )
    return _backbone_and_head(model, spec, training)


def adalora(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """AdaLoRA (Zhang et al. 2023): SVD-shaped LoRA starting at rank ``init_rank`` whose rank budget is
    pruned by importance to ``rank`` on average, between ``warmup_fraction`` and ``1 - final_fraction``
    of the training steps of ``max_epochs``; plus peft's orthogonality penalty on P and Q (``orth_reg_weight``).
    Early stopping cannot cut the schedule short: no epoch before the budget is final is kept or ends
    training (``Plan.ready``), so a cell reports the model at its target rank."""
    from peft import AdaLoraConfig

    tuner = _inject(
        model,
        AdaLoraConfig(
            target_r=spec["rank"],
            init_r=spec["init_rank"],
            lora_alpha=spec["alpha"],
            lora_dropout=spec["dropout"],
            target_modules=_exactly(_targets(model, entry, spec)),
            total_step=1,
        ),
    )  # the real step count is known in the loop: set at the first step
    config = tuner.peft_config["default"]
    factors = [(p, "lora_A" in n) for n, p in model.backbone.named_parameters() if "lora_A" in n or "lora_B" in n]
    weight = spec["orth_reg_weight"]

    def penalty() -> torch.Tensor:
        gram = [p @ p.T if is_a else p.T @ p for p, is_a in factors]
        return (
            weight
            * torch.stack([torch.linalg.matrix_norm(g - torch.eye(len(g), device=g.device)) for g in gram]).mean()
        )

    def on_step(optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        if config.total_step != total_steps:  # the first step, also of a run resumed from a checkpoint
            config.total_step = total_steps
            config.tinit = int(spec["warmup_fraction"] * total_steps)
            config.tfinal = int(spec["final_fraction"] * total_steps)
        tuner.update_and_allocate(step)

    allocator, scores = tuner.rankallocator, ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def state() -> dict:  # the smoothed importance scores and the rank pattern pruning has reached
        return {name: getattr(allocator, name) for name in scores} | {"rank_pattern": config.rank_pattern}

    def load_state(saved: dict) -> None:
        device = factors[0][0].device
        for name in scores:
            setattr(allocator, name, {key: value.to(device) for key, value in saved[name].items()})
        config.rank_pattern = saved["rank_pattern"]

    def ready(step: int, total_steps: int) -> bool:  # peft fixes the target budget after total - tfinal steps
        return step > total_steps - int(spec["final_fraction"] * total_steps)

    return Plan(
        _backbone_and_head(model, spec, training).param_groups,
        penalty=penalty,
        on_step=on_step,
        state=state,
        load_state=load_state,
        ready=ready,
    )


STRATEGIES: dict[str, Callable[[Classifier, ZooEntry, dict, dict], Plan]] = {
    # S1
    "fft": fft,
    "lp": lp,
    "lora": lora,
    "vera": vera,
    "ia3": ia3,
    "bitfit": bitfit,
    # S2
    "lp_ft": lp_ft,
    "gradual_unfreezing": gradual_unfreezing,
    "l2_sp": l2_sp,
    "auto_rgn": auto_rgn,
    "llrd": llrd,
    "last_block": last_block,
    # S3
    "dora": dora,
    "loha": loha,
    "lokr": lokr,
    "adalora": adalora,
    "oft": oft,
    "boft": boft,
    "fourierft": fourierft,
    "ln_tuning": ln_tuning,
    "ssf": ssf,
    "vpt": vpt,
}


def apply(model: Classifier, entry: ZooEntry, spec: dict, training: dict) -> Plan:
    """Set ``model`` up for the strategy ``spec['kind']`` (its settings resolved with the defaults of
    ``ftbench.models.strategy_kinds`` where missing); the head always trains."""
    reason = kinds.not_applicable(spec["kind"], entry)
    if reason:
        raise NotApplicable(f"strategy kind '{spec['kind']}' does not apply to '{entry.name}' ({entry.kind}): {reason}")
    resolved = kinds.resolve(spec, entry, training)
    if len(resolved) != 1:
        raise ValueError(f"strategy {spec.get('name', spec['kind'])}: set up one candidate at a time")
    plan = STRATEGIES[spec["kind"]](model, entry, resolved[0], training)
    for p in model.head.parameters():
        p.requires_grad_(True)
    plan.param_groups = [g for g in plan.param_groups if g["params"]]
    return plan
