"""The model zoo: every entry builds as the published architecture, reads its stated feature and adapts as stated."""

import re

import pytest
import torch

from ftbench.models import backbones, inputs, strategies, strategy_kinds, weights, zoo
from ftbench.models.zoo import ZOO, resolve

PROTOCOL = {
    "resnet18",
    "resnet50",
    "densenet121",
    "vgg19",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "clip_vitl14",
    "biomedclip",
    "pubmedclip",
    "medclip_resnet50",
    "medclip_vit",
}
CXR = {"rad_dino", "xrv_densenet121", "xrv_resnet50"}  # foundation models pretrained on chest X-rays

# Backbone parameters (millions, classifier excluded) and forward GFLOPs per 224-px image (2 per multiply-add,
# attention included): the published architectures, e.g. ResNet-50 4.1 GMACs, ViT-B/16 17.6, Swin-T 4.5, ViT-B/32 4.4.
PUBLISHED = {
    "resnet18": (11.18, 3.63),
    "resnet50": (23.51, 8.17),
    "densenet121": (6.95, 5.67),
    "vgg19": (139.57, 39.26),
    "dinov2_vits14": (21.63, 12.25),
    "dinov2_vitb14": (85.72, 46.32),
    "dinov2_vitl14": (303.23, 162.02),
    "clip_vitl14": (303.18, 162.02),
    "biomedclip": (85.80, 35.13),
    "pubmedclip": (87.46, 8.82),
    "medclip_resnet50": (23.51, 8.17),
    "medclip_vit": (27.52, 8.98),
    # RAD-DINO is DINOv2 ViT-B/14 (+ its unused mask token); torchxrayvision's stems take one channel, not three
    "rad_dino": (85.73, 46.32),
    "xrv_densenet121": (6.95, 5.51),
    "xrv_resnet50": (23.50, 8.02),
}
# Built for real on CPU and run at a small input size: one per loader and kind (all are checked on meta above)
SMALL = {"resnet18": 64, "dinov2_vits14": 56, "pubmedclip": 64, "medclip_resnet50": 64}


def test_registry_has_the_protocol_models_and_states_everything():
    assert PROTOCOL | CXR <= set(ZOO)
    for key, entry in ZOO.items():
        assert entry.loader in backbones.LOADERS, key
        assert entry.source.partition(":")[0] in weights.SOURCES, key
        assert entry.license != "see source" and entry.features and entry.blocks and entry.targets, key
        assert entry.pool in ("token", "avg") and entry.grayscale == (
            "single" if key.startswith("xrv") else "replicate"
        ), key
        assert len(entry.mean) == len(entry.std) == 3 and entry.family in ("cnn", "fm-general", "fm-biomedical"), key


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_entry_builds_the_published_architecture(key):
    """Built on the meta device (no memory, no download): size, cost, feature, blocks and PEFT targets."""
    entry = resolve(key, img_size=224)
    with torch.device("meta"):
        model = backbones.build(entry)
        features = model.backbone(torch.zeros(2, 3, 224, 224))
    params, gflops = PUBLISHED[key]
    assert sum(p.numel() for p in model.backbone.parameters()) / 1e6 == pytest.approx(params, abs=0.01)
    assert backbones.forward_gflops(model, 224) == pytest.approx(gflops, rel=0.01)
    assert features.shape == (2, entry.features) and model.head.in_features == entry.features
    blocks = backbones.blocks(model.backbone, entry)
    assert len(blocks) >= 4
    targets = strategies.adapter_targets(model.backbone, entry.targets, convs=entry.kind == "cnn")
    assert all(any(t == b or t.startswith(b + ".") for t in targets) for b in blocks)  # every block gets adapters


@pytest.mark.parametrize("key", sorted(SMALL))
def test_small_entries_classify_grayscale_images(key):
    """Random weights at a small input size: uint8 grayscale batches in, finite logits out, gradients reach the stem."""
    entry = resolve(key, img_size=SMALL[key])
    torch.manual_seed(0)
    model = backbones.build(entry)
    prep = inputs.Preprocess(entry, torch.device("cpu"), augment=False)
    x = prep(torch.randint(0, 256, (2, 40, 40), dtype=torch.uint8), train=False)
    assert x.shape == (2, 3, entry.img_size, entry.img_size)
    logits = model(x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    first = next(p for p in model.backbone.parameters() if p.ndim == 4)  # the stem's convolution / patch embedding
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_inputs_are_normalised_with_each_models_statistics():
    """A pixel at the model's mean intensity becomes 0 in every channel: MedCLIP's gray mean, ImageNet's per channel."""
    medclip, resnet = resolve("medclip_resnet50", img_size=8), resolve("resnet18", img_size=8)
    gray = torch.full((1, 8, 8), round(medclip.mean[0] * 255), dtype=torch.uint8)
    x = inputs.Preprocess(medclip, torch.device("cpu"), augment=False)(gray, train=False)
    assert x.abs().max() < 0.01
    x = inputs.Preprocess(resnet, torch.device("cpu"), augment=False)(gray, train=False)
    expected = (gray[0, 0, 0] / 255 - torch.tensor(resnet.mean)) / torch.tensor(resnet.std)
    assert torch.allclose(x[0, :, 0, 0], expected) and x[0, 0, 0, 0] != x[0, 2, 0, 0]


def test_any_timm_name_builds_with_generic_blocks_and_targets():
    cnn, vit = resolve("convnext_atto", img_size=32), resolve("vit_tiny_patch16_224", img_size=32)
    assert (cnn.kind, vit.kind, cnn.source, resolve("convnext_atto", pretrained=True).source) == (
        "cnn",
        "vit",
        None,
        "timm:convnext_atto",
    )
    with torch.device("meta"):
        assert backbones.blocks(backbones.build(cnn).backbone, cnn) == [f"stages.{i}" for i in range(4)]
        vit_model = backbones.build(vit)
    assert strategies.adapter_targets(vit_model.backbone, vit.targets, convs=False)[:4] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]


# the attention projections of each layout (query, key, value; fused in timm)
ATTENTION = {
    "timm_vit": r"attn\.qkv",
    "hf_clip": r"self_attn\.[qkv]_proj",
    "hf_swin": r"attention\.[qkv]_proj",
    "hf_dinov2": r"attention\.[qkv]_proj",
    "open_clip_vit": r"attn\.[qkv]_proj",
}
VITS = sorted(key for key, entry in ZOO.items() if entry.kind == "vit")
ADAPTERS = sorted(k for k, kind in strategy_kinds.KINDS.items() if "target_modules" in kind.settings and k != "ssf")


def _adapted(key: str, kind: str) -> set[str]:
    """The backbone modules a strategy's adapters wrap on a zoo entry, built on the meta device (peft's BOFT
    reads tensor values when it initialises, which meta tensors have not: its resolved targets instead)."""
    entry, training = resolve(key, img_size=224), {"lr": 1e-3, "weight_decay": 0.0}
    with torch.device("meta"):
        model = backbones.build(entry)
        if kind == "boft":
            spec = strategy_kinds.resolve({"kind": kind}, entry, training)[0]
            return set(strategies.adapter_targets(model.backbone, spec["target_modules"], convs=False))
        strategies.apply(model, entry, {"kind": kind}, training)
    return {name for name, m in model.backbone.named_modules() if hasattr(m, "base_layer")}


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("key", VITS)
def test_attention_capable_strategies_adapt_the_attention_of_every_vit(key, kind):
    """Every adapter method reaches the query/key/value projections of every ViT of the zoo, CLIP ViT-L/14
    included (loaded with Linear q/k/v projections), not only its MLP."""
    adapted = _adapted(key, kind)
    assert any(re.search(ATTENTION[ZOO[key].layout], name) for name in adapted), sorted(adapted)[:6]


@pytest.mark.parametrize("key", VITS)
def test_ia3_rescales_keys_values_and_the_mlp_activation_only(key):
    """IA3 as Liu et al. (2022) define it: keys, values and the feed-forward intermediate activation (the
    input of the MLP's second linear); never queries or the attention's output projection."""
    adapted = _adapted(key, "ia3")
    roles = {re.sub(r".*?(attn\.qkv\.|self_attn\.|attention\.|mlp\.)", r"\1", name) for name in adapted}
    assert roles in (
        {"attn.qkv.k", "attn.qkv.v", "mlp.fc2"},
        {"self_attn.k_proj", "self_attn.v_proj", "mlp.fc2"},
        {"attention.k_proj", "attention.v_proj", "mlp.fc2"},
    ), roles


def test_transformers_outside_the_tested_releases_fails_at_planning_naming_them(raw_config, monkeypatch):
    """transformers 5.0 nests CLIPVisionModel's `vision_model` (and 5.0-5.17 keep the old Swin / Dinov2 names): the
    config check refuses such a release for a transformers-built model, saying which releases work."""
    import importlib.metadata

    from ftbench.plan import config as config_mod

    first, untested = zoo.TRANSFORMERS_VERSIONS
    raw_config["benchmark"]["models"] = ["clip_vitl14"]
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.0.0" if name == "transformers" else real(name))
    with pytest.raises(config_mod.ConfigError, match=rf"models\.clip_vitl14\.arch.*5\.0\.0.*>={first},<{untested}"):
        config_mod.validate(raw_config)
    raw_config["benchmark"]["models"] = ["resnet18"]  # not built by transformers: any release will do
    config_mod.validate(raw_config)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: first if name == "transformers" else real(name))
    assert zoo.transformers_problem(ZOO["rad_dino"]) is None


def test_pyproject_and_the_rules_env_pin_transformers_to_the_zoos_tested_releases():
    import tomllib

    from conftest import ROOT

    first, untested = zoo.TRANSFORMERS_VERSIONS
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"transformers>={first},<{untested}" in deps
    assert f"- transformers>={first},<{untested}" in (ROOT / "envs" / "ftbench.yaml").read_text()  # the rules' env
