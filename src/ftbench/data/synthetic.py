"""A deterministic synthetic CXR-like dataset with a known, tunable prognostic signal.

Each patient has a few frontal images: a bright thorax with two dark lung fields, noise, a per-image
shift and a per-centre brightness/contrast. Positive patients (the poor outcome) carry diffuse opacities
in the lower lung fields whose strength is ``signal``; with ``signal: 0`` the label is pure chance.
Each image is taken on a distinct day of the stay (0-14), in an order other than the files', so that a task's
``images: first`` really chooses; the last ``untimed`` patients have no times (the selection rule's other case).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

DEFAULTS = {
    "patients": 120,
    "images_per_patient": [1, 3],
    "positive_rate": 0.4,
    "signal": 1.0,
    "centres": 1,
    "side": 128,
    "seed": 0,
    "corrupt": 0,
    "untimed": 0,
}
STAY_DAYS = 15


def _image(
    rng: np.random.Generator, side: int, positive: bool, signal: float, gain: float, offset: float
) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] / side
    dy, dx = rng.normal(0, 0.02, size=2)
    body = ((xx - 0.5 - dx) / 0.45) ** 2 + ((yy - 0.55 - dy) / 0.5) ** 2 < 1
    img = np.where(body, 170.0, 25.0)
    for cx in (0.32, 0.68):
        lung = ((xx - cx - dx) / 0.14) ** 2 + ((yy - 0.5 - dy) / 0.3) ** 2 < 1
        img = np.where(lung, 55.0, img)
        if positive:
            for _ in range(3):
                ox, oy = cx + dx + rng.normal(0, 0.05), 0.62 + dy + rng.normal(0, 0.06)
                blob = np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * 0.05**2)))
                img += lung * blob * 90.0 * signal
    img = img * gain + offset + rng.normal(0, 12.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(out_dir: str | Path, **options) -> pl.DataFrame:
    """Write the images as PNG files under ``out_dir`` and return the standard table (see ``table.py``)."""
    opts = {**DEFAULTS, **options}
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(opts["seed"])
    days = np.random.default_rng([opts["seed"], 1])  # its own stream: the pixels stay those of the seed
    lo, hi = opts["images_per_patient"]
    centre_gain = rng.uniform(0.85, 1.15, size=opts["centres"])
    centre_offset = rng.uniform(-15, 15, size=opts["centres"])
    rows = []
    for p in range(opts["patients"]):
        positive = bool(rng.random() < opts["positive_rate"])
        centre = int(rng.integers(opts["centres"]))
        count = int(rng.integers(lo, hi + 1))
        untimed = p >= opts["patients"] - opts["untimed"]
        times = days.choice(STAY_DAYS, size=count, replace=False).astype(float)
        for i in range(count):
            image_id = f"p{p:04d}_{i}"
            pixels = _image(rng, opts["side"], positive, opts["signal"], centre_gain[centre], centre_offset[centre])
            path = out_dir / "images" / f"{image_id}.png"
            Image.fromarray(pixels).save(path)
            rows.append(
                {
                    "image_id": image_id,
                    "patient_id": f"p{p:04d}",
                    "file": str(path.resolve()),
                    "centre": f"centre{centre}",
                    "view": "PA",
                    "time": None if untimed else float(times[i]),
                    "time_source": None if untimed else "synthetic: day of the stay",
                    "outcome": "poor" if positive else "good",
                }
            )
    for row in rows[: opts["corrupt"]]:  # deliberately broken files exercise the rejects path
        data = Path(row["file"]).read_bytes()
        Path(row["file"]).write_bytes(data[: len(data) // 3])
    return pl.DataFrame(rows, schema_overrides={"time": pl.Float64, "time_source": pl.String})
