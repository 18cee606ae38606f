"""3-D attacks on series: only masked voxels / recorded slices change, headers and untouched files stay."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medforensics.synth.tamper3d import (
    SeriesError,
    inject_lesion_3d,
    read_dicom_series,
    read_nifti_volume,
    remove_lesion_3d,
    tamper_series,
    write_nifti_volume,
)

N_SLICES = 12
STEP = 2.5


def _write_series(folder: Path, n: int = N_SLICES) -> list[Path]:
    """12 slices built from CT_small.dcm's header: positions moved along the normal, files written in
    shuffled order (names do not follow position), one SOP Instance UID per slice, noisy pixels."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(0)
    series_uid = generate_uid()
    folder.mkdir(parents=True)
    order = rng.permutation(n)
    paths = []
    for i, k in enumerate(order):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(n - k)  # instance numbers run against the position
        ipp = [float(v) for v in base.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + STEP * int(k)]
        arr = base.pixel_array.astype(np.int32) + rng.integers(-20, 21, base.pixel_array.shape)
        ds.PixelData = np.clip(arr, 0, 4095).astype(np.int16).tobytes()
        p = folder / f"f{i:02d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture()
def series_dir(tmp_path: Path) -> Path:
    d = tmp_path / "series"
    _write_series(d)
    return d


def test_read_orders_by_position(series_dir: Path):
    s = read_dicom_series(series_dir)
    assert s.volume.shape == (N_SLICES, 128, 128)
    assert np.all(np.diff(s.positions) > 0)
    assert s.spacing[0] == pytest.approx(STEP)
    assert s.modality == "ct"
    assert s.volume.min() < -500  # HU (intercept −1024 applied)


@pytest.mark.parametrize("attack", [inject_lesion_3d, remove_lesion_3d])
def test_attack_changes_only_mask_and_record_slices(series_dir: Path, attack):
    s = read_dicom_series(series_dir)
    res = attack(s.volume, s.spacing, modality="ct", radius_mm=5.0, rng=7)
    changed = res.volume != s.volume
    assert changed.any()
    assert not (changed & ~res.mask).any()
    zs = np.nonzero(res.mask.any(axis=(1, 2)))[0]
    first, last, y, x, r = res.record
    assert (first, last) == (zs.min(), zs.max())
    assert 0 < first or last < N_SLICES - 1  # a 5 mm lesion does not fill the 30 mm stack
    assert res.mask[:, y, x].any() and r > 1
    again = attack(s.volume, s.spacing, modality="ct", radius_mm=5.0, rng=7)
    assert np.array_equal(again.volume, res.volume) and again.record == res.record
    other = attack(s.volume, s.spacing, modality="ct", radius_mm=5.0, rng=8)
    assert not np.array_equal(other.volume, res.volume)


def test_inject_then_remove_on_lung_phantom():
    """A body of −800 HU lung (noise σ 15 HU) inside air: the nodule reaches its HU level, removal
    brings the centre back to lung, and both keep a noise floor (not a smooth patch)."""
    rng = np.random.default_rng(0)
    vol = np.full((10, 96, 96), -1000.0, np.float32)
    vol[:, 8:88, 8:88] = -800.0
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    sp, centre = (2.0, 0.8, 0.8), (5, 48, 48)
    inj = inject_lesion_3d(vol, sp, center=centre, radius_mm=5.0, rng=1)
    level = inj.details["level"]
    assert 20 <= level <= 80 and inj.details["noise_std"] == pytest.approx(15, rel=0.3)
    core = inj.volume[5, 45:52, 45:52]
    assert core.mean() == pytest.approx(level, abs=40) and core.std() > 5
    assert inj.first_slice >= 1 and inj.last_slice <= 8
    rem = remove_lesion_3d(inj.volume, sp, center=centre, radius_mm=7.0, rng=1)
    back = rem.volume[5, 45:52, 45:52]
    assert back.mean() == pytest.approx(-800, abs=60) and 5 < back.std() < 40


@pytest.mark.parametrize("attack", ["inject", "remove"])
def test_write_back_keeps_headers_and_untouched_files(series_dir: Path, tmp_path: Path, attack: str):
    out = tmp_path / "out"
    gt = tamper_series(series_dir, out, attack, seed=3, radius_mm=4.0)
    assert json.loads((out / "ground_truth.json").read_text())["record"] == gt["record"]
    first, last = gt["record"][:2]
    files = {f["path"]: f for f in gt["written"]["files"]}
    assert set(files) == {p.name for p in series_dir.iterdir()}
    modified_slices = sorted(f["slice"] for f in files.values() if f["modified"])
    assert modified_slices and modified_slices[0] >= first and modified_slices[-1] <= last
    assert len(modified_slices) < N_SLICES
    for name, f in files.items():
        a, b = (series_dir / name).read_bytes(), (out / name).read_bytes()
        if not f["modified"]:
            assert a == b
            continue
        assert a != b
        d0, d1 = pydicom.dcmread(series_dir / name), pydicom.dcmread(out / name)
        for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "ImagePositionPatient",
                   "InstanceNumber", "RescaleIntercept", "RescaleSlope", "BitsStored", "PixelRepresentation"):
            assert d0.get(kw) == d1.get(kw), kw
        assert d0.file_meta.TransferSyntaxUID == d1.file_meta.TransferSyntaxUID == f["transfer_syntax"]
        a0, a1 = d0.pixel_array, d1.pixel_array
        assert a1.dtype == a0.dtype
        assert a1.min() >= -(2 ** 15) and a1.max() < 2 ** 15
        assert (a0 != a1).any()
    # changed voxels lie inside the ground-truth mask only
    s0, s1 = read_dicom_series(series_dir), read_dicom_series(out)
    diff = s1.volume != s0.volume
    zs, ys, xs = np.nonzero(diff)
    assert zs.min() >= first and zs.max() <= last
    y, x, r = gt["record"][2:]
    assert np.hypot(ys - y, xs - x).max() <= 2.0 * r + 2


def test_stored_range_is_clipped(series_dir: Path, tmp_path: Path):
    """A lesion far above the stored range is clipped to BitsStored, not wrapped around."""
    from medforensics.synth.tamper3d import write_dicom_series

    s = read_dicom_series(series_dir)
    for ds in s.datasets:
        ds.BitsStored = 12
        ds.HighBit = 11
    res = inject_lesion_3d(s.volume, s.spacing, center=(6, 64, 64), radius_mm=5.0, intensity=50_000.0, rng=0)
    info = write_dicom_series(s, res, tmp_path / "clip")
    name = next(f["path"] for f in info["files"] if f["slice"] == 6)
    arr = pydicom.dcmread(tmp_path / "clip" / name).pixel_array
    assert arr.max() == 2047 and arr.dtype == np.int16


def test_refuses_overwrite_and_bad_input(series_dir: Path, tmp_path: Path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x.txt").write_text("keep me")
    with pytest.raises(SeriesError, match="refusing to overwrite"):
        tamper_series(series_dir, out, "inject", seed=0)
    assert (out / "x.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SeriesError, match="no DICOM"):
        read_dicom_series(empty)
    with pytest.raises(ValueError, match="unknown attack"):
        tamper_series(series_dir, tmp_path / "o2", "explode")
    with pytest.raises(ValueError, match="outside the stack"):
        tamper_series(series_dir, tmp_path / "o3", "inject", center=(40, 1, 1))


def test_two_series_need_a_uid(series_dir: Path, tmp_path: Path):
    _write_series(series_dir / "second", n=3)
    with pytest.raises(SeriesError, match="holds 2 series"):
        read_dicom_series(series_dir)


def test_nifti_round_trip_keeps_affine(tmp_path: Path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(1)
    data = (rng.normal(40, 15, (48, 40, 10)) - 1000 * (rng.random((48, 40, 10)) < 0.02)).astype(np.int16)
    data[:4] = -1024
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])  # LAS
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))
    vol = read_nifti_volume(src)
    assert vol.volume.shape == (10, 40, 48) and vol.spacing == pytest.approx((2.0, 0.8, 0.8))
    res = inject_lesion_3d(vol.volume, vol.spacing, modality="ct", center=(5, 20, 24), radius_mm=3.0, rng=2)
    out = tmp_path / "out" / "vol.nii.gz"
    write_nifti_volume(vol, res, out)
    img = nib.load(str(out))
    assert np.allclose(img.affine, affine)
    assert img.get_data_dtype() == np.int16
    back = read_nifti_volume(out)
    diff = back.volume != vol.volume
    assert diff.any() and not (diff & ~res.mask).any()
    with pytest.raises(SeriesError, match="refusing to overwrite"):
        write_nifti_volume(vol, res, out)


def test_cli_tamper_series(series_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from medforensics.cli import app

    out = tmp_path / "cli"
    runner = CliRunner()
    r = runner.invoke(app, ["synth", "tamper-series", str(series_dir), "--out", str(out), "--attack", "remove",
                            "--seed", "1", "--radius-mm", "4", "--center", "6,60,70"])
    assert r.exit_code == 0, r.output
    gt = json.loads((out / "ground_truth.json").read_text())
    assert gt["ground_truth"]["center_zyx"] == [6, 60, 70]
    r2 = runner.invoke(app, ["synth", "tamper-series", str(series_dir), "--out", str(out), "--attack", "remove"])
    assert r2.exit_code == 2 and "refusing to overwrite" in r2.output
    r3 = runner.invoke(app, ["synth", "tamper-series", str(series_dir), "--out", str(tmp_path / "c3"),
                             "--attack", "inject", "--center", "1,2"])
    assert r3.exit_code == 2 and "z,y,x" in r3.output


def test_compressed_series_keeps_rle(series_dir: Path, tmp_path: Path):
    """An RLE Lossless series is written back as RLE Lossless (pydicom's own encoder)."""
    from pydicom.uid import RLELossless

    rle = tmp_path / "rle"
    rle.mkdir()
    for p in series_dir.iterdir():
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(rle / p.name, enforce_file_format=True)
    out = tmp_path / "rle_out"
    gt = tamper_series(rle, out, "inject", seed=0, radius_mm=4.0, center=(6, 64, 64))
    modified = [f for f in gt["written"]["files"] if f["modified"]]
    assert modified and all(f["transfer_syntax"] == str(RLELossless) for f in modified)
    ds = pydicom.dcmread(out / modified[0]["path"])
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    before = pydicom.dcmread(rle / modified[0]["path"])
    assert ds.SOPInstanceUID == before.SOPInstanceUID
    assert (ds.pixel_array != before.pixel_array).any()


def test_inpaint_cube_diffusion_changes_only_the_cube():
    """Diffusion in-painting with a tiny random U-Net: only the ellipsoid's voxels change, per seed."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from types import SimpleNamespace

    from medforensics.synth.tamper3d import inpaint_cube_diffusion

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=64, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    det = SimpleNamespace(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000),
                          preprocessing=SimpleNamespace(size=64), name="tiny", config={"t_range": 4})
    rng = np.random.default_rng(0)
    vol = (rng.normal(-800, 15, (8, 72, 72))).astype(np.float32)
    sp = (2.0, 1.0, 1.0)
    res = inpaint_cube_diffusion(vol, sp, det, modality="ct", center=(4, 36, 36), radius_mm=3.0, seed=1)
    changed = res.volume != vol
    assert changed.any() and not (changed & ~res.mask).any()
    assert res.details["t_start"] == 4 and (res.first_slice, res.last_slice) == (3, 5)
    # lung (−800 HU) lies below the BTD window: voxels the U-Net puts at the floor are not left at −700
    # but keep the harmonic fill + noise (≈ −800)
    vals = res.volume[res.mask]
    assert not np.any(vals == np.float32(-700.0)) and (vals < -700).any()
    again = inpaint_cube_diffusion(vol, sp, det, modality="ct", center=(4, 36, 36), radius_mm=3.0, seed=1)
    assert np.array_equal(again.volume, res.volume)
