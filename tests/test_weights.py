"""The weights stage: each loader kind's published checkpoint format is fetched from a local hub (127.0.0.1) by the
`ftbench weights` command, then loaded offline into the backbone, tensor for tensor; problems name model and path."""

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cell_settings

from ftbench import cli
from ftbench.models import weights, zoo
from ftbench.models.zoo import ZOO


class Hub(http.server.ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) like the Hugging Face hub's resolve URLs and a plain file host."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._send(body=False)

    def do_GET(self):
        self._send(body=True)

    def _send(self, body: bool):
        data = self.server.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")  # what the hub says for a missing file
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    """A local hub; huggingface_hub is pointed at it as HF_ENDPOINT would (its URL template is fixed at import)."""
    import huggingface_hub.constants as hf

    server = Hub()
    monkeypatch.setattr(hf, "ENDPOINT", server.url)
    monkeypatch.setattr(hf, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield server
    server.shutdown()
    server.server_close()


def _bytes(save, obj) -> bytes:
    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getvalue()


def _safetensors(state: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# ---- one published checkpoint per loader kind: (zoo entry, files to serve, reference backbone, its key prefix) ----
def timm_dinov2(hub):
    """timm hub format: model.safetensors of the whole timm model (classifier included)."""
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_vit", global_pool="token")
    entry = dataclasses.replace(ZOO["dinov2_vits14"], name="test_vit", source="hf-hub:timm/test_vit.tiny", img_size=160)
    hub.files["/timm/test_vit.tiny/resolve/main/model.safetensors"] = _safetensors(source.state_dict())
    source.reset_classifier(0)
    return entry, source


def transformers_clip(hub):
    """PubMedCLIP's format: a transformers CLIPModel state dict (older versions also saved position_ids)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 32,
    }
    config = CLIPConfig(
        vision_config=vision,
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 100,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
    )
    torch.manual_seed(3)
    model = CLIPModel(config)
    state = model.state_dict() | {"vision_model.embeddings.position_ids": torch.arange(17)[None]}
    entry = dataclasses.replace(
        ZOO["pubmedclip"],
        source="hf-hub:org/tiny-pubmedclip",
        img_size=32,
        options={"config": {k: v for k, v in vision.items() if k != "image_size"}},
    )
    hub.files["/org/tiny-pubmedclip/resolve/main/pytorch_model.bin"] = _bytes(torch.save, state)
    reference = CLIPVisionModel(config.vision_config)
    reference.load_state_dict(
        {k.removeprefix("vision_model."): v for k, v in model.state_dict().items() if k.startswith("vision_model.")}
    )
    return entry, reference


SWIN = {"embed_dim": 16, "depths": [1, 2], "num_heads": [1, 2], "window_size": 2, "patch_size": 4}
# transformers 5 name -> the transformers 4 name MedCLIP's checkpoint has (the inverse of the zoo's renames)
SWIN_V4 = [
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
]


def medclip_swin_state(model) -> dict:
    """A Swin's tensors as MedCLIP saved them: transformers-4 names, relative_position_index buffers included."""
    state = {}
    for key, tensor in model.state_dict().items():
        for new, old in SWIN_V4:
            key = key.replace(new, old)
        state[key] = tensor
        if key.endswith("relative_position_bias_table"):
            state[key.replace("_bias_table", "_index")] = torch.zeros(4, 4, dtype=torch.long)
    return state


def medclip_vit(hub):
    """MedCLIP's format: a zip holding pytorch_model.bin of the whole model, vision tower = vision_model.model."""
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(4)
    model = SwinModel(SwinConfig(image_size=32, **SWIN))
    state = {f"vision_model.model.{k}": v for k, v in medclip_swin_state(model).items()}
    state |= {
        "vision_model.projection_head.weight": torch.randn(8, 32),
        "text_model.projection_head.weight": torch.randn(8, 8),
        "logit_scale": torch.tensor(2.0),
    }
    entry = dataclasses.replace(
        ZOO["medclip_vit"],
        source=hub.url + "/pytrial/medclip-vit-pretrained.zip",
        img_size=32,
        options={"config": SWIN},
    )
    hub.files["/pytrial/medclip-vit-pretrained.zip"] = _zip({"pytorch_model.bin": _bytes(torch.save, state)})
    return entry, model


def medclip_resnet(hub):
    """MedCLIP-ResNet's format: torchvision ResNet with `fc` as the 512-d projection, in the same zip layout."""
    import torchvision

    torch.manual_seed(5)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Linear(512, 512, bias=False)
    state = {f"vision_model.model.{k}": v for k, v in model.state_dict().items()} | {"logit_scale": torch.tensor(2.0)}
    entry = dataclasses.replace(
        ZOO["medclip_resnet50"], name="resnet18", source=hub.url + "/pytrial/medclip-pretrained.zip", img_size=32
    )
    hub.files["/pytrial/medclip-pretrained.zip"] = _zip({"pytorch_model.bin": _bytes(torch.save, state)})
    model.fc = torch.nn.Identity()
    return entry, model


KINDS = {
    "timm": timm_dinov2,
    "transformers_clip": transformers_clip,
    "transformers_swin": medclip_vit,
    "torchvision": medclip_resnet,
}


def fetch(hub, monkeypatch, tmp_path, make) -> tuple:
    """Serve a published checkpoint, run `ftbench weights` on it, stop the hub and force offline."""
    entry, reference = make(hub)
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    manifest = tmp_path / "resources" / "weights" / "tiny" / "weights.json"
    assert cli.main(["weights", "--model", "tiny", "--arch", "tiny", "--out", str(manifest)]) == 0
    hub.shutdown()
    hub.server_close()  # from here on, any download attempt would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return entry, reference.eval(), manifest


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_published_checkpoint_loads_offline_tensor_for_tensor(kind, hub, monkeypatch, tmp_path):
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, KINDS[kind])
    record = json.loads(manifest.read_text())
    file = manifest.parent / record["file"]
    assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and record["bytes"] == file.stat().st_size
    assert not list(manifest.parent.glob("*.zip"))  # archives are unpacked, then removed

    model = weights.build("tiny", entry, manifest).eval()
    backbone = getattr(model.backbone, "model", model.backbone)  # transformers towers are wrapped
    ours, theirs = backbone.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(2, 3, entry.img_size, entry.img_size)
    expected = reference(pixel_values=x).pooler_output if backbone is not model.backbone else reference(x)
    assert torch.allclose(model.features(x), expected, atol=1e-6)


def test_medclip_swin_renames_agree_with_transformers_own_conversion(tmp_path):
    """transformers 5 converts 4.x Swin checkpoints itself when it loads a folder: our key map gives the same model."""
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(6)
    config = SwinConfig(image_size=32, **SWIN)
    source = SwinModel(config)
    config.save_pretrained(tmp_path)
    torch.save(medclip_swin_state(source), tmp_path / "pytorch_model.bin")
    converted = SwinModel.from_pretrained(tmp_path).eval()
    entry = dataclasses.replace(ZOO["medclip_vit"], prefix="", img_size=32, options={"config": SWIN})
    ours = weights.build("medclip_vit", entry, tmp_path / "pytorch_model.bin").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours.features(x), converted(pixel_values=x).pooler_output, atol=1e-6)


def test_dinov2_position_embeddings_are_resampled_to_the_input_size(hub, monkeypatch, tmp_path):
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, timm_dinov2)
    model = weights.build("tiny", dataclasses.replace(entry, img_size=96), manifest)
    ours, theirs = model.backbone.state_dict(), reference.state_dict()
    assert ours["pos_embed"].shape == (1, 1 + 6 * 6, 64) and theirs["pos_embed"].shape == (1, 1 + 10 * 10, 64)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k != "pos_embed")


def test_user_given_file_or_folder_needs_no_download(tmp_path):
    import timm

    torch.manual_seed(7)
    source = timm.create_model("test_resnet")
    (tmp_path / "mine").mkdir()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "mine" / "pytorch_model.bin")  # a training checkpoint
    entry = zoo.resolve("test_resnet", img_size=32, pretrained=True)
    for path in (tmp_path / "mine" / "pytorch_model.bin", tmp_path / "mine"):
        ours, theirs = weights.build("mine", entry, path).backbone.state_dict(), source.state_dict()
        assert ours and all(torch.equal(tensor, theirs[key]) for key, tensor in ours.items())


def test_missing_or_corrupt_weights_name_model_and_path(hub, monkeypatch, tmp_path):
    entry, _, manifest = fetch(hub, monkeypatch, tmp_path, timm_dinov2)
    file = manifest.parent / json.loads(manifest.read_text())["file"]
    data = file.read_bytes()

    name = re.escape(str(file))
    file.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(weights.WeightsError, match=f"model 'tiny': weight file {name} has .* corrupt or truncated"):
        weights.build("tiny", entry, manifest)
    file.write_bytes(b"\0" * len(data))  # right size, garbage
    with pytest.raises(weights.WeightsError, match=f"model 'tiny': cannot read weight file {name}"):
        weights.build("tiny", entry, manifest)
    file.unlink()
    with pytest.raises(weights.WeightsError, match=f"model 'tiny': weight file {name} .* is missing"):
        weights.build("tiny", entry, manifest)
    nowhere = re.escape(str(tmp_path / "nowhere"))
    with pytest.raises(weights.WeightsError, match=f"model 'tiny': weight path {nowhere} does not exist"):
        weights.build("tiny", entry, tmp_path / "nowhere")
    with pytest.raises(weights.WeightsError, match="model 'tiny' is pretrained .* no weight path"):
        weights.build("tiny", entry, None)


def test_a_source_without_the_weight_file_names_model_and_source(hub, tmp_path):
    entry = dataclasses.replace(ZOO["pubmedclip"], source="hf-hub:org/empty")
    with pytest.raises(
        weights.WeightsError,
        match=r"model 'pubmedclip': cannot fetch hf-hub:org/empty .* none of the "
        r"weight files \['model.safetensors', 'pytorch_model.bin'\]",
    ):
        weights.fetch("pubmedclip", entry, tmp_path)


@pytest.mark.parametrize("offline_mode", [False, True])
def test_an_unreachable_hub_is_named_not_blamed_on_missing_files(monkeypatch, tmp_path, offline_mode):
    """No network (a closed port) or HF_HUB_OFFLINE: the error names the host and the docs, not 'none of the files'."""
    import socket

    import huggingface_hub.constants as hf
    import huggingface_hub.utils._http as hf_http

    with socket.socket() as s:  # a port nothing listens on: connection refused, as on a machine without network
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(hf, "ENDPOINT", f"http://{host}")
    monkeypatch.setattr(
        hf, "HUGGINGFACE_CO_URL_TEMPLATE", f"http://{host}" + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", offline_mode)
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # the hub client's retries, without the waiting
    entry = dataclasses.replace(ZOO["pubmedclip"], source="hf-hub:org/model")
    reason = "HF_HUB_OFFLINE is set" if offline_mode else "Connection refused"
    with pytest.raises(
        weights.WeightsError,
        match=rf"model 'pubmedclip': cannot reach {host} to fetch hf-hub:org/model "
        rf"\(.*{reason}.*\).*see docs/models.md, 'Offline machines'",
    ):
        weights.fetch("pubmedclip", entry, tmp_path)


def test_an_unreachable_url_host_is_named(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    entry = dataclasses.replace(ZOO["medclip_vit"], source=f"http://{host}/medclip-vit-pretrained.zip")
    with pytest.raises(
        weights.WeightsError, match=f"model 'medclip_vit': cannot reach {host} to fetch .*Connection refused"
    ):
        weights.fetch("medclip_vit", entry, tmp_path)


def test_weights_of_another_architecture_are_refused_with_the_path(tmp_path):
    import timm

    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.bin")
    entry = zoo.resolve("test_vit", pretrained=True)
    with pytest.raises(weights.WeightsError, match=f"model 'vit': the weights in {tmp_path / 'resnet.bin'} do not fit"):
        weights.build("vit", entry, tmp_path / "resnet.bin")


class _Payload:
    """Unpickling this would create `marker`: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_arbitrary_pickled_objects_are_never_loaded(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "evil.bin")
    with pytest.raises(weights.WeightsError, match=f"model 'evil': cannot read weight file {tmp_path / 'evil.bin'}"):
        weights.build("evil", zoo.resolve("test_resnet", pretrained=True), tmp_path / "evil.bin")
    assert not marker.exists()


def test_config_names_a_missing_weight_path(raw_config, tmp_path):
    from ftbench.plan.config import ConfigError, validate

    raw_config["models"]["tiny_vit"]["weights"] = str(tmp_path / "absent.safetensors")
    with pytest.raises(ConfigError, match=f"config key 'models.tiny_vit.weights': weight path {tmp_path}/absent"):
        validate(raw_config)


def test_cell_loads_local_weights_before_training_and_reports_gflops(synthetic_data, tmp_path):
    import timm

    from ftbench.train.cell import run_cell

    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.bin")
    settings = cell_settings("test_resnet", "lp", 1e-2, training={"max_epochs": 1}, model={"pretrained": True})
    data = synthetic_data
    with pytest.raises(weights.WeightsError, match="model 'test_resnet'.*weight path .*absent.bin does not exist"):
        run_cell(
            settings,
            data["task_path"],
            data["split"],
            data["store"],
            str(tmp_path / "a"),
            weights_path=str(tmp_path / "absent.bin"),
        )
    assert not (tmp_path / "a").exists()  # nothing trained, nothing written
    run = run_cell(
        settings,
        data["task_path"],
        data["split"],
        data["store"],
        str(tmp_path / "b"),
        weights_path=str(tmp_path / "w.bin"),
    )
    assert run["status"] == "ok" and 0 < run["gflops"] < 1
    assert json.loads((tmp_path / "b" / "run.json").read_text())["gflops"] == run["gflops"]


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_default_plan_downloads_weights_once_and_cells_depend_on_them(tmp_path):
    """`snakemake -n` with config.yaml (no network: nothing runs): one weights job per pretrained model, and a
    training cell reads its model's manifest."""
    from ftbench.plan.config import load

    config = load(ROOT / "config.yaml")
    cell = "results/cells/cohen_death/medclip_vit/lora_r8/k2"  # the job training every fold of 2-shot
    out = _snakemake(tmp_path, "-n", "all_weights", cell).stdout
    fetched = {line.split("model=")[1] for line in out.splitlines() if "wildcards: model=" in line}
    assert fetched == set(config["benchmark"]["models"]) and len(fetched) == 11
    assert out.count("rule weights:") == 11
    train = next(job for job in out.split("rule ") if job.startswith("train:"))
    assert "resources/weights/medclip_vit/weights.json" in train.split("output:")[0]
    assert not (tmp_path / "resources").exists()


@pytest.mark.slow
def test_weights_rule_runs_on_the_submitting_node(hub, tmp_path):
    """With the Slurm executor and no working Slurm here, the weights job still runs: it is a localrule (a Snakemake
    dry run does not say which jobs are local). It downloads through timm's source for a timm name, from HF_ENDPOINT."""
    import timm

    hub.files["/timm/test_vit.r160_in1k/resolve/main/model.safetensors"] = _safetensors(
        timm.create_model("test_vit").state_dict()
    )
    preset = tmp_path / "preset.yaml"
    preset.write_text("benchmark: {models: [vit]}\nmodels: {vit: {arch: test_vit.r160_in1k, pretrained: true}}\n")
    _snakemake(
        tmp_path,
        "--configfile",
        str(ROOT / "workflow/presets/demo.yaml"),
        str(preset),
        "--executor",
        "slurm",
        "--jobs",
        "1",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "all_weights",
        env={"HF_ENDPOINT": hub.url},
    )
    manifest = json.loads((tmp_path / "resources/weights/vit/weights.json").read_text())
    assert manifest["source"] == "timm:test_vit.r160_in1k" and manifest["file"] == "model.safetensors"


@pytest.mark.parametrize("kind, key", [("transformers_clip", "embeddings.position_embedding.weight")])
def test_a_tower_pretrained_at_one_size_runs_at_another(kind, key, hub, monkeypatch, tmp_path):
    """A checkpoint made at 32 px (a 4x4 patch grid) builds at 48 px (6x6): the position embedding's class
    token is kept and its patch grid resampled bicubically; every other tensor is the checkpoint's."""
    entry, reference, manifest = fetch(hub, monkeypatch, tmp_path, KINDS[kind])
    model = weights.build("tiny", dataclasses.replace(entry, img_size=48), manifest).eval()
    backbone = getattr(model.backbone, "model", model.backbone)
    ours, theirs = backbone.state_dict(), reference.state_dict()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == [key]
    grid = theirs[key][1:].reshape(4, 4, -1).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True)
    assert torch.equal(ours[key][0], theirs[key][0])
    assert torch.allclose(ours[key][1:], expected[0].permute(1, 2, 0).reshape(36, -1), atol=1e-6)
    assert torch.isfinite(model(torch.randn(2, 3, 48, 48))).all()
