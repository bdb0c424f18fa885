"""Capture reader: every real sample loads in millimetres; bad captures are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.captures import CaptureError, load_capture, mirror_uvd
from training.localize import centre_from_labels

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "real_samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")

META = {"intrinsics": {"fx": 475.0, "fy": 475.0, "cx": 319.5, "cy": 239.5, "width": 640, "height": 480},
        "depth_encoding": "uint16", "depth_scale_mm": 1.0, "hand": "right"}


def _hand_frame(scale_mm: float = 1.0) -> np.ndarray:
    """A palm with fingers at 500 mm and a wall at 1200 mm, in stored units of scale_mm."""
    v, u = np.mgrid[0:480, 0:640]
    x, y = (u - 319.5) * 500 / 475, (v - 239.5) * 500 / 475
    hand = (x ** 2 / 45 ** 2 + y ** 2 / 50 ** 2 <= 1) | ((np.abs(x) <= 40) & (y > -130) & (y < 0) & (np.abs(x) % 20 < 9))
    depth = np.where(hand, 500.0, 1200.0)
    return np.round(depth / scale_mm).astype(np.uint16)


def _capture(tmp_path: Path, meta: dict | None = None, frames: dict[str, np.ndarray] | None = None) -> Path:
    root = tmp_path / "cap"
    root.mkdir()
    if meta is not None:
        (root / "capture.json").write_text(json.dumps(meta))
    for name, arr in (frames or {}).items():
        if name.endswith(".npy"):
            np.save(root / name, arr)
        else:
            Image.fromarray(arr).save(root / name)
    return root


@needs_samples
def test_nyu_sample_reads_millimetres_and_labels():
    cap = load_capture(SAMPLES / "nyu")
    depth = cap.depth_mm(0)
    assert depth.dtype == np.float32 and depth.shape == (480, 640)
    assert cap.labels_uvd.shape == (1, 14, 3) and cap.label_joints == "nyu14"
    # Labels agree with pixels: the surface lies 5 to 30 mm in front of each labelled joint.
    u, v = np.round(cap.labels_uvd[0, :, :2]).astype(int).T
    gap = cap.labels_uvd[0, :, 2] - depth[v, u]
    assert np.median(gap) > 0 and np.all(gap > -5) and np.all(gap < 40)


@needs_samples
@pytest.mark.parametrize("name, near", [("bighand", (540, 620)), ("realsense_sr305/seq_a", (440, 620))])
def test_unlabelled_samples_read_in_millimetres(name, near):
    cap = load_capture(SAMPLES / name)
    assert cap.labels_uvd is None and len(cap) >= 1
    for i in range(len(cap)):
        assert near[0] < cap.locate(i).near_mm < near[1]  # 0.125 mm units converted, not raw


@needs_samples
def test_a_capture_sent_to_loader_workers_leaves_its_located_frames_behind():
    """The unit check's located frames carry full-frame masks; workers locate again if they ask."""
    import pickle

    cap = load_capture(SAMPLES / "realsense_sr305" / "seq_a")
    assert "hands_to_check" in cap.__dict__   # located by the unit check
    copy = pickle.loads(pickle.dumps(cap))
    assert "hands_to_check" not in copy.__dict__ and copy.frames == cap.frames
    assert [i for i, _ in copy.hands_to_check[0]] == [i for i, _ in cap.hands_to_check[0]]


@needs_samples
def test_sr305_frames_in_natural_order():
    cap = load_capture(SAMPLES / "realsense_sr305" / "seq_a")
    assert [p.stem for p in cap.frames] == ["30", "50", "70", "90", "110", "130", "150", "170"]


def _left_nyu(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The NYU frame as a left hand would be filmed, and its labels in that capture's own images."""
    right = load_capture(SAMPLES / "nyu")
    meta = json.loads((SAMPLES / "nyu" / "capture.json").read_text())
    meta["hand"] = "left"
    meta["intrinsics"]["cx"] = 639 - meta["intrinsics"]["cx"]  # the camera that sees the mirror image
    raw = np.asarray(Image.open(right.frames[0]))
    labels = mirror_uvd(right.labels_uvd[0], 640)
    root = _capture(tmp_path, meta, {"left.png": raw[:, ::-1].copy()})
    (root / "labels_uvd.txt").write_text(" ".join(f"{x:.4f}" for x in labels.ravel()) + "\n")
    return root, labels


@needs_samples
def test_left_hand_is_mirrored_with_its_labels(tmp_path):
    right = load_capture(SAMPLES / "nyu")
    root, labels = _left_nyu(tmp_path)
    left = load_capture(root)
    assert left.mirrored and left.intrinsics == right.intrinsics
    np.testing.assert_array_equal(left.depth_mm(0), right.depth_mm(0))
    np.testing.assert_allclose(left.labels_uvd, right.labels_uvd, atol=1e-3)
    np.testing.assert_allclose(mirror_uvd(mirror_uvd(labels, 640), 640), labels)


@needs_samples
def test_predictions_on_a_left_hand_score_against_its_labels(tmp_path):
    """predict_capture answers in the capture's own images, while a left hand's labels are read
    mirrored: scoring brings both into one frame (the benchmark once compared across the two)."""
    from training.predict import score_capture

    root, labels = _left_nyu(tmp_path)
    left = load_capture(root)
    assert score_capture(left, labels[None]).mean_error_mm == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(left.flip_left(labels[None]), left.labels_uvd, atol=1e-3)
    assert score_capture(left, left.labels_uvd).mean_error_mm > 50   # the labels as read are not its images'


def test_a_file_that_is_no_npy_array_is_refused_as_such(tmp_path):
    root = _capture(tmp_path, META, {"a.png": _hand_frame()})
    (root / "b.npy").write_text("not an array")
    with pytest.raises(CaptureError, match=r"b\.npy: cannot read depth array \(not a \.npy array file\)$"):
        load_capture(root)
    with pytest.raises(CaptureError, match=r"b\.npy: cannot read depth \(not a \.npy array file\)$"):
        load_capture(root, check_units=False).check_frames()


def test_npy_and_png_frames_agree(tmp_path):
    frame = _hand_frame(scale_mm=0.125)
    meta = dict(META, depth_scale_mm=0.125)
    cap = load_capture(_capture(tmp_path, meta, {"a.png": frame, "b.npy": frame.astype(np.float32)}))
    np.testing.assert_array_equal(cap.depth_mm(0), cap.depth_mm(1))
    assert cap.depth_mm(0).max() == pytest.approx(1200.0)


def test_21_joint_labels(tmp_path):
    root = _capture(tmp_path, dict(META, labels="l.txt", label_joints="21"), {"0.png": _hand_frame()})
    (root / "l.txt").write_text(" ".join(["320 240 510"] * 21) + "\n")
    cap = load_capture(root)
    assert cap.labels_uvd.shape == (1, 21, 3)
    np.testing.assert_allclose(centre_from_labels(cap.labels_uvd[0], "21", cap.intrinsics), [320, 240, 510])
    (root / "l.txt").write_text(" ".join(["320 240 510"] * 14) + "\n")
    with pytest.raises(CaptureError, match="l.txt:1: 42 columns, expected 63"):
        load_capture(root)


def test_missing_capture_json(tmp_path):
    root = _capture(tmp_path, None, {"0.png": _hand_frame()})
    with pytest.raises(CaptureError, match="no capture.json"):
        load_capture(root)


def test_empty_folder(tmp_path):
    with pytest.raises(CaptureError, match="no capture.json"):
        load_capture(_capture(tmp_path))
    (tmp_path / "cap" / "capture.json").write_text(json.dumps(META))
    with pytest.raises(CaptureError, match="no depth frames"):
        load_capture(tmp_path / "cap")


def test_truncated_png_is_refused_by_name(tmp_path):
    root = _capture(tmp_path, META, {"0.png": _hand_frame()})
    data = (root / "0.png").read_bytes()
    (root / "0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureError, match=r"0\.png: cannot decode"):
        load_capture(root)


def test_check_frames_finds_a_cut_frame_that_loading_does_not_decode(tmp_path):
    """load_capture decodes three frames; check_frames reads every PNG to its end, so a frame cut
    short by a failed copy is refused before training, not when a batch first needs it."""
    root = _capture(tmp_path, META, {f"{i}.png": _hand_frame() for i in range(5)})
    data = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(data[: len(data) - 200])
    capture = load_capture(root)
    with pytest.raises(CaptureError, match=r"1\.png: cannot read depth \(Truncated"):
        capture.check_frames()


def test_wrong_bit_depth_is_refused(tmp_path):
    eight_bit = (_hand_frame() // 8).astype(np.uint8)
    with pytest.raises(CaptureError, match=r"0\.png: .*16-bit.*mode L"):
        load_capture(_capture(tmp_path, META, {"0.png": eight_bit}))
    shutil.rmtree(tmp_path / "cap")
    with pytest.raises(CaptureError, match="8-bit RGB"):
        load_capture(_capture(tmp_path, dict(META, depth_encoding="nyu_rgb"), {"0.png": _hand_frame()}))


@pytest.mark.parametrize("stored_scale, declared_scale", [(0.125, 1.0), (1.0, 0.125), (1.0, 10.0)])
def test_wrong_depth_unit_is_flagged(tmp_path, stored_scale, declared_scale):
    root = _capture(tmp_path, dict(META, depth_scale_mm=declared_scale), {"0.png": _hand_frame(stored_scale)})
    with pytest.raises(CaptureError, match="implausible for a hand"):
        load_capture(root)
    assert load_capture(root, check_units=False).depth_scale_mm == declared_scale


def test_unit_check_passes_over_frames_without_a_hand(tmp_path):
    """A recording that starts and ends before the hand is in view still loads, its depth unit
    still checked on the frames that show the hand; one with no hand at all is refused."""
    empty = np.zeros((480, 640), np.uint16)
    frames = {"0.png": empty, "1.png": _hand_frame(), "2.png": empty, "3.png": _hand_frame(), "4.png": empty}
    assert len(load_capture(_capture(tmp_path, META, frames))) == 5
    shutil.rmtree(tmp_path / "cap")
    wrong = {**frames, "1.png": _hand_frame(0.125), "3.png": _hand_frame(0.125)}
    with pytest.raises(CaptureError, match="1.png: depths implausible"):
        load_capture(_capture(tmp_path, META, wrong))
    shutil.rmtree(tmp_path / "cap")
    # One odd hand (seen edge-on, or far) among the frames checked is a frame, not a unit.
    odd = {"0.png": _hand_frame(0.125), "1.png": _hand_frame(), "2.png": _hand_frame()}
    assert len(load_capture(_capture(tmp_path, META, odd))) == 3
    shutil.rmtree(tmp_path / "cap")
    with pytest.raises(CaptureError, match="0.png: depths implausible"):
        load_capture(_capture(tmp_path, META, {**odd, "1.png": _hand_frame(0.125)}))
    shutil.rmtree(tmp_path / "cap")
    with pytest.raises(CaptureError, match="no hand found in any of the 3 frames checked"):
        load_capture(_capture(tmp_path, META, {"0.png": empty, "1.png": empty, "2.png": empty}))


@needs_samples
def test_real_sr305_with_wrong_unit_is_flagged(tmp_path):
    meta = json.loads((SAMPLES / "realsense_sr305" / "seq_a" / "capture.json").read_text())
    meta["depth_scale_mm"] = 1.0  # the sensor's 0.125 mm units read as millimetres
    root = _capture(tmp_path, meta)
    shutil.copy(SAMPLES / "realsense_sr305" / "seq_a" / "30.png", root)
    with pytest.raises(CaptureError, match="30.png: depths implausible"):
        load_capture(root)


@pytest.mark.parametrize("change, message", [
    ({"depth_encoding": "float"}, "depth_encoding"),
    ({"depth_scale_mm": 0}, "depth_scale_mm"),
    ({"hand": "both"}, "hand must be"),
    ({"intrinsics": {"fx": 475}}, "intrinsics lack"),
    ({"labels": "l.txt", "label_joints": "nyu36"}, "label_joints"),
    # JSON values that are no valid key, or no float
    ({"labels": "l.txt", "label_joints": ["nyu14"]}, "label_joints must be one of"),
    ({"depth_scale_mm": 10**400}, "depth_scale_mm must be a positive number"),
    ({"depth_scale_mm": float("nan")}, "depth_scale_mm must be a positive number"),
])
def test_bad_capture_json(tmp_path, change, message):
    with pytest.raises(CaptureError, match=message):
        load_capture(_capture(tmp_path, dict(META, **change), {"0.png": _hand_frame()}))


def test_a_misspelt_field_is_refused_and_other_keys_are_metadata(tmp_path):
    """A misspelt field would silently be missing (a rig's views, a capture's labels), so a key
    close to a field the object lacks is refused; any other key is metadata (a benchmark records
    its split and seed), and so is one close to a field that is there."""
    root = _capture(tmp_path, None, {"0.png": _hand_frame(), "1.png": _hand_frame()})
    view = _side_view(root, {f"{k}.png": _hand_frame() for k in range(2)}, np.eye(4).tolist())
    scale = {k: v for k, v in META.items() if k != "depth_scale_mm"}
    for meta, message in ((dict(META, view=[view]), "capture.json: unknown key 'view'; did you mean 'views'?"),
                          (dict(META, Labels="l.txt"), "capture.json: unknown key 'Labels'; did you mean 'labels'?"),
                          (dict(scale, depth_scale=1.0), "unknown key 'depth_scale'; did you mean 'depth_scale_mm'?"),
                          (dict(META, views=[{**{k: v for k, v in view.items() if k != "extrinsics_mm"},
                                              "extrinsic_mm": np.eye(4).tolist()}]),
                           "views[0]: unknown key 'extrinsic_mm'; did you mean 'extrinsics_mm'?")):
        with pytest.raises(CaptureError) as err:
            load_capture(_write(root, meta))
        assert str(err.value).endswith(message), err.value
    metadata = dict(META, views=[dict(view, serial="A1")], split="test", seed=0, nyu_test_frames=[5, 6],
                    sensor="SR305", sensor_id="A1", labels_xyz="xyz.txt", extrinsics=np.eye(4).tolist())
    assert len(load_capture(_write(root, metadata)).views) == 1


def test_hidden_files_are_no_frames(tmp_path):
    """macOS leaves ._0.png beside 0.png on some drives."""
    root = _capture(tmp_path, META, {"0.png": _hand_frame()})
    (root / "._0.png").write_bytes(b"resource fork")
    assert [p.name for p in load_capture(root).frames] == ["0.png"]


def test_labels_off_the_image_are_refused(tmp_path):
    """Labels of another resolution or camera put a third of a hand's joints or more off the image;
    a hand at the border has a fingertip or four beyond it."""
    root = _capture(tmp_path, dict(META, labels="l.txt", label_joints="nyu14"),
                    {"0.png": _hand_frame(), "1.png": _hand_frame()})
    inside, out = "320 240 510", "700 240 510"
    (root / "l.txt").write_text(" ".join([inside] * 10 + [out] * 4) + "\n" + " ".join([inside] * 9 + [out] * 5) + "\n")
    with pytest.raises(CaptureError) as err:
        load_capture(root)
    assert str(err.value) == (f"{root / 'l.txt'}: frame 1: 5 of its 14 label joints lie outside the 640x480 image "
                              f"(joint 9 at u 700 v 240): labels of another camera or resolution?")
    (root / "l.txt").write_text((" ".join([inside] * 10 + [out] * 4) + "\n") * 2)
    assert load_capture(root).labels_uvd.shape == (2, 14, 3)


def test_metres_read_as_millimetres_point_at_the_scale(tmp_path):
    """Depth in metres with depth_scale_mm 1 shows no hand-sized object at all; the error says why."""
    frame = _hand_frame().astype(np.float32) / 1000.0
    with pytest.raises(CaptureError, match=r"no hand found in any of the 1 frames checked for depth units \(.*\); "
                                           r"0.npy's measured depths have a median of 1.2 mm with depth_scale_mm=1: "
                                           r"check depth_scale_mm in .*capture.json$"):
        load_capture(_capture(tmp_path, META, {"0.npy": frame}))


def test_frame_size_must_match_intrinsics(tmp_path):
    cap = load_capture(_capture(tmp_path, dict(META, intrinsics=dict(META["intrinsics"], width=320, height=240)),
                                {"0.png": _hand_frame()}), check_units=False)
    with pytest.raises(CaptureError, match="640x480 but capture.json says 320x240"):
        cap.depth_mm(0)


def _side_view(root: Path, frames: dict[str, np.ndarray], extrinsics: list[list[float]], **extra) -> dict:
    (root / "side").mkdir()
    for name, arr in frames.items():
        Image.fromarray(arr).save(root / "side" / name)
    return {"name": "side", "folder": "side", "intrinsics": META["intrinsics"], "extrinsics_mm": extrinsics, **extra}


# Side camera: 60 degrees about the vertical axis around a point 500 mm ahead.
ROT = np.array([[0.5, 0.0, np.sqrt(3) / 2], [0.0, 1.0, 0.0], [-np.sqrt(3) / 2, 0.0, 0.5]])
RIG = np.eye(4)
RIG[:3, :3], RIG[:3, 3] = ROT, np.array([0.0, 0.0, 500.0]) - ROT @ [0.0, 0.0, 500.0]


def test_views_load_and_carry_points_into_their_camera(tmp_path):
    root = _capture(tmp_path, None, {"0.png": _hand_frame(), "1.png": _hand_frame()})
    view = _side_view(root, {"a.png": _hand_frame(), "b.png": _hand_frame() // 2}, RIG.tolist())
    (root / "capture.json").write_text(json.dumps(dict(META, views=[view])))
    cap = load_capture(root)
    side = cap.view("side")
    assert cap.view("top") is None and [p.name for p in side.frames] == ["a.png", "b.png"]
    np.testing.assert_allclose(side.to_view([0.0, 0.0, 500.0]), [0.0, 0.0, 500.0])   # the pivot stays put
    np.testing.assert_allclose(side.to_view([0.0, 0.0, 400.0]), [-50 * np.sqrt(3), 0.0, 450.0])
    np.testing.assert_array_equal(cap.depth_mm(1, side), _hand_frame().astype(np.float32) // 2)
    assert len(list(root.glob("*.png"))) == len(cap) == 2   # view frames are not frames of the capture


def test_left_hand_views_are_mirrored_with_their_rig(tmp_path):
    """Mirroring a left capture mirrors each view's image and conjugates its extrinsics, so the
    mirrored front point still lands on the mirrored side pixel."""
    frame = _hand_frame()
    frame[100:110, 50:60] = 700   # something off-centre, to see the flip
    meta_views = []
    for hand in ("right", "left"):
        root = tmp_path / hand
        root.mkdir()
        Image.fromarray(frame).save(root / "0.png")
        view = _side_view(root, {"0.png": frame}, RIG.tolist())
        meta_views.append(load_capture(_write(root, dict(META, hand=hand, views=[view]))))
    right, left = meta_views
    side_r, side_l = right.view("side"), left.view("side")
    np.testing.assert_array_equal(left.depth_mm(0, side_l), right.depth_mm(0, side_r)[:, ::-1])
    point = np.array([30.0, -20.0, 450.0])
    mirror = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(side_l.to_view(point * mirror), side_r.to_view(point) * mirror)
    assert side_l.intrinsics.cx == pytest.approx(639 - side_r.intrinsics.cx)


def _write(root: Path, meta: dict) -> Path:
    (root / "capture.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("change, message", [
    ({"views": {"name": "side"}}, "views must be a list"),
    ({"name": ""}, "name must be a non-empty string"),
    ({"folder": "nowhere"}, "folder must name a subfolder"),
    ({"folder": "."}, "folder must name a subfolder"),
    ({"extrinsics_mm": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "extrinsics_mm must be a 4x4 rigid"),
    ({"extrinsics_mm": (2 * np.eye(4)).tolist()}, "extrinsics_mm must be a 4x4 rigid"),
    ({"extrinsics_mm": [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "extrinsics_mm must be a 4x4 rigid"),
    ({"extrinsics_mm": [[1, 0, 0, 10**400], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "extrinsics_mm must be a 4x4 rigid"),
    ({"intrinsics": {"fx": 1}}, r"views\[0\]: intrinsics lack"),
    ({"frames": 1}, "side: 1 frames, the capture has 2"),
])
def test_bad_views_are_refused_by_name(tmp_path, change, message):
    root = _capture(tmp_path, None, {"0.png": _hand_frame(), "1.png": _hand_frame()})
    count = change.pop("frames", 2)
    view = _side_view(root, {f"{k}.png": _hand_frame() for k in range(count)}, np.eye(4).tolist())
    views = change.pop("views") if "views" in change else [dict(view, **change)]
    with pytest.raises(CaptureError, match=message) as err:
        load_capture(_write(root, dict(META, views=views)))
    assert "capture.json" in str(err.value) or "side" in str(err.value)
