"""The sensor model: exact rounding for "clean", Kinect v1 physics and reproducibility for "kinect"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from render.camera import NYU_KINECT, Intrinsics
from render.sensor import KINECT_V1, SENSORS, apply_sensor, kinect_v1

CAM = NYU_KINECT


def plane(cam: Intrinsics, normal, distance_m: float) -> np.ndarray:
    """Exact depth of the plane n . X = distance (camera metres, OpenCV axes)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    u = (np.arange(cam.width) - cam.cx) / cam.fx
    v = (np.arange(cam.height) - cam.cy) / cam.fy
    denom = n[0] * u[None, :] + n[1] * v[:, None] + n[2]
    return (distance_m / denom).astype(np.float32)


def sphere(cam: Intrinsics, centre_m, radius_m: float) -> np.ndarray:
    """Exact depth of a sphere on an empty background (0)."""
    c = np.asarray(centre_m, float)
    x = ((np.arange(cam.width) - cam.cx) / cam.fx)[None, :]
    y = ((np.arange(cam.height) - cam.cy) / cam.fy)[:, None]
    a = x * x + y * y + 1
    b = x * c[0] + y * c[1] + c[2]
    disc = b * b - a * (c @ c - radius_m**2)
    return np.where(disc > 0, (b - np.sqrt(np.maximum(disc, 0))) / a, 0).astype(np.float32)


def kinect(depth: np.ndarray, seed: int = 0, origin=(0, 0)) -> np.ndarray:
    return apply_sensor(depth, CAM, origin, "kinect", np.random.default_rng(seed))


def test_clean_rounds_to_the_millimetre() -> None:
    depth = np.array([[0.0, 0.5, 0.79949, 0.80051], [1.2344, 1.2346, 0.0, 3.0]], np.float32)
    out = apply_sensor(depth, CAM, (0, 0), "clean", np.random.default_rng(0))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 500, 799, 801], [1234, 1235, 0, 3000]])


def test_clean_treats_nan_and_negative_as_no_depth() -> None:
    depth = np.array([[np.nan, -1.0, np.inf, 0.8]], np.float32)
    out = apply_sensor(depth, CAM, (0, 0), "clean", np.random.default_rng(0))
    np.testing.assert_array_equal(out, [[0, 0, 0, 800]])


def test_bad_mode_and_shape_refused() -> None:
    with pytest.raises(ValueError, match="clean, kinect"):
        apply_sensor(np.zeros((4, 4), np.float32), CAM, (0, 0), "realsense3000", np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        apply_sensor(np.zeros((4, 4, 1), np.float32), CAM, (0, 0), "clean", np.random.default_rng(0))
    assert set(SENSORS) >= {"clean", "kinect"}


def test_kinect_is_uint16_and_invents_no_depth() -> None:
    depth = sphere(CAM, (0.02, -0.01, 0.8), 0.06)
    out = kinect(depth)
    assert out.dtype == np.uint16 and out.shape == depth.shape
    assert not out[depth == 0].any()
    assert (out > 0).sum() > 0.8 * (depth > 0).sum()
    assert not kinect(np.zeros((50, 60), np.float32)).any()


def test_kinect_is_deterministic_per_seed() -> None:
    depth = sphere(CAM, (0.0, 0.0, 0.7), 0.08)
    np.testing.assert_array_equal(kinect(depth, 3), kinect(depth, 3))
    assert (kinect(depth, 3) != kinect(depth, 4)).any()


def test_window_gets_the_full_frames_artefacts() -> None:
    depth = sphere(CAM, (-0.05, 0.03, 0.75), 0.05)
    full = kinect(depth, seed=11)
    rows, cols = np.nonzero(depth)
    v0, u0 = rows.min() - 7, cols.min() - 5
    window = depth[v0:rows.max() + 9, u0:cols.max() + 4]
    np.testing.assert_array_equal(kinect(window, seed=11, origin=(u0, v0)), full[v0:rows.max() + 9, u0:cols.max() + 4])


def test_quantisation_follows_disparity_steps() -> None:
    # A plane tilted about the vertical axis spans ~0.74 to 0.86 m; every output lies on the
    # disparity lattice z_k = b f / (k step), up to the 1 mm rounding of the output.
    depth = plane(CAM, (0.3, 0.0, 1.0), 0.8)
    out = kinect(depth)[100:380, 100:540]
    values = np.unique(out[out > 0]).astype(float)
    bf_mm = 1000 * KINECT_V1.baseline_m * KINECT_V1.native_focal_px
    levels = np.rint(bf_mm / (KINECT_V1.disparity_step_px * values))
    lattice = bf_mm / (KINECT_V1.disparity_step_px * levels)
    assert np.abs(values - lattice).max() <= 0.5 + 1e-3
    near_800 = values[(values > 780) & (values < 820)]
    spacing = (near_800[-1] - near_800[0]) / (len(near_800) - 1)
    assert spacing == pytest.approx(1000 * KINECT_V1.depth_step_m(0.8), abs=0.1)
    assert 1.7 < 1000 * KINECT_V1.depth_step_m(0.8) < 2.0      # Kinect v1: ~2 mm at 800 mm


def test_noise_is_unbiased_and_grows_with_depth() -> None:
    errors = {}
    for z in (0.6, 1.2):
        depth = plane(CAM, (0.0, 0.0, 1.0), z)
        out = kinect(depth, seed=5)[40:440, 40:600].astype(float)
        err = out[out > 0] - 1000 * z
        assert abs(err.mean()) < 0.1 * 1000 * KINECT_V1.depth_step_m(z) + 0.3
        errors[z] = err.std()
    assert 2.5 < errors[1.2] / errors[0.6] < 6.0          # ~ (1.2 / 0.6)^2 = 4 for disparity noise


def test_silhouette_edges_lose_pixels_interior_does_not() -> None:
    depth = sphere(CAM, (0.0, 0.0, 0.8), 0.07)
    support = depth > 0
    lost = support & (kinect(depth, seed=2) == 0)
    boundary = support & ~ndi.binary_erosion(support)
    interior = ndi.binary_erosion(support, iterations=6)
    assert lost[boundary].mean() > 0.15
    assert lost[interior].mean() < 0.005


def test_grazing_surfaces_drop_out() -> None:
    # Planes turned about the vertical axis: the incidence angle varies across the image.
    def lost_by_incidence(turn_deg: float, distance_m: float) -> tuple[np.ndarray, np.ndarray]:
        normal = np.array([np.sin(np.radians(turn_deg)), 0.0, np.cos(np.radians(turn_deg))])
        depth = plane(CAM, normal, distance_m)
        depth[(depth < 0.4) | (depth > 3.0)] = 0
        lost = kinect(depth) == 0
        u = ((np.arange(CAM.width) - CAM.cx) / CAM.fx)[None, :]
        v = ((np.arange(CAM.height) - CAM.cy) / CAM.fy)[:, None]
        incidence = np.degrees(np.arccos(np.abs(normal[0] * u + normal[2]) / np.sqrt(u * u + v * v + 1)))
        seen = ndi.binary_erosion(depth > 0, iterations=4)   # away from the cut edges
        return lost[seen], incidence[seen]

    lost, incidence = lost_by_incidence(80, 0.15)            # 68 to 87 degrees
    assert lost[incidence < KINECT_V1.grazing_start_deg - 1].mean() < 0.005
    # in between, the loss follows the documented ramp, linear in cos(incidence)
    cos_start, cos_full = np.cos(np.radians([KINECT_V1.grazing_start_deg, KINECT_V1.grazing_full_deg]))
    band = np.abs(incidence - 82) < 1
    expected = np.clip((cos_start - np.cos(np.radians(incidence[band]))) / (cos_start - cos_full), 0, 1)
    assert lost[band].mean() == pytest.approx(expected.mean(), abs=0.06)
    lost, incidence = lost_by_incidence(88, 0.03)            # 86 to 89 degrees
    assert lost[incidence > KINECT_V1.grazing_full_deg + 0.3].mean() > 0.97


def test_projector_shadow_falls_beside_a_nearer_object() -> None:
    # A 3 cm vertical bar at 0.6 m in front of a wall at 0.9 m: the wall loses a band beside the bar
    # (right of it by default, as measured on NYU) as wide as the disparity difference,
    # b fx (1/0.6 - 1/0.9) ~ 24.5 px, and nothing on the other side.
    wall = plane(CAM, (0.0, 0.0, 1.0), 0.9)
    depth = wall.copy()
    u_left, u_right = 310, 340
    depth[:, u_left:u_right] = 0.6
    band = int(KINECT_V1.baseline_m * CAM.fx * (1 / 0.6 - 1 / 0.9))
    rows = slice(100, 380)
    out = kinect(depth, seed=1)
    assert (out[rows, u_right + 2:u_right + band - 2] == 0).mean() > 0.95
    assert (out[rows, u_right + band + 3:u_right + band + 12] == 0).mean() < 0.02
    assert (out[rows, u_left - 30:u_left - 3] == 0).mean() < 0.02
    mirrored = kinect_v1(depth, CAM, (0, 0), np.random.default_rng(1), replace(KINECT_V1, shadow_side=-1))
    assert (mirrored[rows, u_left - band + 2:u_left - 2] == 0).mean() > 0.95
    assert (mirrored[rows, u_right + 3:u_right + 30] == 0).mean() < 0.02
    unshadowed = kinect_v1(depth, CAM, (0, 0), np.random.default_rng(1), replace(KINECT_V1, shadow_side=0))
    assert (unshadowed[rows, u_right + 2:u_right + band - 2] == 0).mean() < 0.02


def test_hole_fraction_is_small_but_present() -> None:
    depth = plane(CAM, (0.0, 0.0, 1.0), 0.8)
    lost = np.mean([(kinect(depth, seed=s)[20:460, 20:620] == 0).mean() for s in range(4)])
    assert 1e-5 < lost < 1e-3      # NYU: 0.07 % of the hand silhouette; hole seeds alone ~0.01 %


NYU_FRAME = Path(__file__).resolve().parents[1].parent / "shared/real_samples/nyu/depth_1_0000001.png"
needs_nyu = pytest.mark.skipif(not NYU_FRAME.exists(), reason=f"{NYU_FRAME} absent (real NYU sample)")


def nyu_depth_mm() -> np.ndarray:
    rgb = np.asarray(Image.open(NYU_FRAME).convert("RGB"))
    return rgb[..., 1].astype(np.int64) * 256 + rgb[..., 2]     # NYU: mm = G * 256 + B


@needs_nyu
def test_real_nyu_depths_sit_on_the_models_disparity_steps() -> None:
    depth = nyu_depth_mm()
    near = depth.min()
    values = np.unique(depth[depth <= near + 150])
    spacing = (values[-1] - values[0]) / (len(values) - 1)
    mid_m = (values[-1] + values[0]) / 2000
    assert spacing == pytest.approx(1000 * KINECT_V1.depth_step_m(mid_m), rel=0.03)


@needs_nyu
def test_real_nyu_shadows_fall_on_the_models_side() -> None:
    # Along rows, steps of > 50 mm lose depth far more often with the nearer surface on the left
    # (shadow_side +1); the model must agree with the frame.
    depth = nyu_depth_mm()
    gapped = {1: [], -1: []}
    for row in depth:
        cols = np.flatnonzero(row < 2001)                        # NYU: 2001 = no depth
        z = row[cols]
        gap = np.diff(cols) > 1
        step = np.diff(z)
        for k in np.flatnonzero((np.abs(step) > 50) & (np.diff(cols) < 40)):
            gapped[1 if step[k] > 0 else -1].append(gap[k])
    share = {side: np.mean(g) for side, g in gapped.items()}
    measured_side = max(share, key=share.get)
    assert measured_side == KINECT_V1.shadow_side
    assert share[measured_side] > 2 * share[-measured_side]
