"""Side-by-side performance measurements of ftbench's design choices, in one run on this machine.

    .venv/bin/python bench/perf.py            # all parts, CPU sizes (a few minutes on 2 cores)
    .venv/bin/python bench/perf.py --part lp  # one part: lp | pipeline | dryrun | gpu

1. lp: a linear-probing grid (5 folds x K in {4, 16} x 5 repetitions = 50 cells) trained from the
   embedding cache vs end to end through the frozen backbone; prints the time ratio (target >= 20x).
2. pipeline: training images/s of the real input pipeline (memory-mapped uint8 store -> device ->
   augment/normalise there) vs the same loop on tensors already in memory (target >= 0.9), and vs a
   plain decode-every-epoch loader (PIL + torchvision transforms).
3. dryrun: `snakemake -n` time and job count of the default config's full grid.
4. gpu (only with CUDA): images/s and peak memory of ViT-B/16 LoRA and ResNet-50 FFT at 224 px, bf16 vs fp32;
   then cells side by side (training.concurrent_cells): N = 1, 2, 4, 8 worker processes on the one GPU, each
   training whole synthetic cells as ftbench.train.loop does (ResNet-18 LoRA K=8, ViT-B/16 LoRA on full data, 224 px):
   cells per hour and the speed-up over one cell at a time. On a bare CUDA machine (torch, timm, peft):
       PYTHONPATH=src python bench/perf.py --part gpu
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The gpu part needs torch, timm and peft alone (it runs on a stock GPU image); the CPU parts import the
# workflow's data and training modules where they use them.
from ftbench.models import backbones, inputs, strategies
from ftbench.models.zoo import resolve
from ftbench.train.device import autocast, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def prepare(workdir: Path, patients: int, side: int) -> dict:
    """A synthetic dataset prepared the way the workflow prepares one."""
    from ftbench import splits
    from ftbench.data import store as image_store
    from ftbench.data import tasks
    from ftbench.data.adapters import build_table

    spec = {"adapter": "synthetic", "synthetic": {"patients": patients, "side": side, "seed": 1, "positive_rate": 0.5}}
    table, _ = build_table("bench", spec, workdir)
    store = image_store.build(table, side, workdir / f"images_{side}.npy")
    task, _ = tasks.build(table, {"dataset": "bench", "label": "outcome", "positive": ["poor"]}, "bench")
    task.write_parquet(workdir / "task.parquet")
    split = splits.kfold(task, 5, 0.2, 0, "bench")
    split.write_parquet(workdir / "folds.parquet")
    draws = {}
    for k in (4, 16):
        path = workdir / f"k{k}.parquet"
        splits.fewshot_draws(task, split, k, 5, 0, "bench").write_parquet(path)
        draws.update({f"k{k}r{rep}": str(path) for rep in range(5)})
    return {
        "table": table,
        "store": str(store),
        "task": str(workdir / "task.parquet"),
        "split": str(workdir / "folds.parquet"),
        "draws": draws,
    }


def lp_grid(arch: str, side: int, patients: int, epochs: int) -> None:
    from ftbench.train import embeddings
    from ftbench.train.cell import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare(work, patients, side)
        model = {"name": arch, "arch": arch, "img_size": side}
        training = {
            "batch_size": 32,
            "max_epochs": epochs,
            "patience": epochs,
            "lr": 1e-2,
            "weight_decay": 0.0,
            "augment": True,
            "seed": 0,
        }
        cells = [(regime, fold) for regime in data["draws"] for fold in range(5)]

        def grid(cache: str | None) -> float:
            start = time.perf_counter()
            for regime, fold in cells:
                k, rep = map(int, regime[1:].split("r"))
                settings = {
                    "task": "bench",
                    "fold": fold,
                    "regime": {"name": regime, "k": k, "repetition": rep},
                    "model": model,
                    "strategy": {"name": "lp", "kind": "lp"},
                    "training": training,
                }
                run_cell(
                    settings,
                    data["task"],
                    data["split"],
                    data["store"],
                    str(work / "cells" / regime / str(fold)),
                    data["draws"][regime],
                    threads=torch.get_num_threads(),
                    embeddings=cache,
                )
            return time.perf_counter() - start

        start = time.perf_counter()
        embeddings.build(model, data["store"], str(work / "emb.npy"), threads=torch.get_num_threads())
        cache_build = time.perf_counter() - start
        cached = grid(str(work / "emb.npy"))
        e2e = grid(None)
        print(f"[lp] {arch} at {side}px, {data['table'].height} images, {len(cells)} cells x {epochs} epochs")
        print(f"[lp] end to end through the backbone: {e2e:8.1f} s")
        print(
            f"[lp] from the cache: {cache_build:6.1f} s to build + {cached:6.1f} s to train = {cache_build + cached:8.1f} s"
        )
        print(f"[lp] ratio end-to-end / cached: {e2e / (cache_build + cached):.1f}x  (target >= 20x)")
        from record import record

        record(
            "perf_lp",
            {
                "arch": arch,
                "side": side,
                "images": data["table"].height,
                "cells": len(cells),
                "epochs": epochs,
                "end_to_end_s": e2e,
                "cache_build_s": cache_build,
                "cached_s": cached,
                "ratio": e2e / (cache_build + cached),
            },
        )


def _train_loop(model, optimizer, batches, prep_fn, steps: int, autocast: torch.dtype | None = None) -> float:
    """images/s of `steps` training steps; batches() yields (x, y) and prep_fn(x) makes model input."""
    device = next(model.parameters()).device
    seen, start = 0, None
    for step, (x, y) in enumerate(batches()):
        if step == 2:  # warm-up steps excluded
            start, seen = time.perf_counter(), 0
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = F.cross_entropy(model(prep_fn(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if step + 1 >= steps + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def pipeline(arch: str, side: int, patients: int, steps: int, batch: int) -> None:
    import torchvision.transforms.v2 as T
    from PIL import Image

    from ftbench.data import store as image_store

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp), patients, side)
        entry = resolve(arch, side)
        device = torch.device("cpu")
        store = image_store.load(data["store"])
        n = len(store)
        labels = torch.from_numpy((data["table"]["outcome"] == "poor").to_numpy().astype(np.int64))
        gen = torch.Generator().manual_seed(0)

        def fresh():
            model = backbones.build(entry)
            plan = strategies.apply(model, entry, {"kind": "fft"}, {"lr": 1e-4})
            return model.train(), torch.optim.AdamW(plan.param_groups)

        def cycle(make):
            while True:
                for i in range(0, n - batch + 1, batch):
                    yield make(i)

        # 1. the real pipeline: rows of the memory-mapped store -> uint8 tensor -> device-side prep
        prep = inputs.Preprocess(entry, device, augment=True, generator=gen)
        rows = np.random.default_rng(0).permutation(n)
        real = _train_loop(
            *fresh(),
            lambda: cycle(lambda i: (inputs.load_rows(store, rows[i : i + batch]), labels[rows[i : i + batch]])),
            lambda x: prep(x, train=True),
            steps,
        )
        # 2. the same loop on model-ready tensors already in memory (no loading, no augmentation)
        ready = prep(torch.from_numpy(np.array(store)), train=False)
        memory = _train_loop(
            *fresh(), lambda: cycle(lambda i: (ready[i : i + batch], labels[i : i + batch])), lambda x: x, steps
        )
        # 3. a plain loader: decode every file every epoch with PIL + torchvision transforms
        transform = T.Compose(
            [
                T.Grayscale(3),
                T.Resize((side, side)),
                T.RandomAffine(6, (0.06, 0.06), (0.9, 1.1)),
                T.ColorJitter(0.08, 0.15),
                T.ToImage(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(entry.mean, entry.std),
            ]
        )
        files = data["table"]["file"].to_list()
        plain = _train_loop(
            *fresh(),
            lambda: cycle(
                lambda i: (
                    torch.stack([transform(Image.open(files[j]).convert("L")) for j in range(i, i + batch)]),
                    labels[i : i + batch],
                )
            ),
            lambda x: x,
            steps,
        )
        print(f"[pipeline] {arch} FFT at {side}px, batch {batch}, {steps} steps, {torch.get_num_threads()} threads")
        print(f"[pipeline] real pipeline (memmap uint8 + device-side augment): {real:7.1f} images/s")
        print(f"[pipeline] tensors already in memory:                         {memory:7.1f} images/s")
        print(f"[pipeline] decode every epoch (PIL + torchvision):             {plain:7.1f} images/s")
        print(f"[pipeline] real / in-memory: {real / memory:.2f}  (target >= 0.9);  real / decode: {real / plain:.2f}x")


def dryrun() -> None:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(ROOT / "Snakefile"), "-d", str(ROOT)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    print(f"[dryrun] default config.yaml: {total.group(1) if total else '?'} jobs planned in {seconds:.1f} s")


def gpu() -> None:
    if not torch.cuda.is_available():
        print("[gpu] no CUDA device: skipped")
        return
    device = torch.device("cuda")
    for arch, kind in (("vit_base_patch16_224", "lora"), ("resnet50", "fft")):
        for dtype in (torch.float32, torch.bfloat16):
            entry = resolve(arch, 224)
            model = backbones.build(entry)
            plan = strategies.apply(model, entry, {"kind": kind, "rank": 8}, {"lr": 1e-4})
            model = model.to(device, memory_format=torch.channels_last).train()
            optimizer = torch.optim.AdamW(plan.param_groups, fused=True)
            x = torch.randint(0, 255, (64, 224, 224), dtype=torch.uint8, device=device)
            y = torch.randint(0, 2, (64,), device=device)
            prep = inputs.Preprocess(entry, device, augment=True)
            torch.cuda.reset_peak_memory_stats()
            rate = _train_loop(
                model,
                optimizer,
                lambda: iter(lambda: (x, y), None),
                lambda batch: prep(batch, train=True).contiguous(memory_format=torch.channels_last),
                30,
                autocast=torch.bfloat16 if dtype == torch.bfloat16 else None,
            )
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"[gpu] {arch} {kind} {str(dtype).split('.')[-1]}: {rate:8.1f} images/s, peak {peak:.1f} GiB")
    side_by_side("cuda", threads=max(1, (os.cpu_count() or 1) // max(CONCURRENT)))


# Cells trained side by side: (what, arch, strategy, train / val / test images, epochs, cells per measurement).
# A few-shot cell (K=8: 16 training images, one step an epoch) spends most of its time on the validation pass
# and on the host; a full-data one keeps the GPU busier. Val and test parts are those of a Cohen-sized fold.
CONCURRENT = (1, 2, 4, 8)
SIDE_BY_SIDE = (
    ("ResNet-18 LoRA K=8", "resnet18", {"kind": "lora", "rank": 8}, (16, 128, 128), 20, 16),
    ("ViT-B/16 LoRA full data", "vit_base_patch16_224", {"kind": "lora", "rank": 8}, (512, 128, 128), 2, 8),
)


def synthetic_cell(
    arch: str, spec: dict, sizes: tuple[int, int, int], epochs: int, device: torch.device, batch: int = 32
) -> tuple[float, float]:
    """A cell's work as ftbench.train.cell and ftbench.train.loop do it, on random uint8 images at 224 px (seconds, peak GiB):
    seeds and deterministic algorithms, the model built and moved, then each epoch AdamW steps in bf16 autocast
    with the loss read back, BatchNorm recalibration on the training images, the validation pass; the test pass."""
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generator = seed_everything(0)
    entry = resolve(arch, 224)
    model = backbones.build(entry)
    plan = strategies.apply(model, entry, spec, {"lr": 1e-4})
    if device.type == "cuda" and entry.kind == "cnn":
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    optimizer = torch.optim.AdamW(plan.param_groups, fused=True if device.type == "cuda" else None)
    prep = inputs.Preprocess(entry, device, augment=True, generator=torch.Generator().manual_seed(0))
    x = {
        part: torch.randint(0, 256, (n, 224, 224), dtype=torch.uint8)
        for part, n in zip(("train", "val", "test"), sizes)
    }
    y = torch.arange(sizes[0]) % 2
    norms = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def forward(part: str) -> None:
        with autocast(device):
            for i in range(0, len(x[part]), batch):
                torch.softmax(model(prep(x[part][i : i + batch], train=False)).float(), 1).cpu()

    for _ in range(epochs):
        model.train()
        order = torch.randperm(sizes[0], generator=generator)
        for i in range(0, sizes[0], batch):
            idx = order[i : i + batch]
            with autocast(device):
                logits = model(prep(x["train"][idx], train=True)).float()
            loss = F.cross_entropy(logits, y[idx].to(device))
            if not torch.isfinite(loss):
                raise RuntimeError("diverged")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        if norms:
            with torch.no_grad():
                forward("train")  # in training mode: BatchNorm recalibration
        model.eval()
        with torch.inference_mode():
            forward("val")
    with torch.inference_mode():
        forward("test")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return time.perf_counter() - start, peak


def _cell_worker(conn: Connection, device: str, threads: int) -> None:
    """A worker process as ftbench.train.job starts them: trains the cells it is sent, answers with their figures."""
    torch.set_num_threads(threads)
    torch.zeros(1, device=device)  # the device's context, before the clock starts
    conn.send("ready")
    while (cell := conn.recv()) is not None:
        conn.send(synthetic_cell(*cell, torch.device(device)))


def _cells_side_by_side(conns: list[Connection], cell: tuple, count: int) -> tuple[float, list[tuple[float, float]]]:
    """Wall seconds for ``count`` copies of ``cell`` trained by the workers of ``conns``, each taking the
    next cell when it is done (as ftbench.train.job does), and each cell's figures."""
    start, sent, done = time.perf_counter(), 0, []
    for conn in conns[:count]:
        conn.send(cell)
        sent += 1
    while len(done) < count:
        for conn in wait(conns):
            done.append(conn.recv())
            if sent < count:
                conn.send(cell)
                sent += 1
    return time.perf_counter() - start, done


def side_by_side(device: str, runs=SIDE_BY_SIDE, counts=CONCURRENT, threads: int = 2) -> None:
    """Cells per hour with N = ``counts`` cells at a time on one device, each run a fixed number of cells."""
    context = multiprocessing.get_context("spawn")
    conns, workers = [], []
    try:
        for _ in range(max(counts)):
            ours, theirs = context.Pipe()
            workers.append(context.Process(target=_cell_worker, args=(theirs, device, threads)))
            workers[-1].start()
            theirs.close()
            conns.append(ours)
        for conn in conns:
            assert conn.recv() == "ready"
        for what, arch, spec, sizes, epochs, cells in runs:
            _cells_side_by_side(conns, (arch, spec, sizes, 1), len(conns))  # warm-up: kernels, lazy imports
            print(
                f"[gpu] side by side: {what} ({sizes[0]} training, {sizes[1]} validation, {sizes[2]} test images, "
                f"{epochs} epochs), {cells} cells, {threads} CPU threads a cell"
            )
            alone = None
            for n in counts:
                wall, done = _cells_side_by_side(conns[:n], (arch, spec, sizes, epochs), cells)
                alone = alone or wall
                print(
                    f"[gpu]   N={n}: {wall:7.1f} s, {3600 * cells / wall:7.0f} cells/h, {alone / wall:4.2f}x; a cell "
                    f"{np.mean([s for s, _ in done]):5.1f} s, peak {max(m for _, m in done):4.1f} GiB"
                )
    finally:
        for conn in conns:
            conn.send(None)
        for worker in workers:
            worker.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["lp", "pipeline", "dryrun", "gpu", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("lp", "all"):
        lp_grid("resnet18", side=64, patients=120, epochs=10)
    if args.part in ("pipeline", "all"):
        pipeline("resnet18", side=128, patients=120, steps=12, batch=32)
    if args.part in ("dryrun", "all"):
        dryrun()
    if args.part in ("gpu", "all"):
        gpu()


if __name__ == "__main__":
    main()
