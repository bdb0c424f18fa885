"""Hand localisation: lands on the hand in real frames and survives sensor artefacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from render.camera import Intrinsics, uvd_to_xyz, xyz_to_uvd
from training.captures import load_capture
from training.localize import LocalizeError, centre_from_labels, load_centres, locate_hand, save_centres

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "real_samples"
CAM = Intrinsics(fx=475.0, fy=475.0, cx=319.5, cy=239.5, width=640, height=480)
PALM = np.array([20.0, -40.0, 500.0])  # palm centre on the surface, mm (OpenCV)


def scene(rng: np.random.Generator | None = None) -> np.ndarray:
    """A flat open hand 500 mm from the camera, a forearm reaching in from the bottom edge
    and receding, and a wall at 1200 mm; optionally with holes, speckles and flying pixels."""
    v, u = np.mgrid[0:CAM.height, 0:CAM.width].astype(np.float64)
    x = (u - CAM.cx) * PALM[2] / CAM.fx - PALM[0]
    y = (v - CAM.cy) * PALM[2] / CAM.fy - PALM[1]
    hand = x ** 2 / 45 ** 2 + y ** 2 / 50 ** 2 <= 1  # palm
    for angle, length in ((-35, 60), (-12, 80), (0, 88), (12, 82), (25, 66)):  # fingers, up
        a = np.deg2rad(angle)
        along, across = -(y + 40) * np.cos(a) + x * np.sin(a), x * np.cos(a) + (y + 40) * np.sin(a)
        hand |= (along >= 0) & (along <= length) & (np.abs(across) <= 9)
    arm = (np.abs(x + 0.15 * y) <= 32) & (y > 30)
    depth = np.full(x.shape, 1200.0)
    depth[arm] = PALM[2] + 10 + 0.25 * np.clip(y[arm] - 30, 0, None)
    depth[hand] = PALM[2]
    if rng is not None:
        fg = depth < 1200
        edge = fg & ~np.roll(fg, 1, axis=1) | fg & ~np.roll(fg, -1, axis=1)
        depth[edge] = rng.uniform(PALM[2], 1200, size=edge.sum())            # flying pixels
        depth[rng.random(depth.shape) < 0.02] = 0.0                          # holes
        speck = rng.random(depth.shape) < 0.001
        depth[speck] = rng.uniform(200, 450, size=speck.sum())               # speckles in front
    return depth.astype(np.float32)


def _error_mm(loc, xyz: np.ndarray, cam: Intrinsics) -> float:
    return float(np.linalg.norm(uvd_to_xyz(loc.centre_uvd, cam) - xyz))


def test_clean_scene_centre_on_palm_and_forearm_dropped():
    loc = locate_hand(scene(), CAM)
    assert loc.forearm_dropped
    assert _error_mm(loc, PALM, CAM) < 20
    u, v = xyz_to_uvd(PALM, CAM)[:2].round().astype(int)
    assert loc.mask[v, u] and not loc.mask[-1].any()  # the arm at the bottom edge is not hand
    assert 60 < loc.palm_width_mm < 110


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holes_speckles_and_flying_pixels(seed):
    loc = locate_hand(scene(np.random.default_rng(seed)), CAM)
    assert _error_mm(loc, PALM, CAM) < 20
    assert 480 < loc.near_mm < 520


def test_hand_without_arm_found_in_full_frame_of_clutter():
    depth = scene()
    depth[scene() > 505] = 1200.0  # hand only
    depth[:60, :] = 300.0          # a big near object that is not attached: nearest sizeable wins
    loc = locate_hand(depth, CAM)
    assert loc.near_mm == pytest.approx(300, abs=5)  # documented behaviour: nearest sizeable object
    depth[:60, :] = 0.0
    assert _error_mm(locate_hand(depth, CAM), PALM, CAM) < 20


def test_no_object_is_refused():
    with pytest.raises(LocalizeError, match="no depth"):
        locate_hand(np.zeros((480, 640), np.float32), CAM)
    speckles = np.zeros((480, 640), np.float32)
    speckles[::37, ::41] = 500.0
    with pytest.raises(LocalizeError, match="no object"):
        locate_hand(speckles, CAM)
    with pytest.raises(LocalizeError, match="640x480"):
        locate_hand(np.zeros((240, 320), np.float32), CAM)


def test_centres_from_labels():
    """NYU-14 labels carry the palm centre; 21-joint labels get the point the hand model puts
    there, so real frames of either label set are cropped where synthetic frames are."""
    import torch

    from hand_models.model import HandModel
    labels = np.arange(14 * 3, dtype=float).reshape(14, 3) + 500
    np.testing.assert_array_equal(centre_from_labels(labels, "nyu14", CAM), labels[13])
    torch.manual_seed(0)
    model = HandModel.load("open")
    out = model(0.3 * torch.randn(2, 15, 3), torch.randn(2, model.num_betas), torch.randn(2, 3),
                torch.tensor([[0.05, -0.02, 0.5], [-0.1, 0.05, 0.7]]))
    j21, nyu14 = (xyz_to_uvd(t.double().numpy() * 1000.0, CAM) for t in (out.joints, out.nyu14))
    np.testing.assert_allclose(centre_from_labels(j21, "21", CAM), nyu14[:, 13], atol=1e-6)


def test_centres_file_round_trips(tmp_path):
    save_centres(tmp_path / "c.txt", np.array([[320, 240, 500], [330.25, 250, 510]]))
    np.testing.assert_allclose(load_centres(tmp_path / "c.txt", frames=2), [[320, 240, 500], [330.25, 250, 510]])
    with pytest.raises(ValueError, match="2 centres for 3 frames"):
        load_centres(tmp_path / "c.txt", frames=3)


@pytest.mark.skipif(not (SAMPLES / "nyu").is_dir(), reason=f"{SAMPLES / 'nyu'} absent (shared real samples)")
def test_nyu_frame_centre_within_30mm_of_labelled_palm():
    cap = load_capture(SAMPLES / "nyu")
    loc = locate_hand(cap.depth_mm(0), cap.intrinsics)
    palm = uvd_to_xyz(cap.labels_uvd[0, 13], cap.intrinsics)
    assert _error_mm(loc, palm, cap.intrinsics) < 30


CAPTURES = [p.parent for p in sorted(SAMPLES.rglob("capture.json"))] if SAMPLES.is_dir() else []


@pytest.mark.skipif(not CAPTURES, reason=f"{SAMPLES} absent (shared real samples)")
@pytest.mark.parametrize("root", CAPTURES, ids=[p.name for p in CAPTURES])
def test_every_real_frame_centre_lies_on_the_hand(root):
    """The centre projects onto a detected hand pixel whose surface is just in front of it.

    Whether that hand is *the* hand is judged by eye on docs/real_captures.png."""
    cap = load_capture(root)
    for i in range(len(cap)):
        loc = cap.locate(i)
        u, v, d = loc.centre_uvd
        rows, cols = np.nonzero(loc.mask)
        dist = np.hypot(cols - u, rows - v)
        assert dist.min() < 4, f"{cap.frames[i]}: centre not on the hand mask"
        surface = np.median(cap.depth_mm(i)[loc.mask][dist < 10])
        assert 0 <= d - surface <= 30, f"{cap.frames[i]}: centre {d - surface:.0f} mm off the surface"
        assert 50 < loc.palm_width_mm < 130
