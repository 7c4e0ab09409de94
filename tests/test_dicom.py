"""DICOM radiographs: the display pipeline (MONOCHROME1, 16-bit, windowing), views, unusable files."""

import numpy as np
import pytest
from fixtures_dicom import make_dicom, radiograph

from ftbench.data import dicom, store
from ftbench.data.adapters import build_table
from ftbench.data.images import DECODE_ERRORS, decode


def _bright_left(out: np.ndarray) -> bool:
    half = out.shape[1] // 2
    return out[:, :half].mean() > out[:, half:].mean() + 100


@pytest.mark.parametrize("bits_stored, high", [(8, 255), (12, 4095), (16, 65535)])
def test_monochrome2_keeps_and_monochrome1_inverts_at_any_depth(tmp_path, bits_stored, high):
    stored = radiograph(high=high)
    m2 = decode(make_dicom(tmp_path / "m2.dcm", stored, bits_stored=bits_stored))
    # MONOCHROME1: the same anatomy stored the other way round (low values display bright)
    m1 = decode(
        make_dicom(
            tmp_path / "m1.dcm",
            (high - stored.astype(np.int64)).astype(stored.dtype),
            photometric="MONOCHROME1",
            bits_stored=bits_stored,
        )
    )
    assert m2.dtype == m1.dtype == np.uint8 and m2.shape == (48, 40)
    assert _bright_left(m2) and _bright_left(m1)
    assert m2.min() == 0 and m2.max() == 255  # the full 8-bit range is used, whatever the stored depth
    assert np.abs(m1.astype(int) - m2.astype(int)).max() <= 1


def test_window_centre_width_is_applied(tmp_path):
    stored = np.tile(np.linspace(0, 4095, 64), (8, 1)).astype(np.uint16)
    plain = decode(make_dicom(tmp_path / "plain.dcm", stored))
    windowed = decode(make_dicom(tmp_path / "win.dcm", stored, window=(2048, 410)))
    assert (plain == 0).mean() < 0.05
    # outside [1843, 2253] everything saturates: about 45% of the ramp each side
    assert 0.35 < (windowed == 0).mean() < 0.5 and 0.35 < (windowed == 255).mean() < 0.5


def test_rescale_slope_intercept_before_windowing(tmp_path):
    stored = np.tile(np.linspace(0, 1000, 64), (8, 1)).astype(np.uint16)
    # the window is given in rescaled units: 2*stored - 1000 in [-1000, 1000], window around 0
    windowed = decode(make_dicom(tmp_path / "r.dcm", stored, rescale=(2.0, -1000.0), window=(0, 400)))
    assert 0.3 < (windowed == 0).mean() < 0.5 and 0.3 < (windowed == 255).mean() < 0.5


def test_dicom_without_pixel_data_is_rejected_with_the_reason(tmp_path):
    path = make_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ValueError, match="DICOM without pixel data"):
        decode(path)


@pytest.mark.parametrize("content", [b"", b"not a dicom at all" * 20])
def test_broken_dicom_raises_a_decode_error(tmp_path, content):
    (tmp_path / "x.dcm").write_bytes(content)
    with pytest.raises(DECODE_ERRORS):
        decode(tmp_path / "x.dcm")


def test_build_table_and_store_read_dicom(tmp_path):
    good = [
        make_dicom(tmp_path / f"{i}.dcm", radiograph(), patient=f"p{i}", photometric=photo)
        for i, photo in enumerate(["MONOCHROME2", "MONOCHROME2"])
    ]
    good.append(
        make_dicom(tmp_path / "2.dcm", (4095 - radiograph()).astype(np.uint16), patient="p2", photometric="MONOCHROME1")
    )
    nopix = make_dicom(tmp_path / "3.dcm", None, patient="p3")
    csv = tmp_path / "m.csv"
    csv.write_text("file,patient_id,y\n" + "".join(f"{p.name},p{i},1\n" for i, p in enumerate([*good, nopix])))
    table, rejects = build_table("d", {"adapter": "manifest", "path": str(csv)}, tmp_path)
    assert table.height == 3 and rejects["kind"].to_list() == ["unreadable image"]
    assert "DICOM without pixel data" in rejects["reason"][0]
    pixels = np.load(store.build(table, 32, tmp_path / "s.npy"))
    assert all(_bright_left(img) for img in pixels)


@pytest.mark.parametrize(
    "fields, view",
    [
        ({"view": "PA"}, "PA"),
        ({"view": "AP"}, "AP"),
        ({"view": "LL"}, "lateral"),
        ({"view": "LATERAL"}, "lateral"),
        ({"view": None, "series_description": "CHEST AP PORT"}, "AP"),
        ({"view": None, "series_description": "", "study_description": "XR CHEST PA ONLY"}, "PA"),
        ({"view": None, "study_description": "CHEST ROUTINE PA AP AND LATERAL"}, "ambiguous"),
        ({"view": None, "series_description": "CHEST PA/AP"}, "frontal"),
        ({"view": None}, "unknown"),
    ],
)
def test_view_from_view_position_or_descriptions(tmp_path, fields, view):
    path = make_dicom(tmp_path / "v.dcm", radiograph(), **fields)
    header = dicom.header(path)
    assert header["view"] == view
    assert (dicom.not_frontal_chest(header) is None) == (view in ("PA", "AP", "frontal"))


def test_non_chest_body_part_is_not_kept(tmp_path):
    header = dicom.header(make_dicom(tmp_path / "a.dcm", radiograph(), body_part="ABDOMEN", view="AP"))
    assert "ABDOMEN" in dicom.not_frontal_chest(header)


def test_rgb_secondary_capture_becomes_luminance(tmp_path):
    from pydicom import dcmread

    gray = radiograph(high=255)
    path = make_dicom(tmp_path / "g.dcm", gray, bits_stored=8)
    ds = dcmread(path)
    ds.set_pixel_data(np.repeat(gray[..., None], 3, axis=2), photometric_interpretation="RGB", bits_stored=8)
    ds.save_as(path)
    out = decode(path)
    assert out.shape == gray.shape and _bright_left(out)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntaxes_decode_like_the_uncompressed_file(tmp_path, syntax):
    import pydicom.uid
    from pydicom import dcmread

    path = make_dicom(tmp_path / "c.dcm", (4095 - radiograph()).astype(np.uint16), photometric="MONOCHROME1")
    plain = decode(path)
    ds = dcmread(path)
    ds.compress(getattr(pydicom.uid, syntax))  # RLE natively, JPEG 2000 through pylibjpeg-openjpeg
    ds.save_as(path)
    assert dcmread(path).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    assert np.array_equal(decode(path), plain)
