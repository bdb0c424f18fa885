"""hand-eval: reproduces published numbers and refuses malformed result files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from render.camera import NYU_KINECT, uvd_to_xyz, xyz_to_uvd
from training.evaluate import DATASETS, evaluate_uvd, load_uvd, main, success_curve

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANCHORS = SHARED / "eval_anchors" / "nyu"


def _write(path: Path, uvd: np.ndarray) -> Path:
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in frame.ravel()) for frame in uvd) + "\n")
    return path


def _gt(frames: int = 5, joints: int = 14, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.normal([0, 0, 700], [60, 60, 40], size=(frames, joints, 3))
    return xyz_to_uvd(xyz, NYU_KINECT, y_up=True)


@pytest.mark.skipif(not ANCHORS.is_dir(), reason=f"{ANCHORS} absent (shared evaluation anchors)")
def test_deepprior_pp_reproduces_published_error(capsys):
    rc = main(["--pred", str(ANCHORS / "ICCVW17_NYU_DeepPrior++.txt"),
               "--gt", str(ANCHORS / "nyu_test_groundtruth_label.txt"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 8252
    assert round(out["mean_error_mm"], 3) == 12.238
    assert list(out["per_joint_mm"])[-1] == "palm_center"
    assert np.isclose(np.mean(list(out["per_joint_mm"].values())), out["mean_error_mm"])


def test_known_metric_offset_gives_that_error(tmp_path):
    gt = _gt()
    xyz = uvd_to_xyz(gt, NYU_KINECT, y_up=True)
    xyz[:, :, 0] += 3.0
    xyz[:, :, 2] += 4.0            # 5 mm for every joint
    xyz[0, 2, 1] += 12.0           # one joint of frame 0 off by 13 mm
    pred = xyz_to_uvd(xyz, NYU_KINECT, y_up=True)
    res = evaluate_uvd(pred, gt, NYU_KINECT, y_up=True)
    assert res.per_joint_mm["joint_2"] == pytest.approx((13 + 4 * 5) / 5, abs=1e-6)
    assert res.mean_error_mm == pytest.approx((13 + 69 * 5) / 70, abs=1e-6)
    # Worst joint: 13 mm in frame 0, 5 mm elsewhere.
    frac = dict(zip(res.thresholds_mm, res.fraction_within))
    assert frac[4.5] == 0.0 and frac[5.5] == pytest.approx(0.8) and frac[12.5] == pytest.approx(0.8)
    assert frac[13.5] == 1.0


def test_success_curve_counts_worst_joint():
    errors = np.array([[1.0, 9.0], [2.0, 3.0], [20.0, 0.0]])
    np.testing.assert_allclose(success_curve(errors, np.array([2.9, 3.0, 9.0, 19.9, 20.0])),
                               [0, 1 / 3, 2 / 3, 2 / 3, 1])


def test_presets_and_custom_intrinsics(tmp_path, capsys):
    cam, _ = DATASETS["icvl"]
    assert (cam.fx, cam.cx, cam.cy, cam.width, cam.height) == (241.42, 160.0, 120.0, 320, 240)
    gt = _gt(joints=21)
    pred = gt.copy()
    pred[..., 2] += 10.0  # 10 mm deeper on the ray: error depends on the intrinsics, not only on d
    g, p = _write(tmp_path / "gt.txt", gt), _write(tmp_path / "pred.txt", pred)
    (tmp_path / "cam.json").write_text(json.dumps({"intrinsics": {"fx": 241.42, "fy": 241.42, "cx": 160,
                                                                  "cy": 120, "width": 320, "height": 240}}))
    results = {}
    for extra in (["--dataset", "msra"], ["--dataset", "custom", "--intrinsics", str(tmp_path / "cam.json")],
                  ["--dataset", "nyu"]):
        assert main(["--pred", str(p), "--gt", str(g), "--json", *extra]) == 0
        results[extra[1]] = json.loads(capsys.readouterr().out)
    assert results["msra"]["mean_error_mm"] == pytest.approx(results["custom"]["mean_error_mm"])
    assert results["msra"]["mean_error_mm"] != pytest.approx(results["nyu"]["mean_error_mm"])
    # 21 joints come in a different order in every dataset: not named by column count alone.
    assert list(results["msra"]["per_joint_mm"])[:2] == list(results["nyu"]["per_joint_mm"])[:2] == ["joint_0", "joint_1"]
    assert main(["--pred", str(p), "--gt", str(g), "--json", "--joints", "21"]) == 0
    assert list(json.loads(capsys.readouterr().out)["per_joint_mm"])[:2] == ["wrist", "thumb_cmc"]
    assert main(["--pred", str(p), "--gt", str(g), "--dataset", "custom"]) == 2
    assert "--intrinsics" in capsys.readouterr().err
    assert main(["--pred", str(p), "--gt", str(g), "--dataset", "icvl", "--intrinsics", str(tmp_path / "cam.json")]) == 2
    assert "--dataset icvl has its own intrinsics" in capsys.readouterr().err


def test_a_captures_labels_are_scored_with_its_own_camera(tmp_path, capsys):
    """--gt CAPTURE/labels_uvd.txt: the capture.json beside it gives the intrinsics, unless told."""
    gt = _gt()
    pred = gt.copy()
    pred[..., 2] += 10.0
    capture = tmp_path / "capture"
    capture.mkdir()
    g, p = _write(capture / "labels_uvd.txt", gt), _write(tmp_path / "pred.txt", pred)
    (capture / "capture.json").write_text(json.dumps({"intrinsics": {"fx": 241.42, "fy": 241.42, "cx": 160,
                                                                     "cy": 120, "width": 320, "height": 240}}))
    results = {}
    for extra in ([], ["--dataset", "icvl"], ["--dataset", "nyu"]):
        assert main(["--pred", str(p), "--gt", str(g), "--json", *extra]) == 0
        results[" ".join(extra)] = json.loads(capsys.readouterr().out)["mean_error_mm"]
    assert results[""] == pytest.approx(results["--dataset icvl"])
    assert results[""] != pytest.approx(results["--dataset nyu"])
    assert main(["--pred", str(p), "--gt", str(g)]) == 0
    assert capsys.readouterr().out.startswith(f"camera: {capture / 'capture.json'} (beside --gt): fx 241.42 fy 241.42 "
                                              "cx 160 cy 120\nframes: 5  joints: 14\n")
    meta = json.loads((capture / "capture.json").read_text())
    (capture / "capture.json").write_text(json.dumps({**meta, "label_joints": ["a", "list"]}))   # not a joint set's name
    assert main(["--pred", str(p), "--gt", str(g), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["per_joint_mm"])[0] == "pinky_tip"   # 14 joints: NYU's subset
    (capture / "capture.json").write_text(json.dumps({"intrinsics": {"fx": "241"}}))
    assert main(["--pred", str(p), "--gt", str(g)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(capture / "capture.json") in err, err


def test_plot_is_written(tmp_path):
    gt = _gt()
    g, p = _write(tmp_path / "gt.txt", gt), _write(tmp_path / "pred.txt", gt + 1.0)
    out = tmp_path / "curve.png"
    assert main(["--pred", str(p), "--gt", str(g), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.glob("*.png")) == [out]  # no temporary left behind
    assert main(["--pred", str(p), "--gt", str(g), "--plot", str(tmp_path / "curve.jpg")]) == 0
    assert (tmp_path / "curve.jpg").read_bytes()[:2] == b"\xff\xd8"   # the format the name says
    assert main(["--pred", str(p), "--gt", str(g), "--plot", str(tmp_path / "curve.gif")]) == 2
    assert not (tmp_path / "curve.gif").exists()


@pytest.mark.parametrize("damage, where", [
    (lambda lines: lines.__setitem__(2, lines[2] + " 1.0"), ":3: 43 columns"),
    (lambda lines: lines.__setitem__(1, lines[1].replace(lines[1].split()[4], "abc", 1)), ":2: non-numeric"),
    (lambda lines: lines.pop(), "4 frames"),
    (lambda lines: lines.__setitem__(0, lines[0].replace(lines[0].split()[2], "-5", 1)), ":1: depth"),
])
def test_bad_prediction_files_are_refused(tmp_path, capsys, damage, where):
    gt = _gt()
    g = _write(tmp_path / "gt.txt", gt)
    lines = _write(tmp_path / "pred.txt", gt).read_text().splitlines()
    damage(lines)
    (tmp_path / "pred.txt").write_text("\n".join(lines) + "\n")
    assert main(["--pred", str(tmp_path / "pred.txt"), "--gt", str(g)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pred.txt" in err[0] and where in err[0], err


def test_load_uvd_refuses_ragged_and_empty(tmp_path):
    (tmp_path / "a.txt").write_text("1 2 3 4\n")
    with pytest.raises(ValueError, match="a.txt:1: 4 columns"):
        load_uvd(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no frames"):
        load_uvd(tmp_path / "b.txt")


def test_figures_are_written_whole_and_readable_by_others(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.figures import save_figure

    old = os.umask(0o022)
    try:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save_figure(fig, tmp_path / "curve.png")
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]          # no temporary file left
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curve.png").stat().st_mode & 0o777 == 0o644


def test_unwritable_plot_is_refused_before_scoring(tmp_path, capsys):
    """--plot in a missing folder, or onto a folder: one error line naming the plot before any
    scoring; non-zero exit, nothing written."""
    gt = _gt()
    g, p = _write(tmp_path / "gt.txt", gt), _write(tmp_path / "pred.txt", gt + 1.0)
    (tmp_path / "a-folder").mkdir()
    for plot, reason in ((tmp_path / "nowhere" / "curve.png", f"no such folder {tmp_path / 'nowhere'}"),
                         (tmp_path / "a-folder", "a folder")):
        assert main(["--pred", str(p), "--gt", str(g), "--json", "--plot", str(plot)]) == 2
        assert capsys.readouterr() == ("", f"hand-eval: error: {plot}: cannot write ({reason})\n")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a-folder", "gt.txt", "pred.txt"]
    assert not list((tmp_path / "a-folder").iterdir())


def test_printing_into_a_closed_pipe_is_no_traceback(tmp_path):
    """`hand-eval ... | head -2`: the reader leaves early; hand-eval ends quietly."""
    import subprocess
    import sys

    gt = _gt()
    g, p = _write(tmp_path / "gt.txt", gt), _write(tmp_path / "pred.txt", gt + 1.0)
    proc = subprocess.Popen([sys.executable, "-m", "training.evaluate", "--pred", str(p), "--gt", str(g)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # before hand-eval has printed a line
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err, err



def test_xyz_given_for_uvd_is_warned_about(tmp_path, capsys):
    """Millimetres (xyz) where pixels are expected still score (the numbers are the user's to
    judge) but a warning says most joints lie outside the camera's image."""
    gt = _gt()
    g, p = _write(tmp_path / "gt.txt", gt), _write(tmp_path / "pred.txt", gt + 1.0)
    assert main(["--pred", str(p), "--gt", str(g)]) == 0
    assert "warning" not in capsys.readouterr().err
    xyz = uvd_to_xyz(gt, DATASETS["nyu"][0])
    xyz[..., 2] = np.abs(xyz[..., 2])
    _write(tmp_path / "xyz.txt", xyz)
    assert main(["--pred", str(tmp_path / "xyz.txt"), "--gt", str(g)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"hand-eval: warning: {tmp_path / 'xyz.txt'}: ") and "outside the 640x480 image of nyu" in err
