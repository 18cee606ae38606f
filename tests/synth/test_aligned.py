"""Aligned fakes: pairs share size / bit depth / 8-px grid, manifest links, determinism, matching, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medforensics.data import Manifest, ManifestRow
from medforensics.synth.aligned import (
    AE_REGISTRY,
    BOTTLENECKS,
    STRIDES,
    UPSAMPLERS,
    ae_transform,
    align,
    ddpm_transform,
    make_aligned_set,
    config_name,
    create_ae,
    match_sharpness,
    parse_transform,
    psnr,
    random_crops,
    read_real,
    sharpness,
    tiled,
    train_ae,
    train_ddpm,
)
from medforensics.synth.aligned.transforms import pad_to

#: PSNR (dB) the tiny near-lossless config must beat after 200 steps (measured 36.0 dB)
NEAR_LOSSLESS_TINY_DB = 33.0


def _image(h: int, w: int, seed: int = 0, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(8 * x) * np.cos(6 * y) + 0.05 * rng.standard_normal((h, w))
    base = ndimage.gaussian_filter(base, 0.7)
    img = np.clip(base, 0, 1).astype(np.float32)
    return np.stack([img, img[::-1], img[:, ::-1]], -1) if rgb else img


@pytest.fixture(scope="module")
def tiny_ae():
    torch.manual_seed(0)
    crops = random_crops([_image(48, 48, s) for s in range(3)], 32, size=16, seed=0)
    return train_ae("ae-transposed-s4-kl-z16-w32", crops, steps=3, batch_size=4, width=8)


@pytest.fixture(scope="module")
def tiny_ddpm():
    crops = random_crops([_image(48, 48, s) for s in range(3)], 16, size=16, seed=0)
    return train_ddpm(crops, steps=2, batch_size=4, base_width=8, channel_mult=[1, 2])


def test_registry_covers_the_family():
    cfgs = list(AE_REGISTRY.values())
    assert {c["upsampling"] for c in cfgs} == set(UPSAMPLERS) and len(UPSAMPLERS) >= 4
    assert {c["stride"] for c in cfgs} == set(STRIDES) == {4, 8}
    assert {c["bottleneck"] for c in cfgs} == set(BOTTLENECKS) == {"kl", "vq"}
    for up in UPSAMPLERS:  # two widths and two seeds of every kind
        mine = [c for c in cfgs if c["upsampling"] == up and c["stride"] == 4 and c["bottleneck"] == "vq"]
        assert len({c["width"] for c in mine}) == 2 and len({c["seed"] for c in mine}) == 2
    assert json.loads(json.dumps(AE_REGISTRY)) == AE_REGISTRY  # plain data
    for name, c in AE_REGISTRY.items():  # near-lossless by design: one latent value per pixel
        assert c["latent_channels"] >= c["stride"] ** 2 and f"-z{c['latent_channels']}-" in name
        assert name == config_name(c["upsampling"], c["stride"], c["bottleneck"], c["width"], c["seed"])
    with pytest.raises(ValueError, match="unknown transform"):
        parse_transform("vae-thing")
    with pytest.raises(ValueError, match="unknown autoencoder"):
        parse_transform("ae:ae-nope")


@pytest.mark.parametrize("up", UPSAMPLERS)
def test_every_upsampler_and_bottleneck_round_trips(up):
    crops = random_crops([_image(40, 40)], 8, size=16)
    for bott, stride in (("kl", 4), ("vq", 8)):
        gen = train_ae(config_name(up, stride, bott, 32), crops, steps=2, batch_size=4, width=8)
        out = gen.round_trip(torch.from_numpy(crops[:2, None]))
        assert out.shape == (2, 1, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        # any 8-aligned size goes through (fully convolutional), at the input's size
        wide = gen.round_trip(torch.rand(1, 1, 24, 40, generator=torch.Generator().manual_seed(0)))
        assert wide.shape == (1, 1, 24, 40)


def test_tiny_ae_round_trip_has_finite_psnr_and_keeps_size_dtype(tiny_ae):
    tr = ae_transform(tiny_ae, "ae-transposed-s4-kl-z16-w32")
    for px in (
        (np.rint(_image(50, 37) * 255)).astype(np.uint8),
        (np.rint(_image(41, 64, rgb=True) * 255)).astype(np.uint8),
        (np.rint(_image(33, 40) * 65535)).astype(np.uint16),
    ):
        fake, info = align(px, tr)
        assert fake.shape == px.shape and fake.dtype == px.dtype
        assert math.isfinite(info["psnr"]) and info["psnr"] > 0
        assert not np.array_equal(fake, px)


def test_tiles_lie_on_the_8px_grid():
    x = np.random.default_rng(0).random((50, 37)).astype(np.float32)
    padded, (h, w) = pad_to(x, 8)
    assert padded.shape == (56, 40) and (h, w) == (50, 37)
    np.testing.assert_array_equal(padded[:50, :37], x)
    seen = []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return t

    for offset in (0, 8, 24):
        seen.clear()
        np.testing.assert_array_equal(tiled(fn, padded, tile=16, halo=8, offset=offset), padded)
        assert seen and all(a % 8 == 0 and b % 8 == 0 for a, b in seen)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiled(fn, padded, tile=12)


def test_a_position_dependent_op_commutes_with_the_8px_grid(tiny_ae):
    # an 8×8 block op (like a JPEG block) sees the same blocks in the real and in the tiled fake:
    # a block-mean image stays block-constant after the identity transform on a shifted grid
    x = np.kron(np.random.default_rng(1).random((6, 5)), np.ones((8, 8))).astype(np.float32)
    out = tiled(lambda t: t, x, tile=16, halo=8, offset=8)
    assert np.array_equal(out, x)


def test_determinism_per_seed(tiny_ae, tiny_ddpm):
    px = (np.rint(_image(40, 48) * 255)).astype(np.uint8)
    tr = ae_transform(tiny_ae, "x")
    assert np.array_equal(align(px, tr, seed=3)[0], align(px, tr, seed=3)[0])
    d = ddpm_transform(tiny_ddpm, steps=2, t=10)
    a, b, c = (align(px, d, seed=s, match="none")[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(align(px, d, seed=5, variant=1, match="none")[0], a)


def test_sharpness_matching_brings_a_blurred_fake_back_to_its_real():
    real = _image(64, 64, 3)
    real_q = np.rint(real * 255) / 255
    fake = ndimage.gaussian_filter(real_q, 1.2)
    target = sharpness(real_q)
    assert sharpness(fake) / target < 0.7  # the blur is visible to a sharpness detector
    matched, how = match_sharpness(fake, target, np.uint8)
    assert abs(sharpness(matched) / target - 1) < 0.03 and how["strength"] > 0
    sharper, how2 = match_sharpness(real_q + 0.03 * np.random.default_rng(0).standard_normal(real.shape),
                                    target, np.uint8)
    assert abs(sharpness(sharper) / target - 1) < 0.03 and how2["strength"] < 0


def _real_folder(tmp_path, n=3):
    rows = []
    for i in range(n):
        p = tmp_path / "reals" / f"r{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.rint(_image(40 + 8 * i, 35, i) * 255)).astype(np.uint8)).save(p)
        rows.append(ManifestRow(path=f"r{i}.png", label="real", modality="ct", source="toy",
                                patient_id=f"p{i // 2}", split="test" if i == 2 else "train"))
    (tmp_path / "reals" / "bad.png").write_bytes(b"not a png")
    rows.append(ManifestRow(path="bad.png", label="real", modality="ct", source="toy", patient_id="p9", split="train"))
    man = Manifest(rows, tmp_path / "reals")
    man.write(tmp_path / "reals" / "manifest.csv")
    return Manifest.read(tmp_path / "reals" / "manifest.csv")


def test_manifest_links_each_fake_to_its_real_and_resume_skips_done(tmp_path, tiny_ae):
    reals = _real_folder(tmp_path)
    tr = [ae_transform(tiny_ae, "ae-transposed-s4-kl-z16-w32")]
    out = tmp_path / "out"
    man, errors, counts = make_aligned_set(reals, out, tr, per_real=2, progress=False)
    assert counts == {"written": 6, "skipped": 0}
    assert len(errors) == 1 and "bad.png" in errors[0]  # the bad real is reported, the batch goes on
    back = Manifest.read(out / "manifest.csv")
    by_path = {str(p): r for p, r in zip(reals.paths(), reals)}
    for row, path in zip(back, back.paths()):
        real = by_path[row.get("aligned_to")]
        assert row.label == "fake" and row.modality == real.modality
        assert row.patient_id == real.patient_id and row.split == real.split
        params = json.loads(row.get("transform_params"))
        assert params["transform"] == row.get("transform") == "ae:ae-transposed-s4-kl-z16-w32"
        assert params["grid_offset"] % 8 == 0
        rp, _ = read_real(row.get("aligned_to"))
        fp, meta = read_real(path)
        assert fp.shape == rp.shape and fp.dtype == rp.dtype and meta["format"] == "PNG"
    # resume: delete one fake, put a foreign file where another one goes
    victim = back.paths()[0]
    victim.unlink()
    victim.with_suffix(".json").unlink()
    foreign = back.paths()[1]
    foreign.with_suffix(".json").unlink()
    foreign.write_bytes(b"user file")
    man2, errors2, counts2 = make_aligned_set(reals, out, tr, per_real=2, progress=False)
    assert counts2 == {"written": 1, "skipped": 4}
    assert foreign.read_bytes() == b"user file" and any("left alone" in e for e in errors2)
    assert victim.exists()


def test_refuses_to_overwrite_a_foreign_manifest(tmp_path, tiny_ae):
    reals = _real_folder(tmp_path, n=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.csv").write_text("path,label\nx.png,real\n")
    with pytest.raises(FileExistsError, match="not an aligned-fakes manifest"):
        make_aligned_set(reals, tmp_path / "out", [ae_transform(tiny_ae, "x")], progress=False)


def test_diffusion_round_trips_keep_shape_and_are_close(tiny_ddpm):
    px = (np.rint(_image(45, 52, rgb=True) * 255)).astype(np.uint8)
    for steps in (1, 3):
        fake, info = align(px, ddpm_transform(tiny_ddpm, steps=steps, t=5), match="spectrum")
        assert fake.shape == px.shape and fake.dtype == np.uint8
        assert info["timesteps"][0] == 5 and len(info["timesteps"]) == steps
        assert 15 < psnr(px / 255.0, fake / 255.0) < math.inf
    with pytest.raises(ValueError, match="DDIM steps"):
        ddpm_transform(tiny_ddpm, steps=20, t=5)


def test_cli_align_trains_writes_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app

    _real_folder(tmp_path, n=2)
    args = ["synth", "align", str(tmp_path / "reals" / "manifest.csv"), "--out", str(tmp_path / "o"),
            "-t", "ae:ae-nearest-s4-vq-z16-w32", "--train-steps", "2", "--no-progress", "--batch-size", "2",
            "--crop", "16"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert '"written": 2' in r.output and (tmp_path / "o" / "models" / "ae-nearest-s4-vq-z16-w32" / "config.json").is_file()
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0 and '"skipped_done": 2' in r2.output and "loaded" in r2.output
    r3 = CliRunner().invoke(app, args[:6] + ["ae:nope"])
    assert r3.exit_code == 2 and "unknown autoencoder" in r3.output


def test_jpeg_history_is_detected_and_reapplied(tmp_path, tiny_ae):
    src = (np.rint(_image(48, 40) * 255)).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "r.jpg", quality=70)
    px, meta = read_real(tmp_path / "r.jpg")
    assert meta["format"] == "JPEG" and abs(meta["jpeg_quality"] - 70) <= 2
    fake, info = align(px, ae_transform(tiny_ae, "x"), jpeg_quality=meta["jpeg_quality"])
    assert info["jpeg_quality"] == meta["jpeg_quality"] and fake.shape == px.shape and fake.dtype == np.uint8
    with pytest.raises(Exception, match="8-bit"):
        align((px.astype(np.uint16) * 257), ae_transform(tiny_ae, "x"), jpeg_quality=70)


def test_spectrum_matching_moves_the_radial_spectrum_towards_the_real():
    from medforensics.synth.aligned import match_spectrum, radial_spectrum

    real = np.rint(_image(64, 64, 5) * 255) / 255
    fake = ndimage.gaussian_filter(real, 1.0)
    dist = lambda a: float(np.abs(np.log(radial_spectrum(a)[1:] / radial_spectrum(real)[1:])).mean())  # noqa: E731
    matched, how = match_spectrum(fake, real, np.uint8)
    assert dist(matched) < 0.5 * dist(fake) and len(how["ring_gains"]) == 32


def test_kl_variants_differ_even_on_a_single_tile(tiny_ae):
    # (the 3-step decoder is nearly flat, so compare before the 8-bit quantisation)
    x = torch.from_numpy(_image(40, 40))[None, None]
    tr = ae_transform(tiny_ae, "x")
    f0, f1, f1b = (tr(x, 7, k) for k in (0, 1, 1))
    assert torch.equal(f0, tr(x, 99, 0))  # variant 0: the posterior mean, no randomness
    assert not torch.equal(f0, f1) and torch.equal(f1, f1b) and not torch.equal(f1, tr(x, 8, 1))


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c = rng.uniform(3, 9, 3)
    return np.clip(0.5 + 0.3 * np.sin(a * x + c) * np.cos(b * y), 0, 1).astype(np.float32)


def test_a_tiny_near_lossless_config_learns_a_smooth_image_in_a_few_hundred_steps():
    # the design, not a long training, makes the round trip near-lossless: a one-value-per-pixel
    # latent (16 channels per 4×4 block), the encoder's space-to-depth shortcut and the warm-up +
    # cosine Adam schedule take a width-8 model past 33 dB on a held-out smooth image in 200
    # steps of 8 16-px crops (≈ 2 s on one core; measured 36.0 dB)
    torch.manual_seed(0)
    crops = random_crops([_smooth(64, 64, s) for s in range(4)], 64, size=16, seed=0)
    gen = train_ae("ae-pixelshuffle-s4-kl-z16-w32", crops, steps=200, batch_size=8, width=8, warmup_steps=10,
                   lr=1e-2)
    held_out = _smooth(32, 32, seed=9)
    rec = gen.round_trip(torch.from_numpy(held_out)[None, None])[0, 0].numpy()
    assert psnr(held_out, rec) > NEAR_LOSSLESS_TINY_DB
    assert gen.lr_at(0) < gen.lr_at(9) == pytest.approx(gen.config["lr"])  # warm-up, then cosine
    assert gen.lr_at(199) < 0.1 * gen.config["lr"]


def test_residual_vq_stages_shrink_the_quantisation_error():
    gen = create_ae("ae-nearest-s4-vq-z16-w32", resolution=16, width=8, vq_codes=16)
    ae = gen.modules["ae"]
    z = torch.randn(4, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    ae.init_codebook(z, torch.Generator().manual_seed(1))
    flat = ae._groups(z)
    with torch.no_grad():
        q1 = ae._nearest(flat, ae.codebook[0])
        q2 = q1 + ae._nearest(flat - q1, ae.codebook[1])
    assert float((flat - q2).pow(2).mean()) < 0.7 * float((flat - q1).pow(2).mean())
    q, loss = ae.quantise(z)
    assert q.shape == z.shape and torch.allclose(ae._groups(q), q2, atol=1e-6) and torch.isfinite(loss)


def test_transforms_per_real_draws_a_stable_subset_and_keeps_the_split(tmp_path, tiny_ae):
    reals = _real_folder(tmp_path, n=3)
    trs = [ae_transform(tiny_ae, n) for n in ("a", "b", "c")]
    man, _, counts = make_aligned_set(reals, tmp_path / "o", trs, transforms_per_real=1, seed=4, progress=False)
    assert counts["written"] == 3 and len({r.get("aligned_to") for r in man}) == 3
    again, _, counts2 = make_aligned_set(reals, tmp_path / "o", trs, transforms_per_real=1, seed=4, progress=False)
    assert counts2 == {"written": 0, "skipped": 3}
    assert [r.get("transform") for r in again] == [r.get("transform") for r in man]
    by_path = {str(p): r.split for p, r in zip(reals.paths(), reals)}
    assert all(r.split == by_path[r.get("aligned_to")] for r in man)
    with pytest.raises(ValueError, match="transforms_per_real"):
        make_aligned_set(reals, tmp_path / "o2", trs, transforms_per_real=0, progress=False)


def test_cli_align_splits_an_unsplit_manifest_into_train_val_test(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import medforensics.synth.aligned as aligned
    from medforensics.cli import app

    rows = []
    for i in range(12):
        p = tmp_path / "reals" / f"r{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.rint(_image(16, 16, i) * 255)).astype(np.uint8)).save(p)
        rows.append(ManifestRow(path=f"r{i}.png", label="real", modality="ct", source="toy", patient_id=f"p{i}"))
    Manifest(rows, tmp_path / "reals").write(tmp_path / "reals" / "manifest.csv")
    seen: list[str] = []
    real_loader = aligned.load_real_images

    def spy(rows, *a, **k):
        seen.extend(r.split for r in rows)
        return real_loader(rows, *a, **k)

    monkeypatch.setattr(aligned, "load_real_images", spy)
    args = ["synth", "align", str(tmp_path / "reals" / "manifest.csv"), "--out", str(tmp_path / "o"),
            "-t", "ae:ae-nearest-s4-kl-z16-w32", "--train-steps", "1", "--no-progress", "--batch-size", "2",
            "--crop", "16", "--val-fraction", "0.25"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    back = Manifest.read(tmp_path / "o" / "manifest.csv")
    assert len(back) == 12 and {r.split for r in back} == {"train", "val", "test"}
    assert '"fakes_by_split"' in r.output
    # the decoder trained on the train split's reals only: no val / test real was seen
    assert seen and set(seen) == {"train"} and len(seen) == sum(r.split == "train" for r in back)
