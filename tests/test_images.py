"""Decoding: every format, mode and bit depth of the datasets becomes grayscale uint8."""

import numpy as np
import pytest
from PIL import Image

from ftbench.data.images import DECODE_ERRORS, decode, resize


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_decode_modes(tmp_path, mode, fmt):
    if fmt == "jpeg" and mode in ("RGBA", "P", "I;16"):
        pytest.skip("JPEG cannot store this mode")
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    if mode == "I;16":  # 16-bit grayscale, as CR/DX exports often are
        img = Image.fromarray(ramp.astype(np.uint16) * 257 // 4)
        assert img.mode == "I;16"
    else:
        img = Image.fromarray(ramp).convert("RGB").convert(mode)
    path = tmp_path / f"x.{fmt}"
    img.save(path)
    out = decode(path)
    assert out.dtype == np.uint8 and out.shape == (30, 40)
    assert out[:, 0].mean() < 20 and out[:, -1].mean() > 200  # the ramp survives


def test_rgba_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :5, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode(tmp_path / "a.png")
    assert out[:, :5].min() > 150 and out[:, 5:].max() == 0


@pytest.mark.parametrize("content", [b"", b"not an image", None])
def test_broken_files_raise_decode_errors(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is None:
        Image.fromarray(np.zeros((50, 50), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:60])  # truncated
    else:
        path.write_bytes(content)
    with pytest.raises(DECODE_ERRORS):
        decode(path)


def test_resize_keeps_range():
    out = resize(np.full((300, 200), 77, np.uint8), 32)
    assert out.shape == (32, 32) and out.min() == out.max() == 77
