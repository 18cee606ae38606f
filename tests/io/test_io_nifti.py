"""NIfTI volumes written with nibabel in tmp_path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medforensics.io import IntensityConfig, UnreadableImageError, load, load_frames

X, Y, Z = 20, 30, 8


def mri_volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    vol = rng.uniform(50, 100, (X, Y, Z)).astype(np.float32)
    for k in range(Z):
        vol[:, :, k] *= k + 1  # slice k is (k + 1)× brighter
    return vol


def save(vol: np.ndarray, path, affine=None) -> None:
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))


def test_mri_volume_slices_and_metadata(tmp_path):
    vol = mri_volume()
    path = tmp_path / "brain.nii.gz"
    save(vol, path)
    frames = load_frames(path)
    assert len(frames) == Z and [f.meta.frame_index for f in frames] == list(range(Z))
    m = frames[0].meta
    assert m.source_format == "nifti" and m.modality == "mri" and m.extra["modality_guessed"]
    assert m.n_frames == Z and m.original_shape == (X, Y, Z)
    assert frames[0].pixels.shape == (Y, X)  # rows = anterior→posterior, columns = right→left
    assert m.pixel_spacing == (2.0, 1.5) and m.extra["slice_spacing"] == 3.0
    assert m.extra["orientation"] == "RAS"
    # volume-level statistics: the dim first slice stays dark, the bright last slice saturates
    lo, hi = np.percentile(vol, [0.5, 99.5])
    expected0 = np.clip((vol[:, :, 0].T[::-1, ::-1] - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(frames[0].pixels, expected0, atol=1e-5)
    assert frames[0].pixels.max() < 0.2 and frames[-1].pixels.max() == 1.0
    assert f"volume ({Z} frames)" in m.intensity
    # per-image statistics stretch every slice
    per_slice = load_frames(path, intensity=IntensityConfig(mri_scope="image"))
    assert all(f.pixels.max() == 1.0 for f in per_slice)
    # load(frame=k) equals load_frames()[k]; default is the middle slice
    np.testing.assert_array_equal(load(path, frame=1).pixels, frames[1].pixels)
    assert load(path).meta.frame_index == Z // 2


def test_orientation_marker_and_lps_affine(tmp_path):
    vol = np.zeros((X, Y, Z), np.float32)
    vol[0, 0, 2] = 1000.0  # patient's left-most, posterior-most voxel of slice 2
    ras = tmp_path / "ras.nii"
    save(vol, ras)
    img = load(ras, frame=2, intensity=IntensityConfig(mri_percentiles=(0.0, 100.0)))
    r, c = np.unravel_index(img.pixels.argmax(), img.pixels.shape)
    assert (r, c) == (Y - 1, X - 1)  # bottom (posterior), right side of the image (patient left)
    # the same anatomy stored in LPS voxel order must display identically
    lps = tmp_path / "lps.nii"
    save(vol[::-1, ::-1, :].copy(), lps, affine=np.diag([-1.5, -2.0, 3.0, 1.0]))
    img2 = load(lps, frame=2, intensity=IntensityConfig(mri_percentiles=(0.0, 100.0)))
    np.testing.assert_array_equal(img.pixels, img2.pixels)
    assert img2.meta.extra["orientation"] == "LPS" and img2.meta.pixel_spacing == (2.0, 1.5)


def test_ct_nifti_in_hu_is_windowed(tmp_path):
    rng = np.random.default_rng(5)
    hu = rng.integers(-1024, 3000, (16, 16, 4)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    save(hu, path)
    frames = load_frames(path)
    assert frames[0].meta.modality == "ct"
    for k, f in enumerate(frames):
        expected = np.clip((hu[:, :, k].T[::-1, ::-1].astype(np.float64) + 700) / 2700, 0, 1)
        np.testing.assert_allclose(f.pixels, expected, atol=1e-6)
    assert "CT window [-700, 2000] HU" in frames[0].meta.intensity
    # the modality argument wins over the guess
    assert load(path, modality="mri").meta.modality == "mri"


def test_4d_uses_first_volume(tmp_path):
    vol = np.zeros((6, 7, 3, 2), np.float32)
    vol[..., 0] = 10.0
    vol[..., 1] = 99.0
    vol[1, 1, :, 0] = 20.0
    path = tmp_path / "fmri.nii"
    save(vol, path)
    frames = load_frames(path)
    assert len(frames) == 3 and frames[0].meta.extra["volume_index"] == 0
    assert frames[0].meta.original_shape == (6, 7, 3, 2)
    assert frames[0].pixels.max() == 1.0 and frames[0].pixels.min() == 0.0  # values 10 and 20 only


def test_max_frames_subsamples(tmp_path):
    path = tmp_path / "v.nii.gz"
    save(mri_volume(), path)
    sub = load_frames(path, max_frames=2)
    assert [f.meta.frame_index for f in sub] == [2, 6]


def test_truncated_nifti(tmp_path):
    path = tmp_path / "v.nii"
    save(mri_volume(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="truncated or corrupt NIfTI data"):
        load(path)
