"""Foundation models pretrained on chest X-rays: RAD-DINO (transformers' Dinov2) and torchxrayvision's DenseNet-121
and ResNet-50. Their published checkpoint formats are fetched from a local host by the weights stage and read offline
into the same features their own libraries compute; they take torchxrayvision's own input scaling; every adapter
reaches their attention or convolutions. Random weights, small sizes."""

import dataclasses
import re

import pytest
import test_weights
import torch
from test_weights import _bytes, _safetensors, fetch
from test_zoo import ADAPTERS, _adapted

from ftbench.models import backbones, inputs, strategies, strategy_kinds, weights
from ftbench.models.zoo import ZOO, resolve

hub = test_weights.hub  # the local host (127.0.0.1) that serves the published files
TINY_DINOV2 = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14}


def _v4_names(state: dict) -> dict:
    """A transformers-5.18+ Dinov2 state dict under the names transformers 4.x saved (RAD-DINO's checkpoint)."""
    back = {
        "q_proj": "attention.query",
        "k_proj": "attention.key",
        "v_proj": "attention.value",
        "o_proj": "output.dense",
    }
    return {re.sub(r"attention\.([qkvo]_proj)\.", lambda m: f"attention.{back[m[1]]}.", k): v for k, v in state.items()}


def rad_dino(hub):
    """RAD-DINO's format: model.safetensors of a transformers-4 Dinov2Model (attention.attention.query, ...)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    reference = Dinov2Model(Dinov2Config(**TINY_DINOV2, image_size=28, layerscale_value=0.5))
    with torch.no_grad():  # layer scales away from their initial value, so that loading them is checked
        for name, p in reference.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.1, 1.0)
    config = dict(ZOO["rad_dino"].options["config"], **TINY_DINOV2)
    entry = dataclasses.replace(ZOO["rad_dino"], img_size=28, options=ZOO["rad_dino"].options | {"config": config})
    hub.files["/microsoft/rad-dino/resolve/main/model.safetensors"] = _safetensors(_v4_names(reference.state_dict()))
    return entry, reference


def test_rad_dino_checkpoint_loads_offline_with_the_features_transformers_computes(hub, monkeypatch, tmp_path):
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, rad_dino)
    model = weights.build("tiny", entry, manifest).eval()
    ours, theirs = model.backbone.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(2, 3, 28, 28)
    assert torch.allclose(model.features(x), reference(pixel_values=x).pooler_output, atol=1e-6)


def test_rad_dino_renames_agree_with_transformers_own_conversion(tmp_path):
    """transformers converts a 4.x Dinov2 folder itself when it loads one: our key map gives the same tensors."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(4)
    source = Dinov2Model(Dinov2Config(**TINY_DINOV2, image_size=28))
    source.config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(_safetensors(_v4_names(source.state_dict())))
    theirs = Dinov2Model.from_pretrained(tmp_path).state_dict()
    ours = weights.map_keys(weights.read(tmp_path / "model.safetensors"), ZOO["rad_dino"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_rad_dino_runs_at_another_size_with_its_position_embeddings_resampled():
    from transformers import Dinov2Config, Dinov2Model

    source = Dinov2Model(Dinov2Config(**TINY_DINOV2, image_size=56))  # a 4x4 grid, run at 2x2
    config = dict(ZOO["rad_dino"].options["config"], **TINY_DINOV2)
    entry = dataclasses.replace(ZOO["rad_dino"], img_size=28, options=ZOO["rad_dino"].options | {"config": config})
    state = weights.map_keys(_v4_names(source.state_dict()), entry)
    model = backbones.build(entry, state)
    assert model.backbone.model.embeddings.position_embeddings.shape == (1, 5, 32)
    assert torch.isfinite(model(torch.randn(1, 3, 28, 28))).all()


def xrv_model(name: str):
    """A torchxrayvision model built by its own class with its published weight file (a random one served
    instead of the GitHub release): the DenseNet's file pickles the whole model, the ResNet's is a state dict."""

    def make(hub):
        import torchxrayvision as xrv

        weights_name = {"xrv_densenet121": "densenet121-res224-all", "xrv_resnet50": "resnet50-res512-all"}[name]
        torch.manual_seed(5)
        if name == "xrv_densenet121":
            published = xrv.models.DenseNet(weights=None, num_classes=18)
        else:
            import torchvision

            published = torchvision.models.resnet50(num_classes=18)
            published.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # BatchNorm statistics away from their initial values
            for module in published.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        data = _bytes(torch.save, published if name == "xrv_densenet121" else published.state_dict())
        file = ZOO[name].source.rpartition("/")[2]
        hub.files[f"/releases/{file}"] = data
        entry = dataclasses.replace(ZOO[name], source=f"{hub.url}/releases/{file}")
        # the reference: torchxrayvision's own class, reading the same file through its own loader
        cache = hub.tmp / "xrv"
        cache.mkdir(exist_ok=True)
        (cache / file).write_bytes(data)
        reference = xrv.models.get_model(weights_name, cache_dir=str(cache))
        return entry, reference

    return make


@pytest.mark.slow  # ~20 s each: the full-size published files (28 and 94 MB) through the weights stage
@pytest.mark.parametrize("name", ["xrv_densenet121", "xrv_resnet50"])
def test_xrv_checkpoint_loads_offline_with_torchxrayvisions_own_features(name, hub, monkeypatch, tmp_path):
    hub.tmp = tmp_path
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, xrv_model(name))
    model = weights.build("tiny", entry, manifest).eval()
    side = entry.img_size  # torchxrayvision resizes to its training size itself: give it that size
    gray = torch.randint(0, 256, (2, side, side), dtype=torch.uint8)
    x = inputs.Preprocess(entry, torch.device("cpu"), augment=False)(gray, train=False)
    read = reference.features2 if name == "xrv_densenet121" else reference.features
    with torch.no_grad():
        assert torch.allclose(model.features(x), read(x[:, :1]), atol=1e-4)


def test_xrv_sources_and_sizes_are_torchxrayvisions_own():
    import torchxrayvision as xrv

    for key, weights_name in (("xrv_densenet121", "densenet121-res224-all"), ("xrv_resnet50", "resnet50-res512-all")):
        published = xrv.models.model_urls[weights_name]
        assert (ZOO[key].source, ZOO[key].img_size) == (published["weights_url"], published["input_resolution"])


def test_xrv_input_is_one_channel_scaled_to_plus_minus_1024_as_torchxrayvision_scales_it():
    import torchxrayvision as xrv

    entry = resolve("xrv_densenet121", img_size=8)
    gray = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    x = inputs.Preprocess(entry, torch.device("cpu"), augment=False)(gray, train=False)
    expected = torch.from_numpy(xrv.utils.normalize(gray[0].numpy().astype("float32"), 255))
    assert torch.allclose(x[0, 0], expected, atol=0.01) and x.min() >= -1024 and x.max() <= 1024


class Sneaky(torch.nn.Module):
    """A module class of neither torch.nn nor torchxrayvision."""


def test_a_whole_model_pickle_is_read_only_with_known_module_classes(tmp_path):
    """torchxrayvision's DenseNet files pickle the model: rebuilt only from torch.nn / torchxrayvision classes;
    for any other loader, or with another class inside, the file is refused before anything is unpickled."""
    import torchxrayvision as xrv

    whole = xrv.models.DenseNet(weights=None)
    torch.save(whole, tmp_path / "xrv.pt")
    state = weights.read(tmp_path / "xrv.pt", weights.WHOLE_MODELS["torchxrayvision"])
    assert state.keys() == whole.state_dict().keys()
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        weights.read(tmp_path / "xrv.pt")
    whole.extra = Sneaky()
    torch.save(whole, tmp_path / "sneaky.pt")
    with pytest.raises(ValueError, match="Sneaky"):
        weights.read(tmp_path / "sneaky.pt", weights.WHOLE_MODELS["torchxrayvision"])


XRV_ADAPTERS = [
    (key, kind)
    for key in ("xrv_densenet121", "xrv_resnet50")
    for kind in ADAPTERS
    if not strategy_kinds.not_applicable(kind, ZOO[key])  # the grid leaves the others out, saying why
]


@pytest.mark.parametrize(("key", "kind"), XRV_ADAPTERS)
def test_every_applicable_adapter_reaches_the_convolutions_of_the_first_and_last_block(key, kind):
    entry = resolve(key, img_size=224)
    if kind == "boft":  # peft's BOFT reads tensor values when it initialises: its resolved targets instead
        spec = strategy_kinds.resolve({"kind": kind}, entry, {"lr": 1e-3, "weight_decay": 0.0})[0]
        with torch.device("meta"):
            adapted = set(
                strategies.adapter_targets(backbones.build(entry).backbone, spec["target_modules"], convs=True)
            )
    else:
        adapted = _adapted(key, kind)
    blocks = [b for b in ("model.features.denseblock1", "model.features.denseblock4", "model.layer1", "model.layer4")]
    reached = [b for b in blocks if any(name.startswith(b + ".") for name in adapted)]
    assert len(reached) == 2 and all(re.search(r"conv\d*$", name) for name in adapted), sorted(adapted)[:4]


@pytest.mark.parametrize("key", ["xrv_densenet121", "xrv_resnet50"])
def test_xrv_backbones_hold_each_weight_once(key):
    """The one-channel wrapper keeps the model as its only submodule: no tensor twice in a state dict or a cache."""
    with torch.device("meta"):
        model = backbones.build(resolve(key))
    state = model.state_dict()
    assert all(k.startswith(("backbone.model.", "head.")) for k in state), [k for k in state][:3]
    assert len(state) == len({id(t) for t in state.values()})
