"""The shared crop: labels agree with pixels under every augmentation, and invert exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from render.camera import Intrinsics, uvd_to_xyz
from training.captures import load_capture
from training.crop import AugmentParams, Augmentation, CropConfig, crop_hand, crop_shard_sample

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CAM = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0, width=640, height=480)
CENTRE = np.array([300.0, 250.0, 600.0])


def ramp() -> np.ndarray:
    """A surface whose depth changes along both image axes, so every pixel is identifiable."""
    v, u = np.mgrid[0:480, 0:640].astype(np.float32)
    return 560.0 + 0.25 * (u - 300) + 0.15 * (v - 250)


def surface_labels(rng: np.random.Generator, n: int = 40) -> np.ndarray:
    """Points on the ramp near the centre: label depth equals the pixel's depth."""
    uv = rng.uniform([250, 200], [350, 300], size=(n, 2))
    d = 560.0 + 0.25 * (uv[:, 0] - 300) + 0.15 * (uv[:, 1] - 250)
    return np.column_stack([uv, d])


AUGMENTS = [AugmentParams(),
            AugmentParams(rotation_rad=0.9),
            AugmentParams(jitter_mm=(6.0, -4.0, 3.0)),
            AugmentParams(scale=1.2),
            AugmentParams(rotation_rad=-0.5, jitter_mm=(2.0, 5.0, -6.0), scale=0.85)]


@pytest.mark.parametrize("aug", AUGMENTS)
def test_labels_agree_with_pixels(aug):
    labels = surface_labels(np.random.default_rng(0))
    crop = crop_hand(ramp(), CAM, CENTRE, labels, augment=aug)
    x, y = np.rint(crop.geometry.frame_to_crop_px(labels)).astype(int).T
    # The crop pixel under each label shows the label's depth (normalised z of the label), to
    # within one source pixel of the ramp (0.25 mm) over the cube half-size.
    np.testing.assert_allclose(crop.image[y, x], crop.labels[:, 2], atol=0.5 * 1.2 / crop.geometry.half_mm * 2)


@pytest.mark.parametrize("aug", AUGMENTS)
def test_exact_inverse_to_frame_uvd_and_mm(aug):
    labels = surface_labels(np.random.default_rng(1))
    crop = crop_hand(ramp(), CAM, CENTRE, labels, augment=aug)
    np.testing.assert_allclose(crop.geometry.to_uvd(crop.labels), labels, atol=2e-3)
    np.testing.assert_allclose(crop.geometry.to_xyz(crop.labels), uvd_to_xyz(labels, CAM), atol=2e-3)


def test_normalisation_and_far_plane():
    depth = ramp()
    depth[240:260, 290:310] = 0.0        # hole
    depth[200:210, :] = 2000.0            # behind the cube
    depth[300:305, :] = 100.0             # in front of the cube
    crop = crop_hand(depth, CAM, CENTRE, CENTRE[None], config=CropConfig(cube_mm=250, size=96))
    img = crop.image
    assert img.shape == (96, 96) and img.dtype == np.float32
    assert img.min() >= -1 and img.max() == 1.0
    c = crop.geometry.frame_to_crop_px(np.array([[300, 250, 0], [300, 205, 0], [300, 302, 0]]))
    (hx, hy), (bx, by), (fx, fy) = np.rint(c).astype(int)
    assert img[hy, hx] == 1.0 and img[by, bx] == 1.0 and img[fy, fx] == 1.0
    np.testing.assert_allclose(crop.labels, [[0, 0, 0]], atol=1e-6)  # the centre maps to the origin
    # A cube edge of 250 mm spans the crop: a point 125 mm right of the centre is on its edge.
    edge = uvd_to_xyz(CENTRE, CAM) + [125.0, 0, 0]
    u = edge[0] * CAM.fx / edge[2] + CAM.cx
    assert crop.geometry.frame_to_crop_px(np.array([u, 250, 600]))[0] == pytest.approx(95.5, abs=1e-6)


def test_window_with_origin_equals_full_frame():
    depth = ramp()
    full = crop_hand(depth, CAM, CENTRE, augment=AugmentParams(rotation_rad=0.3))
    window = depth[30:470, 60:560].copy()  # holds the rotated crop's corners
    part = crop_hand(window, CAM, CENTRE, origin=(60, 30), augment=AugmentParams(rotation_rad=0.3))
    np.testing.assert_array_equal(full.image, part.image)
    small = crop_hand(depth[200:300, 250:350].copy(), CAM, CENTRE, origin=(250, 200))
    x0, y0 = np.rint(small.geometry.frame_to_crop_px(np.array([250, 200, 0]))).astype(int)
    assert (small.image[: y0 - 1] == 1.0).all() and (small.image[:, : x0 - 1] == 1.0).all()
    assert (small.image[y0 + 2 : y0 + 10, x0 + 2 : x0 + 10] < 1.0).all()


def test_scale_and_jitter_move_labels_consistently():
    labels = surface_labels(np.random.default_rng(2))
    base = crop_hand(ramp(), CAM, CENTRE, labels)
    big = crop_hand(ramp(), CAM, CENTRE, labels, augment=AugmentParams(scale=2.0))
    np.testing.assert_allclose(big.labels, base.labels / 2, atol=1e-5)
    jit = crop_hand(ramp(), CAM, CENTRE, CENTRE[None], augment=AugmentParams(jitter_mm=(5.0, -3.0, 4.0)))
    np.testing.assert_allclose(jit.labels[0], -np.array([5.0, -3.0, 4.0]) / 150.0, atol=1e-6)


def test_depth_noise_is_seeded_and_leaves_labels():
    labels = surface_labels(np.random.default_rng(3))
    clean = crop_hand(ramp(), CAM, CENTRE, labels)
    a = crop_hand(ramp(), CAM, CENTRE, labels, augment=AugmentParams(depth_noise_mm=5.0, noise_seed=7))
    b = crop_hand(ramp(), CAM, CENTRE, labels, augment=AugmentParams(depth_noise_mm=5.0, noise_seed=7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, clean.labels)
    inside = (clean.image < 0.9) & (clean.image > -0.9)
    assert np.std((a.image - clean.image)[inside]) * 150 == pytest.approx(5.0, rel=0.1)


def test_augmentation_sampling_is_reproducible():
    aug = Augmentation()
    p = [aug.sample(np.random.default_rng(11)) for _ in range(2)]
    assert p[0] == p[1]
    many = [aug.sample(np.random.default_rng(s)) for s in range(200)]
    assert max(abs(m.rotation_rad) for m in many) <= np.deg2rad(60)
    assert all(0.9 <= m.scale <= 1.1 for m in many)


def test_bad_centre_is_refused():
    with pytest.raises(ValueError, match="in front of the camera"):
        crop_hand(ramp(), CAM, np.array([320.0, 240.0, 0.0]))


@pytest.mark.skipif(not (SHARED / "real_samples" / "nyu").is_dir(), reason="shared real samples absent")
def test_nyu_labels_sit_behind_the_cropped_surface():
    cap = load_capture(SHARED / "real_samples" / "nyu")
    labels = cap.labels_uvd[0]
    crop = crop_hand(cap.depth_mm(0), cap.intrinsics, labels[13], labels, augment=AugmentParams(rotation_rad=0.4))
    x, y = np.rint(crop.geometry.frame_to_crop_px(labels)).astype(int).T
    gap_mm = (crop.labels[:, 2] - crop.image[y, x]) * crop.geometry.half_mm
    assert np.all(crop.image[y, x] < 1.0)  # every joint lies on the hand, inside the cube
    assert np.median(gap_mm) > 0 and np.all(gap_mm > -10) and np.all(gap_mm < 45)


def test_axis_aligned_fast_path_matches_general_sampling():
    """Unrotated crops index rows and columns separately; they must equal the general warp."""
    depth = ramp() + np.random.default_rng(4).normal(0, 3, size=(480, 640)).astype(np.float32)
    for centre in (CENTRE, np.array([20.0, 470.0, 450.0])):  # the second crop leaves the frame
        fast = crop_hand(depth, CAM, centre)
        general = crop_hand(depth, CAM, centre, augment=AugmentParams(rotation_rad=1e-12))
        np.testing.assert_array_equal(fast.image, general.image)


def test_shard_sample_adapter_uses_window_origin_and_palm_centre():
    """A render-hands-like sample: a window of the ramp at crop_origin, labels in full-frame uvd."""
    labels = surface_labels(np.random.default_rng(5), n=21)
    nyu14 = labels[:14].copy()
    nyu14[13] = CENTRE
    depth = ramp()
    sample = {"intrinsics": CAM.to_dict(), "depth": depth[100:400, 150:450].astype(np.uint16),
              "crop_origin": [150, 100], "nyu14_uvd": nyu14.tolist(), "joints_uvd": labels.tolist()}
    crop = crop_shard_sample(sample, joints="21")
    full = crop_hand(depth.astype(np.uint16), CAM, CENTRE, labels)
    np.testing.assert_array_equal(crop.labels, full.labels)
    inside = crop.image < 1.0
    assert inside.mean() > 0.5 and np.array_equal(crop.image[inside], full.image[inside])
    np.testing.assert_allclose(crop_shard_sample(sample).labels[13], [0, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="joints"):
        crop_shard_sample(sample, joints="36")
