"""Build a backbone from its zoo entry (random or given weights) and put a binary classification head on it."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable

import torch
from torch import nn

from ftbench.models.zoo import ZooEntry

log = logging.getLogger("ftbench.models.backbones")

State = dict[str, torch.Tensor]


class Pooled(nn.Module):
    """A transformers vision model as a feature extractor: pixel values -> its pooled output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


def load_strict(module: nn.Module, state: State) -> None:
    """Load ``state`` into ``module``; every tensor must be there, with its shape, and nothing else."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def fit_position_embedding(module: nn.Module, state: State, key: str) -> State:
    """``state`` with its absolute position embedding ``key`` (one class token, then a square patch grid)
    resampled bicubically to ``module``'s grid, as timm does for its own ViTs: a tower pretrained at
    224 px then runs at the config's ``img_size``. Unchanged when the grids already agree."""
    from timm.layers import resample_abs_pos_embed

    saved, wanted = state.get(key), module.state_dict().get(key)
    if saved is None or wanted is None or saved.shape == wanted.shape:
        return state
    old, new = (round((t.shape[-2] - 1) ** 0.5) for t in (saved, wanted))  # (tokens, width) or (1, tokens, width)
    log.info("position embedding %s resampled from a %dx%d to a %dx%d patch grid", key, old, old, new, new)
    grid = resample_abs_pos_embed(saved.reshape(1, *saved.shape[-2:]), [new, new], [old, old], num_prefix_tokens=1)
    return state | {key: grid.reshape(wanted.shape)}


def _timm(entry: ZooEntry, state: State | None) -> nn.Module:
    import timm

    kwargs = (
        {"global_pool": entry.pool}
        | ({"img_size": entry.img_size} if entry.kind == "vit" else {})
        | entry.options.get("model_args", {})
    )  # architecture arguments of timm's constructor
    if state is None:
        return timm.create_model(entry.name, pretrained=False, num_classes=0, **kwargs)
    # timm loads the state itself, strictly, through the architecture's checkpoint filter (which e.g. resamples
    # DINOv2's 518-px position embeddings to img_size); built with the checkpoint's classifier, then headless.
    classifier = timm.models.get_pretrained_cfg_value(entry.name, "classifier") or "head"
    classifier = classifier if isinstance(classifier, str) else classifier[0]
    weight = state.get(f"{classifier}.weight")
    num_classes = 0 if weight is None else weight.shape[0]
    model = timm.create_model(
        entry.name,
        pretrained=True,
        num_classes=num_classes,
        pretrained_cfg_overlay={"state_dict": state, "num_classes": num_classes},
        **kwargs,
    )
    model.reset_classifier(0, entry.pool)
    return model


def _transformers(entry: ZooEntry, state: State | None) -> nn.Module:
    """A transformers vision model built from the entry's config (e.g. CLIPVisionModel); reads its pooled output."""
    import transformers

    model_class = getattr(transformers, entry.name)
    config = model_class.config_class(**entry.options.get("config", {}), image_size=entry.img_size)
    model = model_class(config)
    if state is not None:  # a CLIP or Dinov2 tower's absolute position embedding (a Swin has none)
        key = entry.options.get("position_embedding", "embeddings.position_embedding.weight")
        load_strict(model, fit_position_embedding(model, state, key))
    return Pooled(model)


class Tower(nn.Module):
    """A feature extractor ``model`` read through ``read`` (default: its forward), ``num_features`` wide; with
    ``channels=1`` it reads the first channel of the (replicated, identical) three: a one-channel model."""

    def __init__(self, model: nn.Module, num_features: int, read: Callable | None = None, channels: int = 3):
        super().__init__()
        self.model = model
        self.num_features = num_features
        self.read = read  # a method of `model`, never a module (that would be registered twice)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, : self.channels]
        return self.model(x) if self.read is None else self.read(x)


def _xrv_densenet(entry: ZooEntry) -> tuple[nn.Module, Callable | None]:
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=None)  # weights=None: no download, no resizing to its training size
    model.classifier = nn.Identity()
    return model, model.features2  # ReLU and global average pool of the last dense block


def _xrv_resnet(entry: ZooEntry) -> tuple[nn.Module, Callable | None]:
    """torchxrayvision's ResNet-50 as its class builds it (torchvision's with a one-channel stem); the class
    itself downloads its weights when built, so it is not called."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model, None  # its forward: the global average pool of layer4


XRV_MODELS: dict[str, Callable[[ZooEntry], tuple[nn.Module, Callable | None]]] = {
    "densenet121": _xrv_densenet,
    "resnet50": _xrv_resnet,
}


def _torchxrayvision(entry: ZooEntry, state: State | None) -> nn.Module:
    """A torchxrayvision classifier without its pathology logits, fed one channel."""
    model, read = XRV_MODELS[entry.name](entry)
    if state is not None:
        load_strict(model, state)
    return Tower(model, entry.features, read, channels=1)


# open_clip vision tower class -> (its feature width, how to make it output the feature before the projection)
def _open_clip_vit(visual: nn.Module) -> int:
    visual.proj = None  # pooled CLS (or mean) token after ln_post, before the contrastive projection
    return visual.transformer.width


def _open_clip_timm(visual: nn.Module) -> int:
    visual.head = nn.Identity()  # the trunk's pooled feature, before the projection head
    return visual.trunk.num_features


OPEN_CLIP_TOWERS: dict[str, Callable[[nn.Module], int]] = {
    "VisionTransformer": _open_clip_vit,
    "TimmModel": _open_clip_timm,
    "ModifiedResNet": lambda visual: visual.output_dim,  # its attention pool is its pooling
}


def _open_clip(entry: ZooEntry, state: State | None) -> nn.Module:
    """The vision tower of an open_clip model (its text tower is never built), its nn.MultiheadAttention split
    into Linear q/k/v/out projections (:func:`ftbench.models.tuners.split_attention`) after loading."""
    import open_clip
    from open_clip.model import _build_vision_tower

    from ftbench.models import tuners

    config = open_clip.get_model_config(entry.name)
    vision = dict(config["vision_cfg"], image_size=entry.img_size)
    visual = _build_vision_tower(config["embed_dim"], vision, quick_gelu=entry.options.get("quick_gelu", False))
    if state is not None:
        for key in ("positional_embedding", "trunk.pos_embed"):  # open_clip's own ViT, a timm trunk
            state = fit_position_embedding(visual, state, key)
        load_strict(visual, state)
    kind = type(visual).__name__
    if kind not in OPEN_CLIP_TOWERS:
        raise ValueError(f"open_clip model '{entry.name}': its {kind} vision tower is not one ftbench reads")
    width = OPEN_CLIP_TOWERS[kind](visual)
    tuners.split_attention(visual)
    return Tower(visual, width)


def _torchvision(entry: ZooEntry, state: State | None) -> nn.Module:
    """A torchvision model whose classifier (``options['head']``) is replaced by the identity."""
    import torchvision

    model = torchvision.models.get_model(entry.name, weights=None)
    head = entry.options.get("head", "fc")
    model.num_features = getattr(model, head).in_features
    setattr(model, head, nn.Identity())
    if state is not None:
        load_strict(model, state)
    return model


# loader name -> function building the feature extractor (``num_features`` wide) with random weights, or with
# ``state`` (tensors already renamed to the backbone's keys) loaded strictly
LOADERS: dict[str, Callable[[ZooEntry, State | None], nn.Module]] = {
    "timm": _timm,
    "transformers": _transformers,
    "torchvision": _torchvision,
    "torchxrayvision": _torchxrayvision,
    "open_clip": _open_clip,
}


class Classifier(nn.Module):
    """Backbone features -> linear head with two logits. Strategies always train ``head``."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int = 2, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.tokens = None  # what the head reads instead of the pooled output (ftbench.models.heads)
        self.init_head(seed)

    def init_head(self, seed: int) -> None:
        """nn.Linear's default initialisation from a generator of its own: the head starts the same
        whatever was drawn for the backbone (so a probe on cached features equals one on the backbone)."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1 / self.head.in_features**0.5
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=gen)
            self.head.bias.uniform_(-bound, bound, generator=gen)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) if self.tokens is None else self.tokens(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(entry: ZooEntry, state: State | None = None) -> Classifier:
    """The classifier for ``entry``; ``state`` (see :func:`ftbench.models.weights.load`) replaces the random initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random-weight backbones are the same in every cell and in the embedding cache
        backbone = LOADERS[entry.loader](entry, state)
    # timm models with a pre-logits layer (VGG's fc6/fc7) output head_hidden_size features, not num_features
    return Classifier(backbone, getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def blocks(backbone: nn.Module, entry: ZooEntry) -> list[str]:
    """Names of the backbone's blocks, input to output: the modules matching ``entry.blocks`` that hold parameters."""
    from ftbench.models.blocks import blocks as split

    return [block.name for block in split(backbone, entry.blocks) if block.name != "stem"]


def forward_gflops(model: nn.Module, img_size: int) -> float | None:
    """Forward GFLOPs for one image (torch's flop counter: 2 per multiply-add), counted on a meta-device copy.

    The copy costs no memory or compute, and attention is counted as matrix products whatever fused kernel
    (uncounted on CPU) the training device would pick. None, with a warning, if the model cannot run on meta.
    """
    from torch.utils.flop_counter import FlopCounterMode

    # deepcopy takes the meta ghosts of the parameters and buffers from the memo instead of copying them. They are
    # read in one pass over the modules: peft's MultiheadAttention re-registers new parameter objects on every
    # traversal, so ids gathered by separate parameters() and buffers() calls would not all be current.
    memo = {}
    for module in model.modules():
        for tensor in itertools.chain(module._parameters.values(), module._buffers.values()):
            if tensor is not None:
                ghost = torch.empty_like(tensor, device="meta")
                memo[id(tensor)] = (
                    nn.Parameter(ghost, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else ghost
                )
    try:
        ghost_model = copy.deepcopy(model, memo).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            ghost_model(torch.zeros(1, 3, img_size, img_size, device="meta"))
    except Exception as err:  # an efficiency figure must never fail the cell; the warning says what went wrong
        log.warning("forward GFLOPs not counted: %s: %s", type(err).__name__, err)
        return None
    return counter.get_total_flops() / 1e9
