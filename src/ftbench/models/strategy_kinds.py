"""Every strategy kind, declared once: its study, what it trains, where it applies (and why not elsewhere),
whether it trains from the embedding cache or is fitted there, and its settings with defaults, types and help.

Torch-free: the Snakefile reads it. Everything else derives from this table: the config schema's strategy
part (``workflow/schemas/strategies.schema.json``), the grid's limits and resolved settings (``ftbench.plan.grid``),
and the strategy table of ``docs/strategies.md`` (both written by ``python -m ftbench reference``). A new kind
is one entry here plus its setup function in ``ftbench.models.strategies`` (or ``ftbench.train.probes``).

Settings resolve in their declared order, so a default may derive from settings before it (``alpha`` from
``rank``). A setting marked ``candidates`` may be given a list: each value is trained and the one with the
lowest validation loss kept. A setting marked ``per_layout`` may be a mapping from module layout
(``ftbench.models.zoo.LAYOUTS``) to value, so one strategy can carry, e.g., the first study's targets per backbone family.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftbench.models.zoo import LAYOUTS, ZooEntry

NUMBER = {"type": "number", "exclusiveMinimum": 0}
# module layouts whose blocks output a token sequence with a class token first: heads may read several blocks
TOKEN_LAYOUTS = ("timm_vit", "hf_clip")
REGEXES = {"type": "array", "items": {"type": "string"}, "minItems": 1}


@dataclass(frozen=True)
class Setting:
    """One setting of a kind: its JSON schema, what it means, and its default.

    ``default``: a value, or a function ``(resolved settings so far, zoo entry, training config) -> value``
    (then ``default_text`` says it in words), or None for no value (the setting stays unset).
    """

    schema: dict
    help: str
    default: Any = None
    default_text: str = ""
    candidates: bool = False  # a list of values: each is trained, the best on validation kept
    per_layout: bool = False  # a mapping layout -> value: the value for the model's layout

    def default_for(self, resolved: dict, entry: ZooEntry, training: dict) -> Any:
        return self.default(resolved, entry, training) if callable(self.default) else self.default

    def describe_default(self) -> str:
        if self.default_text:
            return self.default_text
        return "–" if self.default is None else str(self.default).replace("'", "")


def always(entry: ZooEntry) -> str | None:
    return None


@dataclass(frozen=True)
class Kind:
    """A strategy kind: ``mode`` is ``trained`` (end to end), ``cached`` (trained from the embedding cache: the
    backbone stays frozen) or ``fitted`` (a scikit-learn probe on the embedding cache)."""

    study: str  # "S1", "S2", "S3" (the studies of the protocol) or "ours"
    trains: str  # what trains besides the head, for the docs
    settings: dict[str, Setting] = field(default_factory=dict)
    mode: str = "trained"
    limit: Callable[[ZooEntry], str | None] = always  # why it cannot work on a backbone; None where it can
    limit_text: str = ""  # the limit in words, for the docs
    without: tuple[str, ...] = ()  # common settings it does not take (it sets them itself)
    frozen_start: bool = False  # its first epochs train the head alone: from the embedding cache where there is one


# ---- settings every trained kind takes --------------------------------------------------------------------
def _from_training(key: str) -> Callable:
    return lambda resolved, entry, training: training.get(key)


COMMON = {
    "lr": Setting(NUMBER, "backbone learning rate", _from_training("lr"), "training.lr", candidates=True),
    "head_lr": Setting(NUMBER, "head learning rate", lambda r, e, t: r["lr"], "lr", candidates=True),
    "weight_decay": Setting(
        {"type": "number", "minimum": 0},
        "AdamW weight decay",
        _from_training("weight_decay"),
        "training.weight_decay",
        candidates=True,
    ),
    "max_epochs": Setting(
        {"type": "integer", "minimum": 1},
        "epochs at most (early stopping may end sooner)",
        _from_training("max_epochs"),
        "training.max_epochs",
    ),
    # the first study's heads (DINOv2's linear evaluation, ftbench.models.heads); unset, the head reads the pooled
    # output, which is what 1 block without the average is
    "n_last_blocks": Setting(
        {"type": "integer", "minimum": 1},
        "the head reads the class tokens of the last n blocks, concatenated (S1's DINOv2-style heads; layouts "
        "with a class token: " + ", ".join(TOKEN_LAYOUTS) + ")",
        None,
        "1: the pooled output",
        candidates=True,
        per_layout=True,
    ),
    "avgpool": Setting(
        {"type": "boolean"},
        "the head also reads the average of the last block's patch tokens (S1's DINOv2-style heads)",
        None,
        "false",
        candidates=True,
        per_layout=True,
    ),
}
HEAD_SETTINGS = ("n_last_blocks", "avgpool")
APPLIES_TO = Setting(
    {"type": "array", "items": {"enum": ["cnn", "vit"]}, "minItems": 1},
    "restrict the strategy to these backbone kinds (cnn, vit)",
)
TRAINING_OVERRIDES = ("lr", "weight_decay", "max_epochs")  # strategy settings that replace training.<key>


def _zoo_targets(resolved: dict, entry: ZooEntry, training: dict) -> list[str]:
    return list(entry.targets)


def targets(
    help_text: str = "module-name regexes the adapters attach to",
    default: Callable = _zoo_targets,
    default_text: str = "the zoo entry's targets: a ViT's attention and MLP linears, a CNN's block convolutions",
) -> Setting:
    return Setting(REGEXES, help_text, default, default_text, per_layout=True)


def _rank(default: int, what: str = "adapter rank") -> Setting:
    return Setting({"type": "integer", "minimum": 1}, what, default, candidates=True)


def _alpha() -> Setting:
    return Setting(
        NUMBER,
        "adapter scaling numerator (the update is scaled by alpha / rank)",
        lambda r, e, t: 2 * r["rank"],
        "2 × rank",
        candidates=True,
    )


DROPOUT = Setting(
    {"type": "number", "minimum": 0, "maximum": 1}, "dropout on the adapter's input", 0.0, candidates=True
)

# IA3 (Liu et al. 2022) rescales keys, values and the feed-forward intermediate activation: per layout, the key
# and value projections (a timm ViT's fused qkv is split into attn.qkv.q/k/v first, ftbench.models.tuners.split_qkv) and
# the MLP's second linear, whose input is that activation. On a CNN it rescales the input of every block
# convolution: a scale on a convolution's output would be undone by the BatchNorm after it.
IA3_TARGETS = {
    "timm_vit": [r"(?:.*\.)?blocks\.\d+\.attn\.qkv\.[kv]", r"(?:.*\.)?blocks\.\d+\.mlp\.fc2"],
    "timm_swin": [r".*blocks\.\d+\.attn\.qkv\.[kv]", r".*blocks\.\d+\.mlp\.fc2"],
    "hf_clip": [r"model\.encoder\.layers\.\d+\.(?:self_attn\.[kv]_proj|mlp\.fc2)"],
    "hf_swin": [r"model\.encoder\.layers\.\d+\.blocks\.\d+\.(?:attention\.[kv]_proj|mlp\.fc2)"],
    "hf_dinov2": [r"model\.encoder\.layer\.\d+\.(?:attention\.[kv]_proj|mlp\.fc2)"],
    "open_clip_vit": [r"model\.transformer\.resblocks\.\d+\.(?:attn\.[kv]_proj|mlp\.c_proj)"],
}
# the MLP's second linear, where a layout does not call it fc2
IA3_FEEDFORWARD = {"open_clip_vit": [r".*\.mlp\.c_proj"]}


def _ia3_targets(resolved: dict, entry: ZooEntry, training: dict) -> list[str]:
    return IA3_TARGETS.get(entry.layout, list(entry.targets))


def _ia3_feedforward(resolved: dict, entry: ZooEntry, training: dict) -> list[str]:
    return resolved["target_modules"] if entry.kind == "cnn" else IA3_FEEDFORWARD.get(entry.layout, [r".*\.mlp\.fc2"])


def _linear_only(entry: ZooEntry) -> str | None:
    return (
        "its adapters are defined for Linear layers only, and a CNN's targets are convolutions"
        if entry.kind == "cnn"
        else None
    )


def _batchnorm(what: str) -> Callable[[ZooEntry], str | None]:
    return lambda entry: (
        f"{what}, which the BatchNorm after every convolution renormalises"
        if LAYOUTS[entry.layout] == "batch"
        else None
    )


KINDS: dict[str, Kind] = {
    # ---- S1 (Ruffini et al.) --------------------------------------------------------------------------------
    "fft": Kind("S1", "everything"),
    "lp": Kind("S1", "nothing: frozen backbone", mode="cached"),
    "lora": Kind(
        "S1",
        "rank-r updates B·A (B = 0 at start) on the adapter targets (peft)",
        {"rank": _rank(8), "alpha": _alpha(), "dropout": DROPOUT, "target_modules": targets()},
    ),
    "vera": Kind(
        "S1",
        "scaling vectors d, b of frozen random projections shared by all targets (peft)",
        {"rank": _rank(256, "rank of the shared random projections"), "dropout": DROPOUT, "target_modules": targets()},
        limit=_linear_only,
        limit_text="ViTs: peft's VeRA adapts Linear layers only",
    ),
    "ia3": Kind(
        "S1",
        "one vector per target rescaling keys, values and the MLP's intermediate activation (peft)",
        {
            "target_modules": targets(
                "the modules whose output (or, feed-forward ones, input) is rescaled",
                _ia3_targets,
                "keys, values and the MLP's second linear; a CNN's block convolutions",
            ),
            "feedforward_modules": Setting(
                REGEXES,
                "targets whose input, not output, is rescaled",
                _ia3_feedforward,
                "the MLP's second linear; a CNN's every target",
                per_layout=True,
            ),
        },
    ),
    "bitfit": Kind("S1", "the backbone's biases"),
    # ---- S2 (Davila et al.) ---------------------------------------------------------------------------------
    "lp_ft": Kind(
        "S2",
        "head alone for lp_epochs at lp_lr, then everything at lr",
        {
            "lp_epochs": Setting({"type": "integer", "minimum": 1}, "epochs of the linear-probing phase", 5),
            "lp_lr": Setting(
                NUMBER,
                "head learning rate of the linear-probing phase",
                lambda r, e, t: 10 * r["lr"],
                "10 × lr",
                candidates=True,
            ),
        },
        frozen_start=True,
    ),
    "gradual_unfreezing": Kind(
        "S2",
        "head first, then one more block from the top every unfreeze_every epochs",
        {"unfreeze_every": Setting({"type": "integer", "minimum": 1}, "epochs between unfreezing steps", 2)},
        frozen_start=True,
    ),
    "l2_sp": Kind(
        "S2",
        "everything; loss + sp_alpha/2·‖w − w₀‖² over the backbone; head weight decay sp_beta",
        {
            "sp_alpha": Setting(
                {"type": "number", "minimum": 0},
                "weight of the distance to the starting weights",
                0.01,
                candidates=True,
            ),
            "sp_beta": Setting({"type": "number", "minimum": 0}, "weight decay of the head", 0.01, candidates=True),
        },
        without=("weight_decay",),
    ),  # its decays are its own: none on the backbone, sp_beta on the head
    "auto_rgn": Kind("S2", "everything; each layer's lr rescaled every epoch by its mean ‖g‖/‖w‖ ÷ the largest"),
    "llrd": Kind(
        "S2",
        "everything; block k from the top at lr·lr_decay^k (head k = 0)",
        {
            "lr_decay": Setting(
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "learning-rate factor per block from the top",
                0.75,
                candidates=True,
            )
        },
    ),
    "last_block": Kind(
        "S2",
        "the top last_blocks blocks (with the final norm)",
        {"last_blocks": Setting({"type": "integer", "minimum": 1}, "how many top blocks train", 1)},
    ),
    # ---- S3 (Dutt et al.) -----------------------------------------------------------------------------------
    "dora": Kind(
        "S3",
        "LoRA on each weight's direction + a magnitude vector (peft)",
        {"rank": _rank(8), "alpha": _alpha(), "dropout": DROPOUT, "target_modules": targets()},
        limit=_batchnorm("its magnitude vector rescales a convolution's output channels"),
        limit_text="not BatchNorm CNNs: the magnitudes would rescale channels the next BatchNorm renormalises",
    ),
    "loha": Kind(
        "S3",
        "Hadamard product of two rank-r products (peft)",
        {"rank": _rank(8), "alpha": _alpha(), "dropout": DROPOUT, "target_modules": targets()},
    ),
    "lokr": Kind(
        "S3",
        "Kronecker-product update (peft)",
        {"rank": _rank(8), "alpha": _alpha(), "dropout": DROPOUT, "target_modules": targets()},
    ),
    "adalora": Kind(
        "S3",
        "SVD-shaped LoRA whose rank budget is pruned from init_rank to rank (peft); + orthogonality penalty",
        {
            "rank": _rank(8, "average target rank after pruning"),
            "init_rank": Setting(
                {"type": "integer", "minimum": 1}, "starting rank", lambda r, e, t: r["rank"] * 3 // 2, "1.5 × rank"
            ),
            "alpha": _alpha(),
            "dropout": DROPOUT,
            "target_modules": targets(),
            "orth_reg_weight": Setting({"type": "number", "minimum": 0}, "weight of the orthogonality penalty", 0.5),
            "warmup_fraction": Setting(
                {"type": "number", "minimum": 0, "maximum": 1}, "share of the steps before rank pruning starts", 0.1
            ),
            "final_fraction": Setting(
                {"type": "number", "minimum": 0, "maximum": 1}, "share of the steps after rank pruning ends", 0.3
            ),
        },
    ),
    "oft": Kind(
        "S3",
        "block-diagonal orthogonal rotation of each target's input (peft)",
        {
            "block_size": Setting({"type": "integer", "minimum": 1}, "size of the orthogonal blocks", 32),
            "dropout": DROPOUT,
            "target_modules": targets(),
        },
        limit=lambda e: (
            "peft's OFT on Conv2d rotates unfolded input patches and folds them back by summing "
            "overlaps: it is not the identity at initialisation"
            if e.kind == "cnn"
            else None
        ),
        limit_text="ViTs: peft's Conv2d OFT is not the identity at initialisation",
    ),
    "boft": Kind(
        "S3",
        "butterfly-factorised orthogonal rotation + output scale (peft)",
        {
            "block_size": Setting({"type": "integer", "minimum": 1}, "size of the butterfly blocks", 8),
            "butterfly_factor": Setting({"type": "integer", "minimum": 1}, "number of butterfly factors", 1),
            "dropout": DROPOUT,
            "target_modules": targets(),
        },
        limit=lambda e: (
            "peft's BOFT multiplies a dense (C·k·k)² rotation per convolution every step: VGG's 7×7 "
            "fc6 convolution over 512 channels makes it 25088², 2.5 GB"
            if e.layout == "vgg"
            else None
        ),
        limit_text="not VGG: its 7×7 fc6 convolution makes peft's dense rotation 25088²",
    ),
    "fourierft": Kind(
        "S3",
        "n_frequency spectral coefficients per target, update = scaled inverse DFT (peft)",
        {
            "n_frequency": Setting(
                {"type": "integer", "minimum": 1}, "trainable spectral coefficients per target", 1000
            ),
            "scaling": Setting(NUMBER, "scale of the update", 150.0),
            "target_modules": targets(),
        },
        limit=_linear_only,
        limit_text="ViTs: peft's FourierFT adapts Linear layers only",
    ),
    "ln_tuning": Kind(
        "S3",
        "trainable copies of the LayerNorms (peft)",
        limit=lambda e: None if LAYOUTS[e.layout] == "layer" else "it tunes LayerNorms, which it has none of",
        limit_text="backbones with LayerNorms",
    ),
    "ssf": Kind(
        "S3",
        "a per-channel scale and shift after every norm layer and, where no norm follows, every "
        "adapter target (ours, tuners.py)",
        {"target_modules": targets()},
    ),
    "vpt": Kind(
        "S3",
        "prompt_tokens prompt tokens per block (deep) or before the first block (ours, tuners.py)",
        {
            "prompt_tokens": Setting({"type": "integer", "minimum": 1}, "prompt tokens per block", 10),
            "deep": Setting({"type": "boolean"}, "prompts at every block (true) or before the first only", True),
        },
        limit=lambda e: (
            None
            if e.layout == "timm_vit"
            else "prompts are extra tokens of a timm ViT's sequence: a CNN has none, a Swin attends in windows, and the "
            "transformers and open_clip towers have no hook for them here"
        ),
        limit_text="timm ViTs: prompts extend their token sequence",
    ),
    # ---- probes fitted on the embedding cache (ours; the usual frozen-feature baselines of FM papers) --------
    "logreg": Kind(
        "ours",
        "class-balanced L2 logistic regression on standardised features (scikit-learn)",
        {"C": Setting(NUMBER, "inverse regularisation strength", [1e-3, 1e-2, 0.1, 1.0], candidates=True)},
        mode="fitted",
    ),
    "knn": Kind(
        "ours",
        "cosine k-nearest neighbours on L2-normalised features (scikit-learn)",
        {
            "k": Setting(
                {"type": "integer", "minimum": 1},
                "neighbours (those above the training size left out)",
                [1, 5, 10, 20],
                candidates=True,
            )
        },
        mode="fitted",
    ),
}


def settings_of(kind: str) -> dict[str, Setting]:
    """Every setting a kind takes, in resolution order: the common ones (trained kinds), then its own."""
    own = KINDS[kind].settings
    common = {} if KINDS[kind].mode == "fitted" else COMMON
    return {k: v for k, v in common.items() if k not in KINDS[kind].without} | own | {"applies_to": APPLIES_TO}


def not_applicable(kind: str, entry: ZooEntry) -> str | None:
    """Why a strategy kind cannot work on a backbone; None if it can."""
    return KINDS[kind].limit(entry)


def _for_layout(setting: Setting, value: Any, entry: ZooEntry) -> Any:
    """A per-layout setting's value for ``entry``'s layout (absent from the mapping: no value)."""
    if setting.per_layout and isinstance(value, dict):
        return value.get(entry.layout)
    return value


def _is_list(setting: Setting, value: Any) -> bool:
    """Whether a candidate setting's value lists candidates (per layout: for some layout)."""
    if setting.per_layout and isinstance(value, dict):
        return any(isinstance(v, list) for v in value.values())
    return isinstance(value, list)


def listed_candidates(spec: dict, entry: ZooEntry | None = None) -> list[str]:
    """The settings of a strategy ``spec`` given (or defaulting to) a list of candidates: on ``entry``'s layout,
    or, without it, on any layout."""
    settings = {name: s for name, s in settings_of(spec["kind"]).items() if s.candidates}
    values = {name: spec.get(name, s.default) for name, s in settings.items()}
    if entry is not None:
        values = {name: _for_layout(settings[name], value, entry) for name, value in values.items()}
    return [name for name, value in values.items() if _is_list(settings[name], value)]


def reads_tokens(resolved: dict) -> bool:
    """Whether one candidate's head reads more than the backbone's pooled output (``ftbench.models.heads``)."""
    return resolved.get("n_last_blocks", 1) > 1 or bool(resolved.get("avgpool", False))


def head_reads_tokens(spec: dict, entry: ZooEntry) -> bool:
    """Whether some candidate of a strategy ``spec`` on ``entry`` has a head that reads more than the pooled output:
    such a head cannot train from the embedding cache, which holds the pooled output only."""
    blocks, avgpool = (_for_layout(COMMON[name], spec.get(name), entry) for name in HEAD_SETTINGS)
    return any(n > 1 for n in _listed(blocks)) or any(_listed(avgpool))


def _listed(value: Any) -> list:
    """A setting's candidates: its list, or its one value (none when unset)."""
    return value if isinstance(value, list) else [] if value is None else [value]


def resolve(spec: dict, entry: ZooEntry, training: dict) -> list[dict]:
    """Every candidate's fully resolved settings of the strategy ``spec`` on ``entry``: one dict per combination
    of the candidate lists (a single dict when there are none), defaults filled in declaration order.

    Refuses a head that reads several blocks on a layout without a class token (``TOKEN_LAYOUTS``)."""
    settings = settings_of(spec["kind"])
    lists = {
        name: _for_layout(settings[name], spec.get(name, settings[name].default), entry)
        for name in listed_candidates(spec, entry)
    }
    out = []
    for values in itertools.product(*lists.values()):
        chosen = dict(zip(lists, values))
        resolved = {"kind": spec["kind"]}
        for name, setting in settings.items():
            value = chosen.get(name, _for_layout(setting, spec.get(name), entry))
            if value is None:
                value = setting.default_for(resolved, entry, training)
            if value is not None:
                resolved[name] = value
        if reads_tokens(resolved) and entry.layout not in TOKEN_LAYOUTS:
            raise ValueError(
                f"strategy '{spec.get('name', spec['kind'])}': n_last_blocks {resolved.get('n_last_blocks', 1)} / "
                f"avgpool {resolved.get('avgpool', False)} on '{entry.name}' (layout {entry.layout}): heads read "
                f"several blocks only where the blocks output a class token ({', '.join(TOKEN_LAYOUTS)}); give this "
                "layout 1 / false, or leave it out of the per-layout mapping"
            )
        out.append(resolved)
    return out


def mode(kind: str) -> str:
    return KINDS[kind].mode
