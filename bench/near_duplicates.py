"""What the near-duplicate check costs, and how far its threshold lies from copies and from distinct images.

    python bench/near_duplicates.py [--sample ../shared/data/cohen-sample] [--scale 14000]

On the Cohen sample (real radiographs): seconds per image to decode, to make the thumbnail, and to search
all of them (images.near_pairs); the mean absolute difference at 64 x 64 between each radiograph and its copy
as JPEG q98 and resized to 63 px, and between distinct radiographs (every pair: the sample is small), and
between different patients' images of the synthetic dataset (the demo's size 64, and 128). Then the search
on ``--scale`` thumbnails (NY-SBU's ~14k images), made from the sample's radiographs by random crops,
shifts, flips and contrast: how many pairs its k-d tree leaves to compare against all pairs, and its time.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from record import record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ftbench.data import images, synthetic  # noqa: E402


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(images.thumbnail(a).astype(np.int16) - images.thumbnail(b).astype(np.int16)).mean())


def _distinct_min(thumbs: np.ndarray, groups: np.ndarray) -> float:
    """The smallest mean absolute difference between thumbnails of different groups (every pair)."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.int16)
    best = np.inf
    for i in range(len(flat) - 1):
        other = groups[i + 1 :] != groups[i]
        if other.any():
            best = min(best, float(np.abs(flat[i + 1 :][other] - flat[i]).mean(axis=1).min()))
    return best


def _variant(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Another image made from ``img``: a random crop (70-100 %), a flip, contrast and brightness, noise."""
    h, w = img.shape
    ch, cw = int(h * rng.uniform(0.7, 1)), int(w * rng.uniform(0.7, 1))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = images.resize(img[y : y + ch, x : x + cw], images.NEAR_SIDE).astype(np.float64)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = out * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, 3, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default=str(ROOT.parent / "shared" / "data" / "cohen-sample"))
    parser.add_argument("--scale", type=int, default=14000)
    args = parser.parse_args()
    files = sorted(p for p in (Path(args.sample) / "images").iterdir() if p.is_file())
    start = time.perf_counter()
    originals = [images.decode(f) for f in files]
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    thumbs = np.stack([images.thumbnail(p) for p in originals])
    thumb_s = time.perf_counter() - start
    start = time.perf_counter()
    found = images.near_pairs(thumbs)
    search_s = time.perf_counter() - start
    jpeg, small = [], []
    for p in originals:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, "JPEG", quality=98)
        jpeg.append(_mean_diff(np.asarray(Image.open(buf).convert("L")), p))
        resized = np.asarray(Image.fromarray(p).resize((63, 63), Image.Resampling.BILINEAR, reducing_gap=3.0))
        small.append(_mean_diff(resized, p))
    synthetic_min = {}
    for side in (64, 128):
        table = synthetic.generate(Path("/tmp") / f"ftbench_near_{side}", patients=120, side=side, corrupt=0)
        syn = np.stack([images.thumbnail(images.decode(f)) for f in table["file"]])
        synthetic_min[side] = _distinct_min(syn, table["patient_id"].to_numpy())
    rng = np.random.default_rng(0)
    many = np.stack([_variant(rng, originals[i % len(originals)]) for i in range(args.scale)])
    start = time.perf_counter()
    compared = sum(len(rest) for rest in images.candidates(many))
    candidates_s = time.perf_counter() - start
    scale_pairs = images.near_pairs(many)
    scale_s = time.perf_counter() - start - candidates_s
    figures = {
        "threshold": images.NEAR,
        "sample_images": len(files),
        "decode_seconds_per_image": decode_s / len(files),
        "thumbnail_seconds_per_image": thumb_s / len(files),
        "search_seconds_sample": search_s,
        "near_pairs_in_sample": [(files[i].name, files[j].name, round(d, 2)) for i, j, d in found],
        "copy_jpeg_q98_max": max(jpeg),
        "copy_resized_63px_max": max(small),
        "distinct_radiographs_min": _distinct_min(thumbs, np.arange(len(thumbs))),
        "synthetic_other_patient_min": synthetic_min,
        "scale_images": args.scale,
        "scale_pairs_compared": compared,
        "scale_all_pairs": args.scale * (args.scale - 1) // 2,
        "scale_candidates_seconds": candidates_s,
        "scale_search_seconds": scale_s,
        "scale_near_pairs": len(scale_pairs),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    record("near_duplicates", figures)


if __name__ == "__main__":
    main()
