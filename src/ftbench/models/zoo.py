"""The model zoo: what each named backbone is, without importing torch.

An entry says how to build the backbone (``loader``), where its pretrained weights are and how their keys map
onto the backbone, how to feed it (input size, normalisation, grayscale handling) and how to read and adapt
it (feature width and pooling, block structure, PEFT target modules). ``ftbench.models.backbones`` turns an entry
into a module and ``ftbench.models.weights`` fetches and loads its weights. Adding a model is adding one entry;
any timm architecture name also works as ``arch``, and any open_clip vision tower as ``open_clip:<model>/<pretrained>``
(see :func:`resolve`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import sys
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# MedCLIP normalises its (grayscale) CXRs with one mean / std, the same for the three replicated channels
MEDCLIP_MEAN = (0.5862785803043838,) * 3
MEDCLIP_STD = (0.27950088968644304,) * 3
# RAD-DINO's image processor (microsoft/rad-dino, preprocessor_config.json): one gray mean / std for the three channels
RAD_DINO_MEAN = (0.5307,) * 3
RAD_DINO_STD = (0.2583,) * 3
# torchxrayvision scales a [0, 1] image to [-1024, 1024] (xrv.utils.normalize: x * 2048 - 1024)
XRV_MEAN = (0.5,) * 3
XRV_STD = (1 / 2048,) * 3

# transformers renames modules between releases, and ftbench loads checkpoints by module name (not through
# from_pretrained's key conversions): CLIPVisionModel lost its `vision_model` level in 5.6, Swin took q/k/v/o_proj in
# 5.9, Dinov2 in 5.18. The transformers entries' targets, blocks and renames hold for [first, first untested):
# their state-dict keys and module names were compared on 5.18.0, 5.19.0, 5.20.2, 5.21.1, 5.22.2, 5.23.0, 5.24.0
# and 5.25.0 (pyproject.toml pins the same range; tests/test_zoo.py checks that they agree).
TRANSFORMERS_VERSIONS = ("5.18", "5.26")


@dataclass(frozen=True)
class ZooEntry:
    """One backbone: how to build, load, feed, read and adapt it."""

    loader: str  # key of ftbench.models.backbones.LOADERS
    name: str  # architecture name understood by the loader
    kind: str  # "cnn" or "vit": which strategies and default PEFT targets apply
    family: str = "custom"  # report grouping: cnn, fm-general, fm-biomedical
    layout: str = "cnn"  # key of LAYOUTS: how its modules are named and built (per-layout strategy settings use it)
    # Pretrained weights: "hf-hub:<repo id>", an https URL (a file or a .zip holding it) or "timm:<name>" (timm's
    # own source for that name); None = random initialisation only.
    source: str | None = None
    files: tuple[str, ...] = (
        "model.safetensors",
        "pytorch_model.bin",
    )  # weight file names in the source, first found wins
    # Checkpoint key mapping: keep the keys under `prefix` (stripped; the rest, e.g. a text tower, is not ours), apply
    # the `renames` (regex, replacement) in order, then leave out keys matching `ignore` (projection heads, stale buffers).
    prefix: str = ""
    renames: tuple[tuple[str, str], ...] = ()
    ignore: str | None = None
    img_size: int = 224  # native input side; a model config's img_size overrides it
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    grayscale: str = "replicate"  # how 1-channel CXRs are fed: replicated to 3 channels, pretrained first conv unchanged ("single":  # a one-channel model; the loader reads the first of the identical replicated channels)
    features: int | None = None  # width of the feature the head reads
    pool: str = (
        "avg"  # how the feature is read: "token" (CLS token after the final norm) or "avg" (global average pool)
    )
    blocks: str = ""  # regex of the block module names, input to output (for layer-wise strategies)
    targets: tuple[str, ...] = field(default=())  # module-name regexes PEFT adapters attach to
    license: str = "see source"
    options: dict = field(default_factory=dict)  # loader-specific architecture settings (no download needed to build)


# Module layouts: backbones whose modules are named and arranged alike, so that a strategy places its adapters
# alike on them (a strategy's per-layout settings, e.g. the first study's adapter targets, are keyed by these
# names), with the normalisation their layers use: a BatchNorm renormalises every channel a convolution before
# it outputs, so a strategy must not place a per-channel scale there (ftbench.models.strategy_kinds).
LAYOUTS: dict[str, str] = {
    "timm_vit": "layer",  # timm VisionTransformer (DINOv2, BiomedCLIP): blocks.N.attn.qkv (fused), attn.proj, mlp.fc1/2
    "timm_swin": "layer",  # timm Swin: layers.N.blocks.M.attn.qkv, ...
    "hf_clip": "layer",  # transformers CLIP vision tower: model.encoder.layers.N.self_attn.{q,k,v,out}_proj, mlp.fc1/2
    "hf_swin": "layer",  # transformers Swin (MedCLIP-ViT): ...blocks.M.attention.{q,k,v,o}_proj, mlp.fc1/2
    "hf_dinov2": "layer",  # transformers Dinov2 (RAD-DINO): model.encoder.layer.N.attention.{q,k,v,o}_proj, mlp.fc1/2
    # open_clip's own ViT tower, its nn.MultiheadAttention split into Linear q/k/v/out_proj at build
    # (ftbench.models.tuners.split_attention): model.transformer.resblocks.N.attn.{q,k,v,out}_proj, mlp.c_fc / c_proj
    "open_clip_vit": "layer",
    "cnn": "batch",  # ResNet, DenseNet (timm, torchvision): every convolution is followed by a BatchNorm
    "cnn_layernorm": "layer",  # ConvNeXt-like: LayerNorm after depth-wise convolutions
    "vgg": "none",  # VGG: convolutions without normalisation
}

# Module-name regexes (full match). PEFT adapters go on the attention and MLP linears of ViT blocks and on the
# convolutions of CNNs; blocks are the units layer-wise strategies unfreeze or give learning rates to.
VIT_TARGETS = (r"(?:.*\.)?blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.fc[12])",)
CNN_TARGETS = (r".*conv\d*$",)
VIT_BLOCKS = r"(?:.*\.)?blocks\.\d+"
CNN_BLOCKS = r"layer\d|stages\.\d+|blocks\.\d+|features\.denseblock\d"

TORCHVISION_LICENSE = "BSD-3-Clause (torchvision weights, trained on ImageNet-1k)"
HF_CLIP_TARGETS = (r"model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])",)
SWIN_TARGETS = (r"model\.encoder\.layers\.\d+\.blocks\.\d+\.(?:attention\.[qkvo]_proj|mlp\.fc[12])",)
DINOV2_TARGETS = (r"model\.encoder\.layer\.\d+\.(?:attention\.[qkvo]_proj|mlp\.fc[12])",)
OPEN_CLIP_TARGETS = (r"model\.transformer\.resblocks\.\d+\.(?:attn\.(?:q|k|v|out)_proj|mlp\.c_fc|mlp\.c_proj)",)
# Dinov2 checkpoints saved by transformers 4.x (RAD-DINO's) use the module names that transformers 5.18 renamed
DINOV2_V4_RENAMES = (
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
)
# Swin checkpoints saved by transformers 4.x (MedCLIP's) use module names that transformers 5 renamed
SWIN_V4_RENAMES = (
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (
        r"\.attention\.self\.relative_position_bias_table$",
        ".attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def _tv_cnn(
    name: str, features: int, blocks: str = CNN_BLOCKS, targets: tuple[str, ...] = CNN_TARGETS, layout: str = "cnn"
) -> ZooEntry:
    """An ImageNet CNN with torchvision's weights, as timm hosts them."""
    return ZooEntry(
        "timm",
        name,
        "cnn",
        "cnn",
        layout,
        f"hf-hub:timm/{name}.tv_in1k",
        features=features,
        blocks=blocks,
        targets=targets,
        license=TORCHVISION_LICENSE,
    )


def _dinov2(size: str, features: int) -> ZooEntry:
    name = f"vit_{size}_patch14_dinov2"
    return ZooEntry(
        "timm",
        name,
        "vit",
        "fm-general",
        "timm_vit",
        f"hf-hub:timm/{name}.lvd142m",
        img_size=518,
        features=features,
        pool="token",
        blocks=VIT_BLOCKS,
        targets=VIT_TARGETS,
        license="Apache-2.0",
    )


def _hf_clip(family: str, repo: str, width: int, layers: int, heads: int, patch: int) -> ZooEntry:
    """The vision tower of a CLIP checkpoint in transformers' layout (``CLIPModel`` or ``CLIPVisionModel``),
    built by transformers' ``CLIPVisionModel`` from the architecture given here."""
    return ZooEntry(
        "transformers",
        "CLIPVisionModel",
        "vit",
        family,
        "hf_clip",
        f"hf-hub:{repo}",
        prefix="vision_model.",
        ignore=r"embeddings\.position_ids",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        features=width,
        pool="token",
        blocks=r"model\.encoder\.layers\.\d+",
        targets=HF_CLIP_TARGETS,
        license="MIT",
        options={
            "config": {
                "hidden_size": width,
                "intermediate_size": 4 * width,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "patch_size": patch,
                "hidden_act": "quick_gelu",
            }
        },
    )


XRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"  # its models' weights (model_urls)
XRV_DENSENET = (
    XRV_RELEASE + "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
)
XRV_RESNET = XRV_RELEASE + "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"


def _xrv(name: str, url: str, img_size: int, features: int, blocks: str) -> ZooEntry:
    """A torchxrayvision model (its weights ``densenet121-res224-all`` / ``resnet50-res512-all``)."""
    return ZooEntry(
        "torchxrayvision",
        name,
        "cnn",
        "fm-biomedical",
        "cnn",
        url,
        files=(url.rpartition("/")[2],),
        ignore=r"classifier\..*|fc\..*|op_threshs",  # the 18 pathology logits and their operating points
        img_size=img_size,
        mean=XRV_MEAN,
        std=XRV_STD,
        grayscale="single",
        features=features,
        blocks=blocks,
        targets=CNN_TARGETS,
        license="Apache-2.0 (torchxrayvision)",
    )


ZOO: dict[str, ZooEntry] = {
    "resnet18": _tv_cnn("resnet18", 512, r"layer\d"),
    "resnet50": _tv_cnn("resnet50", 2048, r"layer\d"),
    "densenet121": _tv_cnn("densenet121", 1024, r"features\.denseblock\d"),
    # VGG has no block modules: its convolutions (and the two fc layers, as convs) are the blocks
    "vgg19": _tv_cnn("vgg19", 4096, r"features\.\d+|pre_logits\.fc\d", (r"features\.\d+|pre_logits\.fc\d",), "vgg"),
    "dinov2_vits14": _dinov2("small", 384),
    "dinov2_vitb14": _dinov2("base", 768),
    "dinov2_vitl14": _dinov2("large", 1024),
    # CLIP ViT-L/14 (OpenAI), vision tower: transformers' CLIPVisionModel, as the first study ran it, with Linear
    # q/k/v projections that every adapter method can target; the feature is the CLS token after the final norm,
    # before the contrastive projection (`visual_projection`, outside the vision model's prefix)
    "clip_vitl14": _hf_clip("fm-general", "openai/clip-vit-large-patch14", width=1024, layers=24, heads=16, patch=14),
    # BiomedCLIP: an open_clip model whose vision tower is a timm ViT-B/16 (`visual.trunk`, as in the hub's
    # open_clip_config.json), so timm builds it; its text tower (PubMedBERT) and projection (`visual.head`) are not used
    "biomedclip": ZooEntry(
        "timm",
        "vit_base_patch16_224",
        "vit",
        "fm-biomedical",
        "timm_vit",
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        prefix="visual.trunk.",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        features=768,
        pool="token",
        blocks=VIT_BLOCKS,
        targets=VIT_TARGETS,
        license="MIT",
    ),
    # PubMedCLIP: a CLIP ViT-B/32 fine-tuned on ROCO; transformers CLIPModel checkpoint, vision tower only
    "pubmedclip": _hf_clip(
        "fm-biomedical", "flaviagiammarino/pubmed-clip-vit-base-patch32", width=768, layers=12, heads=12, patch=32
    ),
    # MedCLIP (Wang et al. 2022): the authors' zips hold the whole model (pytorch_model.bin); the vision tower is
    # `vision_model.model` (torchvision ResNet-50 whose `fc` is the projection, or transformers' Swin-Tiny).
    # The zip URLs are those of MedCLIP's medclip/medclip_{resnet,vit}_weight.txt pointers.
    "medclip_resnet50": ZooEntry(
        "torchvision",
        "resnet50",
        "cnn",
        "fm-biomedical",
        "cnn",
        "https://storage.googleapis.com/pytrial/medclip-pretrained.zip",
        files=("pytorch_model.bin",),
        prefix="vision_model.model.",
        ignore=r"fc\.weight",
        mean=MEDCLIP_MEAN,
        std=MEDCLIP_STD,
        features=2048,
        blocks=r"layer\d",
        targets=CNN_TARGETS,
        license="MIT (MedCLIP repository)",
        options={"head": "fc"},
    ),
    "medclip_vit": ZooEntry(
        "transformers",
        "SwinModel",
        "vit",
        "fm-biomedical",
        "hf_swin",
        "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
        files=("pytorch_model.bin",),
        prefix="vision_model.model.",
        renames=SWIN_V4_RENAMES,
        ignore=r".*relative_position_index",
        mean=MEDCLIP_MEAN,
        std=MEDCLIP_STD,
        features=768,
        blocks=r"model\.encoder\.layers\.\d+\.blocks\.\d+",
        targets=SWIN_TARGETS,
        license="MIT (MedCLIP repository)",
        options={
            "config": {
                "embed_dim": 96,
                "depths": [2, 2, 6, 2],
                "num_heads": [3, 6, 12, 24],
                "window_size": 7,
                "patch_size": 4,
            }
        },
    ),
    # RAD-DINO (Pérez-García et al. 2025): DINOv2 ViT-B/14 trained on chest X-rays, in transformers' Dinov2Model
    # layout (the hub's config.json: 12 layers, 768 wide, layer scale, 518 px); the feature is the CLS token after
    # the final norm (pooler_output), as the authors classify
    "rad_dino": ZooEntry(
        "transformers",
        "Dinov2Model",
        "vit",
        "fm-biomedical",
        "hf_dinov2",
        "hf-hub:microsoft/rad-dino",
        files=("model.safetensors",),
        renames=DINOV2_V4_RENAMES,
        img_size=518,
        mean=RAD_DINO_MEAN,
        std=RAD_DINO_STD,
        features=768,
        pool="token",
        blocks=r"model\.encoder\.layer\.\d+",
        targets=DINOV2_TARGETS,
        license="MIT",
        options={
            "config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14},
            "position_embedding": "embeddings.position_embeddings",
        },
    ),
    # torchxrayvision (Cohen et al. 2022): one-channel CXR classifiers trained on its public CXR datasets, with the
    # library's scaling to [-1024, 1024]; the feature is the pooled one before the 18 pathology logits (its
    # `features2` / ResNet `features`), whose classifier is left out
    "xrv_densenet121": _xrv("densenet121", XRV_DENSENET, 224, 1024, r"model\.features\.denseblock\d"),
    "xrv_resnet50": _xrv("resnet50", XRV_RESNET, 512, 2048, r"model\.layer\d"),
}


@functools.lru_cache(maxsize=1)
def timm_architectures() -> frozenset[str]:
    """timm's registered architecture names, read from its source so that torch is not imported.

    timm registers every architecture with ``@register_model`` on a function of the same name; scanning
    the files takes milliseconds, while ``import timm`` takes seconds in every Slurm job's parse.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return frozenset()
    pattern = re.compile(r"@register_model(?:\([^)]*\))?\s*\ndef\s+(\w+)\s*\(")
    names: set[str] = set()
    for path in (Path(spec.origin).parent / "models").glob("*.py"):
        names.update(pattern.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def is_known_arch(arch: str) -> bool:
    """A zoo key, a timm architecture (with or without a ``.pretrained_tag``) or an open_clip model."""
    if arch.startswith(OPEN_CLIP):
        try:
            _open_clip_entry(arch)
        except KeyError:
            return False
        return True
    return arch in ZOO or arch.split(".")[0] in timm_architectures()


def transformers_problem(entry: ZooEntry) -> str | None:
    """Why the installed transformers cannot build ``entry`` with the module names its targets and key mapping
    were written for (see TRANSFORMERS_VERSIONS); None if it can or the entry is not built by transformers."""
    if entry.loader != "transformers":
        return None
    from packaging.version import Version

    first, untested = TRANSFORMERS_VERSIONS
    wanted = f"transformers>={first},<{untested}"
    try:
        installed = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return f"transformers is not installed (pip install '{wanted}')"
    if Version(first) <= Version(installed) < Version(untested):
        return None
    return (
        f"transformers {installed} is installed, but the zoo's transformers towers were tested with {wanted} only: "
        f"other releases name their modules otherwise (5.0-5.17 nest CLIP's `vision_model` and use the old "
        f"Swin / Dinov2 attention names), so weights would not load. pip install '{wanted}'"
    )


# ---------------------------------------------------------------------------------------------------- open_clip
OPEN_CLIP = "open_clip:"


@functools.lru_cache(maxsize=1)
def _open_clip_dir() -> Path | None:
    """open_clip's package folder, found without importing it (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


@functools.lru_cache(maxsize=1)
def open_clip_pretrained() -> dict:
    """open_clip's table of pretrained checkpoints (model -> tag -> url, hf_hub, mean, std, quick_gelu, ...),
    read from its ``pretrained.py`` without importing torch: that file needs torch only through an optional
    safetensors import, which is kept out here (and the package's ``__init__``, which imports torch, is not run)."""
    folder = _open_clip_dir()
    if folder is None:
        return {}
    package = types.ModuleType("_ftbench_open_clip")
    package.__path__ = [str(folder)]
    saved = sys.modules.get("safetensors.torch")
    sys.modules.update({"_ftbench_open_clip": package, "safetensors.torch": None})  # None: that import fails
    try:
        spec = importlib.util.spec_from_file_location("_ftbench_open_clip.pretrained", folder / "pretrained.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:  # leave no trace: the stand-in package, its submodules, and safetensors as it was
        for name in [name for name in sys.modules if name.partition(".")[0] == "_ftbench_open_clip"]:
            del sys.modules[name]
        del sys.modules["safetensors.torch"]
        if saved is not None:
            sys.modules["safetensors.torch"] = saved
    return module._PRETRAINED


def _open_clip_entry(arch: str) -> ZooEntry:
    """The entry of ``open_clip:<model>[/<pretrained tag>]``: the architecture from open_clip's model config, the
    input statistics and weight source from its pretrained table (both read without importing torch)."""
    if arch.startswith(f"{OPEN_CLIP}hf-hub:"):
        raise KeyError(
            f"architecture '{arch}': a hub-only open_clip checkpoint has its architecture and preprocessing only in "
            "the hub's open_clip_config.json, which planning (offline, before the weights stage) cannot read; download "
            "its weight file, give it as models.<name>.weights and its architecture as arch: open_clip:<model> "
            "(docs/models.md)"
        )
    model, _, tag = arch.removeprefix(OPEN_CLIP).partition("/")
    folder = _open_clip_dir()
    if folder is None:
        raise KeyError(f"architecture '{arch}' needs open_clip (pip install open_clip_torch)")
    config_file = folder / "model_configs" / f"{model}.json"
    if not config_file.is_file():
        raise KeyError(f"architecture '{arch}': open_clip has no model '{model}' (its model_configs/*.json)")
    config = json.loads(config_file.read_text())
    vision = config["vision_cfg"]
    tags = open_clip_pretrained().get(model, {})
    pretrained = tags.get(tag.lower()) if tag else {}
    if pretrained is None:
        raise KeyError(
            f"architecture '{arch}': open_clip knows no pretrained '{tag}' for '{model}' ({', '.join(tags)})"
        )
    source, files = None, ZooEntry.files
    if pretrained.get("hf_hub"):  # open_clip's own format; the `url` of OpenAI's tags is a TorchScript archive
        repo, _, file = pretrained["hf_hub"].rpartition("/")  # "org/repo/" or "org/repo/file", as open_clip splits it
        source = f"hf-hub:{repo}"
        files = (file,) if file else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    elif pretrained.get("url"):
        source = pretrained["url"]
        files = (pretrained["url"].rpartition("/")[2],)
    size = vision.get("image_size", 224)
    common = {
        "source": source,
        "files": files,
        "prefix": "visual.",
        "img_size": size if isinstance(size, int) else size[0],
        "mean": tuple(pretrained.get("mean", CLIP_MEAN)),
        "std": tuple(pretrained.get("std", CLIP_STD)),
        "license": f"see the model card of open_clip's '{model}' / '{tag}'" if tag else "see source",
        "options": {"quick_gelu": bool(pretrained.get("quick_gelu", config.get("quick_gelu", False)))},
    }
    if "timm_model_name" in vision:  # a timm trunk (BiomedCLIP-like): timm's names under `trunk`
        trunk = _timm_entry(vision["timm_model_name"])
        return replace(
            trunk,
            loader="open_clip",
            name=model,
            blocks=rf"model\.trunk\.(?:{trunk.blocks})",
            targets=tuple(rf"model\.trunk\.(?:{t})" for t in trunk.targets),
            **common,
        )
    if isinstance(vision.get("layers"), list):  # open_clip's ModifiedResNet (OpenAI's RN50, ...)
        return ZooEntry(
            "open_clip",
            model,
            "cnn",
            "custom",
            "cnn",
            features=config["embed_dim"],
            blocks=r"model\.layer\d",
            targets=(r"model\.layer\d\..*conv\d*",),
            **common,
        )
    return ZooEntry(
        "open_clip",
        model,
        "vit",
        "custom",
        "open_clip_vit",
        features=vision["width"],
        pool="avg" if vision.get("pool_type") == "avg" else "token",
        blocks=r"model\.transformer\.resblocks\.\d+",
        targets=OPEN_CLIP_TARGETS,
        **common,
    )


def _timm_entry(arch: str) -> ZooEntry:
    """A generic entry for a bare timm name: ViT if its name says so, else CNN; timm's own weight source."""
    base = arch.partition(".")[0]
    vit = re.search(r"vit|deit|beit|eva|swin|dinov2", base) is not None
    test = base.startswith("test_")  # timm's tiny test models are normalised to [-1, 1]
    return ZooEntry(
        "timm",
        base,
        "vit" if vit else "cnn",
        "custom",
        _timm_layout(base, vit),
        f"timm:{arch}",
        mean=(0.5, 0.5, 0.5) if test else IMAGENET_MEAN,
        std=(0.5, 0.5, 0.5) if test else IMAGENET_STD,
        pool="token" if vit else "avg",
        blocks=VIT_BLOCKS if vit else CNN_BLOCKS,
        targets=VIT_TARGETS if vit else CNN_TARGETS,
    )


def _timm_layout(base: str, vit: bool) -> str:
    """The layout of a bare timm architecture, from its name (see LAYOUTS)."""
    if vit:
        return "timm_swin" if "swin" in base else "timm_vit"
    if re.match(r"vgg\d+$", base):
        return "vgg"
    return "cnn_layernorm" if re.search(r"convnext|convformer|caformer|poolformer", base) else "cnn"


def resolve(arch: str, img_size: int | None = None, pretrained: bool = False) -> ZooEntry:
    """The zoo entry for ``arch`` (a bare timm name gets a generic one), at ``img_size``; no source unless pretrained."""
    if arch in ZOO:
        entry = ZOO[arch]
    elif arch.startswith(OPEN_CLIP):
        entry = _open_clip_entry(arch)
    elif is_known_arch(arch):
        entry = _timm_entry(arch)
    else:
        raise KeyError(
            f"unknown architecture '{arch}': not a zoo key ({', '.join(sorted(ZOO))}), a timm name nor "
            "open_clip:<model>/<pretrained>"
        )
    if not pretrained:
        entry = replace(entry, source=None)
    return replace(entry, img_size=img_size) if img_size else entry
