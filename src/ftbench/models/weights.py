"""The weights stage: fetch a model's pretrained weights once (login node), then find, check and load them offline.

``fetch`` downloads with the hubs' own functions into ``resources/weights/<model>/`` and ``write_manifest``
records the file, its size and SHA-256 next to it (``weights.json``, the output the workflow tracks). Training
cells call :func:`build`, which reads only local files: a manifest, or a user-given file or folder. Tensors are
read with safetensors or ``torch.load(weights_only=True)``; arbitrary pickled objects are never loaded. Every
problem, fetching or loading, raises :class:`WeightsError` naming the model and the path or source.
"""

from __future__ import annotations

import json
import re
import urllib.error
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from ftbench.data import download
from ftbench.models.zoo import ZooEntry

MANIFEST = "weights.json"


class WeightsError(ValueError):
    """A model's weights are missing, unreadable or do not fit its architecture; the message names model and path."""


class Unreachable(ConnectionError):
    """The weights' host cannot be reached (no network, offline mode, a firewall): not a missing file."""

    def __init__(self, host: str, source: str, reason: object):
        super().__init__(
            f"cannot reach {host} to fetch {source} ({reason}). On a machine without internet, fetch the "
            f"weights where {host} can be reached (`snakemake --until weights`, e.g. on the login node) and "
            "copy resources/weights/ here, or give a local file as models.<name>.weights; see "
            "docs/models.md, 'Offline machines'"
        )


# ---------------------------------------------------------------------------------------------------- fetching
def _hf_hub(source: str, entry: ZooEntry, out_dir: Path) -> Path:
    """The first of ``entry.files`` that the Hugging Face repo has, downloaded into ``out_dir`` (honours HF_ENDPOINT)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = source.removeprefix("hf-hub:").strip("/")
    for name in entry.files:
        try:
            return Path(hf_hub_download(repo, name, local_dir=out_dir))
        except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: the hub did not answer at all
            reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else err.__cause__ or err
            raise Unreachable(urlparse(constants.ENDPOINT).netloc, source, reason) from err
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"{source} has none of the weight files {list(entry.files)}")


def _url(source: str, entry: ZooEntry, out_dir: Path) -> Path:
    """A weight file at an http(s) URL, or the first of ``entry.files`` inside a .zip / .tar(.gz) archive there."""
    try:
        target = download.fetch(source, out_dir / Path(urlparse(source).path).name)
    except urllib.error.HTTPError:
        raise  # the host answered
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise Unreachable(urlparse(source).netloc, source, getattr(err, "reason", err)) from err
    if target.name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        download.extract(target, out_dir)
        target.unlink()  # the archive holds nothing else we use; keep only the extracted files
        return find_file(out_dir, entry.files, source)
    return target


def _timm(source: str, entry: ZooEntry, out_dir: Path) -> Path:
    """Where timm itself gets the weights of a (tagged) architecture name: its Hugging Face repo or URL."""
    import timm

    name = source.removeprefix("timm:")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise FileNotFoundError(f"timm knows no pretrained weights for '{name}'")
    if cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else entry.files
        return _hf_hub(cfg.hf_hub_id, replace(entry, files=files), out_dir)
    return _url(cfg.url, entry, out_dir)


# source scheme -> function downloading the weight file into a folder and returning its path
SOURCES: dict[str, Callable[[str, ZooEntry, Path], Path]] = {
    "hf-hub": _hf_hub,
    "https": _url,
    "http": _url,
    "timm": _timm,
}


def fetch(model: str, entry: ZooEntry, out_dir: str | Path) -> Path:
    """Download ``model``'s pretrained weights (``entry.source``) into ``out_dir``; the path of the weight file."""
    scheme = (entry.source or "").partition(":")[0]
    if scheme not in SOURCES:
        raise WeightsError(f"model '{model}': no known weight source ('{entry.source}'; schemes: {', '.join(SOURCES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return SOURCES[scheme](entry.source, entry, out_dir)
    except Unreachable as err:
        raise WeightsError(f"model '{model}': {err}") from err
    except Exception as err:  # network, hub and archive errors alike: say which model and where from
        raise WeightsError(
            f"model '{model}': cannot fetch {entry.source} into {out_dir}: {type(err).__name__}: {err}"
        ) from err


def write_manifest(path: str | Path, model: str, entry: ZooEntry, file: Path) -> dict:
    """Record the fetched file (relative to the manifest), its size and SHA-256; written last, atomically."""
    path = Path(path)
    manifest = {
        "model": model,
        "arch": entry.name,
        "source": entry.source,
        "file": str(file.resolve().relative_to(path.parent.resolve())),
        "bytes": file.stat().st_size,
        "sha256": download.hexdigest(file),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return manifest


# ------------------------------------------------------------------------------------------ finding, reading
def find_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` found in ``folder`` (searched recursively, shallowest first)."""
    for name in names:
        hits = sorted(folder.rglob(name), key=lambda p: len(p.parts))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{what}: none of {list(names)} found in {folder}")


def locate(model: str, entry: ZooEntry, path: str | Path) -> Path:
    """The weight file behind ``path``: a manifest of the weights stage (size checked), a file, or a folder."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"model '{model}': weight path {path} does not exist")
    if path.is_dir():
        try:
            return find_file(path, entry.files, f"model '{model}'")
        except FileNotFoundError as err:
            raise WeightsError(str(err)) from None
    if path.name != MANIFEST:
        return path
    manifest = json.loads(path.read_text())
    file = path.parent / manifest["file"]
    if not file.is_file():
        raise WeightsError(
            f"model '{model}': weight file {file} (listed in {path}) is missing; "
            f"delete {path} and fetch again (snakemake --until weights)"
        )
    if file.stat().st_size != manifest["bytes"]:
        raise WeightsError(
            f"model '{model}': weight file {file} has {file.stat().st_size} bytes, {path} says "
            f"{manifest['bytes']}: corrupt or truncated; delete both and fetch again"
        )
    return file


# loader -> the packages whose nn.Module classes its published checkpoints pickle whole (torchxrayvision's DenseNets
# are saved as models, not state dicts): only these, and torch.nn's own modules, may be rebuilt from such a file
WHOLE_MODELS: dict[str, tuple[str, ...]] = {"torchxrayvision": ("torchxrayvision.",)}


def _whole_model(file: Path, packages: tuple[str, ...]) -> dict:
    """The state dict of a model pickled whole, rebuilt with ``torch.load(weights_only=True)`` allowing exactly
    the module classes the file names, each a torch.nn module or one of ``packages``' (anything else is refused,
    before unpickling)."""
    import importlib

    import torch
    from torch import nn

    classes = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(file):
        module, _, attr = name.rpartition(".")
        cls = (
            getattr(importlib.import_module(module), attr, None)
            if module.startswith(("torch.nn.", *packages))
            else None
        )
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"it pickles {name}, which is not a module class of torch.nn or {', '.join(packages)}")
        classes.append(cls)
    with torch.serialization.safe_globals(classes):
        model = torch.load(file, map_location="cpu", weights_only=True)
    for module in model.modules():  # pickled by an older torch (as torchxrayvision itself patches)
        if not hasattr(module, "_non_persistent_buffers_set"):
            module._non_persistent_buffers_set = set()
    return model.state_dict()


def read(file: str | Path, packages: tuple[str, ...] = ()) -> dict:
    """Tensors of a safetensors file or a plain state dict; never unpickles arbitrary objects (a model pickled
    whole only with module classes of torch.nn or of ``packages``, see :func:`_whole_model`)."""
    import pickle

    import torch

    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not packages:
            raise
        return _whole_model(file, packages)
    for key in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a dict of tensors")
    return state


def map_keys(state: dict, entry: ZooEntry) -> dict:
    """The checkpoint's tensors under the backbone's names: ``entry.prefix`` stripped, renamed, ignored keys left out."""
    ignore = re.compile(entry.ignore) if entry.ignore else None
    out = {}
    for key, tensor in state.items():
        if not key.startswith(entry.prefix):
            continue
        key = key[len(entry.prefix) :]
        for pattern, replacement in entry.renames:
            key = re.sub(pattern, replacement, key)
        if ignore is None or not ignore.fullmatch(key):
            out[key] = tensor
    if not out:
        raise ValueError(f"no tensor is named '{entry.prefix}...' (keys look like {list(state)[:3]})")
    return out


_LAST_LOADED: dict[tuple, dict] = {}


def load(model: str, entry: ZooEntry, path: str | Path) -> dict:
    """The tensors of ``model``'s weights at ``path`` (manifest, file or folder), under the backbone's names.

    The last file read is kept: the cells of a job read it once (``build`` copies the tensors into each
    new model). The key holds the file's size and mtime, so a replaced file is read again.
    """
    file = locate(model, entry, path)
    stat = file.stat()
    key = (model, entry.name, str(file), stat.st_size, stat.st_mtime_ns)
    if key not in _LAST_LOADED:
        _LAST_LOADED.clear()
        try:
            _LAST_LOADED[key] = map_keys(read(file, WHOLE_MODELS.get(entry.loader, ())), entry)
        except Exception as err:  # any reader failure means the same to the user: this file cannot be used
            raise WeightsError(
                f"model '{model}': cannot read weight file {file} (corrupt, truncated or not a "
                f"checkpoint of '{entry.name}'): {err}"
            ) from err
    return _LAST_LOADED[key]


def build(model: str, entry: ZooEntry, path: str | Path | None):
    """``model``'s classifier, with the weights at ``path`` if given; pretrained entries require them."""
    from ftbench.models import backbones

    if path is None:
        if entry.source is not None:
            raise WeightsError(f"model '{model}' is pretrained ({entry.source}) but no weight path was given")
        return backbones.build(entry)
    state = load(model, entry, path)
    try:
        return backbones.build(entry, state)
    except (RuntimeError, ValueError, KeyError) as err:  # missing / unexpected / misshapen tensors
        raise WeightsError(f"model '{model}': the weights in {path} do not fit '{entry.name}': {err}") from err


def check(model: str, entry: ZooEntry, path: str | Path) -> None:
    """Load the weights into the architecture built on the meta device: every key and shape checked, no memory used."""
    import torch

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": intended here
        build(model, entry, path)
