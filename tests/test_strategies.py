"""Strategies: each trains exactly the parameters it claims to, on a tiny ViT and a tiny CNN; the ones
declared not to apply to a backbone kind really cannot work on it; registry, grid and schema agree."""

import copy
import re

import pytest
import torch

from ftbench.models import backbones, blocks, strategies
from ftbench.models import strategy_kinds as kinds
from ftbench.models.zoo import resolve
from ftbench.plan import grid, reference
from ftbench.plan.config import ConfigError, validate
from ftbench.train import probes

TRAINING = {"lr": 1e-3, "weight_decay": 0.0}
ARCHS = ["test_vit", "test_resnet"]
HEAD = {"head.weight", "head.bias"}

# What the zoo's adapter targets are on the two tiny models, written out: a ViT's attention and MLP
# linears (not the patch embedding), a ResNet's block convolutions (not the stem or the shortcuts).
VIT_TARGETS = [f"blocks.{i}.{m}" for i in range(6) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
RESNET_TARGETS = [
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer3.0.conv1",
    "layer3.0.conv2",
    "layer3.0.conv3",
    "layer4.0.conv1",
    "layer4.0.conv2",
]
TARGETS = {"test_vit": VIT_TARGETS, "test_resnet": RESNET_TARGETS}
VIT_NORMS = [f"blocks.{i}.norm{j}" for i in range(6) for j in (1, 2)] + ["norm"]
RESNET_NORMS = [
    "conv1.1",
    "conv1.4",
    "bn1",
    "layer1.0.bn1",
    "layer1.0.bn2",
    "layer2.0.bn1",
    "layer2.0.bn2",
    "layer2.0.downsample.2",
    "layer3.0.bn1",
    "layer3.0.bn2",
    "layer3.0.bn3",
    "layer3.0.downsample.2",
    "layer4.0.bn1",
    "layer4.0.bn2",
    "layer4.0.downsample.2",
]
# SSF goes after the norms (and a ViT's patch embedding and targets); on a BatchNorm CNN not after the
# convolutions, whose every channel the next BatchNorm renormalises
SSF_SITES = {"test_vit": VIT_TARGETS + VIT_NORMS + ["patch_embed.proj"], "test_resnet": RESNET_NORMS}
IA3_SITES = {
    "test_vit": [f"blocks.{i}.{m}" for i in range(6) for m in ("attn.qkv.k", "attn.qkv.v", "mlp.fc2")],
    "test_resnet": RESNET_TARGETS,
}


def _per_target(*suffixes):
    return lambda arch, base: {f"backbone.{t}.{s}" for t in TARGETS[arch] for s in suffixes}


def _every(arch, base):
    return base


def _top_block(arch, base):
    top = ("backbone.blocks.5.", "backbone.norm.") if arch == "test_vit" else ("backbone.layer4.",)
    return {n for n in base if n.startswith(top)}


# strategy kind -> (arch, names of the plain backbone's parameters) -> backbone parameters the strategy trains
EXPECTED = {
    "fft": _every,
    "lp": lambda arch, base: set(),
    "bitfit": lambda arch, base: {n for n in base if n.endswith(".bias")},
    "lora": _per_target("lora_A.default.weight", "lora_B.default.weight"),
    "dora": _per_target("lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default.weight"),
    "vera": _per_target("vera_lambda_b.default", "vera_lambda_d.default"),
    # keys, values and the MLP's intermediate activation (fc2's input); a CNN: every block convolution's input
    "ia3": lambda arch, base: {f"backbone.{t}.ia3_l.default" for t in IA3_SITES[arch]},
    "loha": _per_target("hada_w1_a.default", "hada_w1_b.default", "hada_w2_a.default", "hada_w2_b.default"),
    "lokr": _per_target("lokr_w1.default", "lokr_w2.default"),
    "adalora": _per_target("lora_A.default", "lora_B.default", "lora_E.default"),
    "oft": _per_target("oft_R.default.weight"),
    "boft": _per_target("boft_R.default", "boft_s.default"),
    "fourierft": _per_target("fourierft_spectrum.default"),
    "ln_tuning": lambda arch, base: {
        f"backbone.{m}.ln_tuning_layers.default.{w}" for m in VIT_NORMS for w in ("weight", "bias")
    },
    "ssf": lambda arch, base: {f"backbone.{m}.ssf_{w}" for m in SSF_SITES[arch] for w in ("scale", "shift")},
    "vpt": lambda arch, base: {f"backbone.blocks.{i}.vpt_prompts" for i in range(6)},
    "lp_ft": _every,
    "gradual_unfreezing": _every,
    "l2_sp": _every,
    "auto_rgn": _every,
    "llrd": _every,
    "last_block": _top_block,
}
STARTS_FROZEN = {"lp_ft", "gradual_unfreezing"}  # only the head trains until their schedule unfreezes
PAIRS = [(k, a) for k in sorted(strategies.STRATEGIES) for a in ARCHS if not kinds.not_applicable(k, resolve(a))]
EXCLUDED = [(k, a) for k in sorted(strategies.STRATEGIES) for a in ARCHS if (k, a) not in PAIRS]


def _model(arch, img_size=32):
    entry = resolve(arch, img_size=img_size)
    return backbones.build(entry), entry


def _pretrained_like(model):
    """Give the norms random statistics and affine weights: timm starts a ResNet's residual branches at
    zero (last BN weight 0), which would make any change inside them invisible at initialisation."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_the_table_declares_every_kind_the_code_sets_up_and_the_generated_files_are_current():
    trained = {k for k, kind in kinds.KINDS.items() if kind.mode != "fitted"}
    assert set(strategies.STRATEGIES) == trained == set(EXPECTED)
    assert set(probes.PROBES) == {k for k, kind in kinds.KINDS.items() if kind.mode == "fitted"}
    assert all(kind.limit_text for kind in kinds.KINDS.values() if kind.limit is not kinds.always)
    assert reference.stale() == [], "run `python -m ftbench reference`"


def test_every_setting_the_code_reads_is_declared_in_the_table():
    source = (reference.ROOT / "src" / "ftbench" / "models" / "strategies.py").read_text()
    read = set(re.findall(r"spec\[\"(\w+)\"\]", source)) - {"kind"}
    declared = {key for name in kinds.KINDS for key in kinds.settings_of(name)}
    assert read and read <= declared, read - declared


@pytest.mark.parametrize("kind, arch", PAIRS)
def test_each_strategy_trains_exactly_its_parameters(kind, arch):
    model, entry = _model(arch)
    base = {n for n, _ in model.named_parameters()} - HEAD
    base_numel = sum(p.numel() for p in model.parameters())
    plan = strategies.apply(model, entry, {"kind": kind}, TRAINING)
    expected = EXPECTED[kind](arch, base) | HEAD
    assert _names(model, plan.parameters()) == expected
    assert _trainable(model) == (HEAD if kind in STARTS_FROZEN else expected)
    # the counts of run.json follow the plan; adapters add to the model, they never replace weights
    trainable, total = strategies.count_parameters(model, plan)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert total == sum(p.numel() for p in model.parameters()) >= base_numel
    assert (trainable == total) == (EXPECTED[kind] is _every)


@pytest.mark.parametrize("kind, arch", PAIRS)
def test_training_steps_move_exactly_the_trainable_parameters(kind, arch):
    """Three AdamW steps over the plan's groups (as fit() runs them) change the parameters that train
    now and nothing else: none is left out of the optimizer, no frozen weight drifts."""
    torch.manual_seed(0)
    model, entry = _model(arch)
    plan = strategies.apply(_pretrained_like(model), entry, {"kind": kind}, TRAINING)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(plan.param_groups, weight_decay=0.0)
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    model.train()
    for _ in range(3):  # LoRA-like adapters start with one factor at 0: the other moves from step 2
        loss = torch.nn.functional.cross_entropy(model(x), y) + (plan.penalty() if plan.penalty else 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == _trainable(model)


@pytest.mark.parametrize("kind, arch", [p for p in PAIRS if p[0] != "vpt"])
def test_strategies_start_from_the_pretrained_function(kind, arch):
    """Before any step, the adapted model computes what the original did (LoRA's B = 0, IA3's vectors = 1,
    SSF's scale 1 / shift 0, ...): a strategy starts from the pretrained network, not from a perturbed one."""
    model, entry = _model(arch)
    _pretrained_like(model).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    strategies.apply(model, entry, {"kind": kind}, TRAINING)
    model.eval()
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_vpt_prompts_reach_the_class_token_and_leave_the_sequence():
    model, entry = _model("test_vit")
    x = torch.randn(2, 3, 32, 32)
    tokens = model.backbone.forward_features(x).shape
    strategies.apply(model, entry, {"kind": "vpt", "prompt_tokens": 3}, TRAINING)
    assert model.backbone.forward_features(x).shape == tokens  # prompts are removed after the last block
    out = model(x)
    with torch.no_grad():
        model.backbone.blocks[3].vpt_prompts.add_(torch.randn_like(model.backbone.blocks[3].vpt_prompts))
    assert not torch.allclose(model(x), out)  # a deep prompt of a middle block changes the output
    shallow, entry = _model("test_vit")
    strategies.apply(shallow, entry, {"kind": "vpt", "prompt_tokens": 3, "deep": False}, TRAINING)
    assert _trainable(shallow) == {"backbone.blocks.0.vpt_prompts"} | HEAD


@pytest.mark.parametrize("kind, arch", EXCLUDED)
def test_excluded_pairs_really_cannot_work(kind, arch):
    """apply() refuses with the table's reason, and the strategy itself fails on that backbone."""
    model, entry = _model(arch)
    with pytest.raises(strategies.NotApplicable, match=re.escape(kinds.not_applicable(kind, entry))):
        strategies.apply(model, entry, {"kind": kind}, TRAINING)


def test_peft_oft_on_convolutions_changes_the_function_at_initialisation():
    """Why OFT is ViT-only: even where feature maps are large enough, peft's Conv2d OFT is not the identity."""
    model, entry = _model("test_resnet", img_size=128)
    _pretrained_like(model).eval()
    x = torch.randn(2, 3, 128, 128)
    before = model(x)
    strategies.oft(model, entry, kinds.resolve({"kind": "oft"}, entry, TRAINING)[0], TRAINING)
    model.eval()
    assert not torch.allclose(model(x), before, atol=1e-3)


def test_lora_uses_the_configured_rank_and_targets():
    model, entry = _model("test_vit")
    strategies.apply(model, entry, {"kind": "lora", "rank": 4, "target_modules": [r".*\.qkv"]}, TRAINING)
    assert (
        _trainable(model)
        == {f"backbone.blocks.{i}.attn.qkv.lora_{m}.default.weight" for i in range(6) for m in "AB"} | HEAD
    )
    assert all(4 in p.shape for n, p in model.named_parameters() if "lora_" in n)


def test_grid_leaves_out_pairs_that_cannot_work_and_says_why(demo_config):
    config = copy.deepcopy(demo_config)
    config["strategies"]["vpt_test"] = {"kind": "vpt"}
    config["benchmark"]["strategies"] = ["fft", "vpt_test"]
    reasons = grid.excluded(config)
    assert set(reasons) == {("tiny_resnet", "vpt_test")}
    assert "does not apply to model 'tiny_resnet' (cnn)" in reasons[("tiny_resnet", "vpt_test")]
    assert kinds.not_applicable("vpt", resolve("test_resnet")) in reasons[("tiny_resnet", "vpt_test")]
    assert {(c.model, c.strategy) for c in grid.cells(config)} == {
        ("tiny_vit", "fft"),
        ("tiny_resnet", "fft"),
        ("tiny_vit", "vpt_test"),
    }


@pytest.mark.parametrize(
    "model, works",
    [
        ("dinov2_vits14", True),
        ("biomedclip", True),  # timm ViTs: a token sequence VPT can extend
        ("clip_vitl14", False),
        ("pubmedclip", False),
        ("medclip_vit", False),
        ("resnet18", False),
    ],
)
def test_vpt_applies_to_timm_vits_only(model, works):
    """transformers towers and Swin would fail mid-run: the grid leaves them out."""
    assert (kinds.not_applicable("vpt", resolve(model)) is None) == works


def test_oft_and_boft_leave_out_targets_their_blocks_do_not_divide(caplog):
    model, entry = _model("test_resnet")
    spec = {"kind": "boft", "block_size": 8, "target_modules": [r"conv1\.0", r"layer1\.0\.conv1"]}
    strategies.apply(model, entry, spec, TRAINING)  # the stem conv sees 3 x 3 x 3 = 27 inputs
    assert (
        _trainable(model) == {"backbone.layer1.0.conv1.boft_R.default", "backbone.layer1.0.conv1.boft_s.default"} | HEAD
    )
    assert "conv1.0" in caplog.text and "block_size 8" in caplog.text


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"kind": "bitfit", "rank": 4}, "rank"),  # a hyper-parameter of another kind
        ({"kind": "l2_sp", "weight_decay": 0.1}, "weight_decay"),  # L2-SP sets its own decays
        ({"kind": "lora", "rank": 0}, "rank"),
        ({"kind": "vpt", "deep": "yes"}, "deep"),
        ({"kind": "llrd", "lr_decay": 1.5}, "lr_decay"),
    ],
)
def test_a_hyper_parameter_that_does_not_fit_its_kind_names_the_key(raw_config, spec, key):
    raw_config["strategies"]["mine"] = spec
    with pytest.raises(ConfigError, match=rf"config key 'strategies\.mine.*{key}"):
        validate(raw_config)


def test_blocks_cover_every_parameter_once_from_input_to_output():
    vit, _ = _model("test_vit")
    stack = blocks.blocks(vit.backbone)
    assert [b.name for b in stack] == ["stem"] + [f"blocks.{i}" for i in range(6)]
    assert {n for n, _ in stack[0].params} == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    }
    assert {"norm.weight", "norm.bias"} <= {n for n, _ in stack[-1].params}  # the final norm joins the top block
    resnet, _ = _model("test_resnet")
    assert [b.name for b in blocks.blocks(resnet.backbone)] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for backbone in (vit.backbone, resnet.backbone):
        names = [n for b in blocks.blocks(backbone) for n, _ in b.params]
        assert sorted(names) == sorted(n for n, _ in backbone.named_parameters())


def test_blocks_of_other_architectures_and_the_fallback():
    import timm

    with torch.device("meta"):
        densenet = timm.create_model("densenet121", num_classes=0)
        vgg = timm.create_model("vgg11", num_classes=0)
    dense = [b.name for b in blocks.blocks(densenet)]
    assert dense == ["stem"] + [f"features.denseblock{i}" for i in range(1, 5)]
    assert any(n.startswith("features.transition1.") for n, _ in blocks.blocks(densenet)[1].params)
    assert [b.name for b in blocks.blocks(vgg)][:3] == ["features.0", "features.3", "features.6"]
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert [b.name for b in blocks.blocks(mlp)] == ["0", "2"]


def test_a_new_kind_is_one_table_entry_and_one_setup_function(monkeypatch, raw_config, tmp_path):
    """Declared once, a kind is picked up everywhere: the schema accepts its settings (and refuses others),
    the grid resolves its defaults, the docs list it, and apply() sets it up."""

    def norms_only(model, entry, spec, training):
        strategies._freeze_backbone(model)
        norms = [p for m in model.backbone.modules() if isinstance(m, strategies.NORM_LAYERS) for p in m.parameters()]
        for p in norms:
            p.requires_grad_(True)
        return strategies.Plan(
            [{"params": norms, "lr": spec["norm_lr"], "name": "norms"}, strategies._head_group(model, spec, training)]
        )

    monkeypatch.setitem(
        kinds.KINDS,
        "norms_only",
        kinds.Kind(
            "ours",
            "the norm layers' affine weights",
            {
                "norm_lr": kinds.Setting(
                    kinds.NUMBER, "learning rate of the norms", lambda r, e, t: 10 * r["lr"], "10 × lr"
                )
            },
        ),
    )
    monkeypatch.setitem(strategies.STRATEGIES, "norms_only", norms_only)
    for name in ("config.schema.yaml", "strategies.schema.json"):  # the schema as `reference` would write it
        make = reference.GENERATED.get(reference.SCHEMAS / name, (reference.SCHEMAS / name).read_text)
        (tmp_path / name).write_text(make())
    raw_config["strategies"]["norms"] = {"kind": "norms_only", "lr": 1e-3}
    raw_config["benchmark"]["strategies"] = ["norms"]
    config = validate(copy.deepcopy(raw_config), tmp_path / "config.schema.yaml")
    raw_config["strategies"]["norms"]["rank"] = 4
    with pytest.raises(ConfigError, match="strategies.norms"):
        validate(raw_config, tmp_path / "config.schema.yaml")
    job = next(iter(grid.jobs(config)))
    assert grid.job_settings(config, job, grid.jobs(config)[job])["strategy"] == {
        "name": "norms",
        "kind": "norms_only",
        "head_lr": 1e-3,
        "norm_lr": 1e-2,
    }
    assert "| `norms_only` | ours | the norm layers' affine weights |" in reference.strategy_tables()
    model, entry = _model("test_vit")
    strategies.apply(model, entry, {"kind": "norms_only"}, TRAINING)
    assert _trainable(model) == {f"backbone.{m}.{w}" for m in VIT_NORMS for w in ("weight", "bias")} | HEAD
