"""Any open_clip checkpoint as ``arch: open_clip:<model>/<pretrained>``: the entry comes from open_clip's own
tables without importing torch, the tower's fused nn.MultiheadAttention is split into Linear q/k/v/out projections
that compute the same function and that every adapter reaches, and the weights stage fetches the checkpoint from a
local hub and loads it offline. A tiny ViT config with random weights stands in for the published ones."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import test_weights
import torch
from conftest import ROOT
from test_weights import _safetensors, fetch
from test_zoo import ADAPTERS

from ftbench.models import backbones, strategies, strategy_kinds, tuners, weights
from ftbench.models.zoo import resolve

hub = test_weights.hub  # the local host (127.0.0.1) that serves the published files
LAION = "open_clip:ViT-B-32/laion2b_s34b_b79k"
TINY = "ftbench-tiny-vit"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-block, 32-wide open_clip ViT registered with open_clip, and its entry (that of a real checkpoint
    with the tiny architecture's name and size)."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY}.json")
    return dataclasses.replace(resolve(LAION), name=TINY, img_size=32, features=32)


def test_entries_come_from_open_clips_tables_without_importing_torch():
    code = (
        "import sys; from ftbench.models import zoo; "
        f"e = zoo.resolve({LAION!r}, pretrained=True); "
        "print(e.source, e.files[0], e.layout, e.features, e.img_size, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    )
    assert out.stdout.split() == [
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        "open_clip_model.safetensors",
        "open_clip_vit",
        "768",
        "224",
        "False",
    ]


@pytest.mark.parametrize("tag", ["openai", "laion2b_s34b_b79k"])
def test_input_statistics_and_activation_are_those_open_clip_states(tag):
    import open_clip

    entry, cfg = resolve(f"open_clip:ViT-B-32/{tag}", pretrained=True), open_clip.get_pretrained_cfg("ViT-B-32", tag)
    assert (entry.mean, entry.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert entry.options["quick_gelu"] == cfg.get("quick_gelu", False)
    assert entry.source == "hf-hub:" + cfg["hf_hub"].strip("/")  # open_clip's format, not OpenAI's TorchScript


def test_unknown_models_and_tags_are_named_at_planning(raw_config):
    from ftbench.plan import config as config_mod

    raw_config["models"]["oc"] = {"arch": LAION, "pretrained": True}
    raw_config["benchmark"]["models"] = ["oc"]
    config_mod.validate(raw_config)
    raw_config["models"]["oc"]["arch"] = "open_clip:ViT-B-32/no_such_tag"
    with pytest.raises(
        config_mod.ConfigError, match=r"models\.oc\.arch.*no pretrained 'no_such_tag'.*laion2b_s34b_b79k"
    ):
        config_mod.validate(raw_config)
    raw_config["models"]["oc"]["arch"] = "open_clip:ViT-Nope/openai"
    with pytest.raises(config_mod.ConfigError, match=r"models\.oc\.arch.*no model 'ViT-Nope'"):
        config_mod.validate(raw_config)
    raw_config["models"]["oc"]["arch"] = "open_clip:hf-hub:org/repo"
    with pytest.raises(
        config_mod.ConfigError, match=r"models\.oc\.arch.*open_clip_config\.json.*models\.<name>\.weights"
    ):
        config_mod.validate(raw_config)


def test_a_hub_checkpoint_of_a_known_architecture_loads_from_a_given_file(tiny, tmp_path):
    """The way for hub-only checkpoints: the user's file as weights, the architecture by its open_clip name."""
    import open_clip

    source = open_clip.create_model(TINY)
    (tmp_path / "open_clip_model.safetensors").write_bytes(_safetensors(source.state_dict()))
    model = weights.build("mine", tiny, tmp_path).eval()
    source.visual.proj = None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(x), source.visual.eval()(x), atol=1e-5)


def test_split_attention_computes_what_the_fused_attention_computes(tiny):
    """Before any training the split tower's features equal open_clip's own (fused) tower's, before its projection."""
    import open_clip
    from open_clip.model import _build_vision_tower

    torch.manual_seed(0)
    config = open_clip.get_model_config(TINY)
    fused = _build_vision_tower(config["embed_dim"], config["vision_cfg"]).eval()
    state = {f"visual.{k}": v for k, v in fused.state_dict().items()}
    model = backbones.build(tiny, weights.map_keys(state, tiny)).eval()
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    assert isinstance(model.backbone.model.transformer.resblocks[0].attn, tuners.SplitAttention)
    fused.proj = None  # the feature before the contrastive projection
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(x), fused(x), atol=1e-5)
    model.train()  # gradients reach the split projections
    model(x).sum().backward()
    assert model.backbone.model.transformer.resblocks[0].attn.q_proj.weight.grad.abs().sum() > 0


def test_split_attention_takes_batch_second_inputs_and_masks():
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=False).eval()
    split = tuners.SplitAttention(mha).eval()
    q, mask = torch.randn(5, 2, 16), torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.no_grad():
        assert torch.allclose(
            split(q, q, q, attn_mask=mask)[0], mha(q, q, q, attn_mask=mask, need_weights=False)[0], atol=1e-6
        )


def _adapted(entry, kind: str) -> set[str]:
    training = {"lr": 1e-3, "weight_decay": 0.0}
    model = backbones.build(entry)
    if kind == "boft":
        spec = strategy_kinds.resolve({"kind": kind}, entry, training)[0]
        return set(strategies.adapter_targets(model.backbone, spec["target_modules"], convs=False))
    strategies.apply(model, entry, {"kind": kind}, training)
    return {name for name, m in model.backbone.named_modules() if hasattr(m, "base_layer")}


@pytest.mark.parametrize("kind", ADAPTERS)
def test_every_adapter_reaches_the_attention_of_an_open_clip_tower(tiny, kind):
    adapted = _adapted(tiny, kind)
    assert any(re.search(r"attn\.[qkv]_proj$", name) for name in adapted), sorted(adapted)[:6]


def test_ia3_rescales_keys_values_and_the_mlp_activation_only(tiny):
    roles = {re.sub(r".*?(attn\.|mlp\.)", r"\1", name) for name in _adapted(tiny, "ia3")}
    assert roles == {"attn.k_proj", "attn.v_proj", "mlp.c_proj"}


def open_clip_checkpoint(tiny):
    def make(hub):
        """open_clip's hub format: open_clip_model.safetensors of the whole model (text tower included)."""
        import open_clip

        torch.manual_seed(2)
        source = open_clip.create_model(TINY)
        hub.files["/org/tiny-clip/resolve/main/open_clip_model.safetensors"] = _safetensors(source.state_dict())
        reference = source.visual
        reference.proj = None
        return dataclasses.replace(tiny, source="hf-hub:org/tiny-clip"), reference

    return make


def test_open_clip_checkpoint_is_fetched_once_and_loads_offline(tiny, hub, monkeypatch, tmp_path):
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, open_clip_checkpoint(tiny))
    assert json.loads(manifest.read_text())["file"] == "open_clip_model.safetensors"
    model = weights.build("tiny", entry, manifest).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(x), reference(x), atol=1e-5)


def test_open_clip_tower_runs_at_another_size_with_its_position_embedding_resampled(tiny):
    import open_clip
    from open_clip.model import _build_vision_tower

    config = open_clip.get_model_config(TINY)
    state = {f"visual.{k}": v for k, v in _build_vision_tower(16, config["vision_cfg"]).state_dict().items()}
    entry = dataclasses.replace(tiny, img_size=48)
    model = backbones.build(entry, weights.map_keys(state, entry))
    assert model.backbone.model.positional_embedding.shape == (37, 32)
    assert torch.isfinite(model(torch.randn(1, 3, 48, 48))).all()
