"""The sim-to-real data builder: deterministic, in the layout the runner reads, labels true to the pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BUILD = REPO / "benchmarks" / "sim2real" / "build.py"

needs_shared = pytest.mark.skipif(not (SHARED / "eval_anchors" / "nyu").is_dir() or not (SHARED / "real_samples").is_dir(),
                                  reason="needs ../shared (NYU test labels and real_samples) beside the repository")


def _script(path: Path, name: str):
    """A benchmark script imported as a module (registered first: dataclasses look themselves up)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The tiny preset built twice with the same seed, concurrently (each takes ~20 s, mostly start-up)."""
    dirs = [tmp_path_factory.mktemp(f"build{k}") / "out" for k in range(2)]
    procs = [subprocess.Popen([sys.executable, str(BUILD), "--preset", "tiny", "--out", str(d), "--seed", "3",
                               "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for d in dirs]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    return dirs


@needs_shared
def test_same_seed_gives_identical_files(two_builds):
    a, b = two_builds
    ja, jb = (json.loads((d / "build.json").read_text()) for d in (a, b))
    assert ja["checksums"] == jb["checksums"]
    assert set(ja["checksums"]) == {"source", "pairs", "target_train_poses.npz", "target_test", "target_train",
                                    "target_unlabeled"}
    for folder in ("target_test", "target_train", "target_unlabeled"):
        files = sorted(str(p.relative_to(a / folder)) for p in (a / folder).rglob("*") if p.is_file())
        assert files == sorted(str(p.relative_to(b / folder)) for p in (b / folder).rglob("*") if p.is_file())
        for name in files:
            assert (a / folder / name).read_bytes() == (b / folder / name).read_bytes(), f"{folder}/{name}"
    assert len(list((a / "target_unlabeled" / "side").glob("*.png"))) == 3
    assert ja["counts"] == {"source": 16, "test": 3, "train": 4, "unlabeled": 3}


@needs_shared
def test_figure_shows_source_target_and_the_rig_view(two_builds, tmp_path):
    from PIL import Image

    build = _script(BUILD, "sim2real_build_figure")
    png = tmp_path / "target.png"
    build.figure(two_builds[0], png)
    width, height = Image.open(png).size
    assert height > width  # six rows of at most three columns (the tiny build has three test frames)


@needs_shared
def test_layout_and_labels_agree_with_pixels(two_builds):
    from hand_models.model import HandModel
    from hand_models.poses import load_pose_file
    from render.camera import NYU_KINECT, uvd_to_xyz, xyz_to_uvd
    from training.captures import load_capture
    from training.data import open_pairs
    from training.localize import locate_hand

    out = two_builds[0]
    record = json.loads((out / "build.json").read_text())
    test, train = load_capture(out / "target_test"), load_capture(out / "target_train")
    unlabeled = load_capture(out / "target_unlabeled")
    assert (len(test), len(train), len(unlabeled)) == (3, 4, 3)
    assert unlabeled.labels_uvd is None and train.label_joints == "nyu14"
    assert train.intrinsics == NYU_KINECT and train.depth_mm(0).shape == (480, 640)
    # NYU frames are split disjointly
    nyu = [set(json.loads((out / f / "capture.json").read_text())["nyu_test_frames"])
           for f in ("target_test", "target_train", "target_unlabeled")]
    assert not (nyu[0] & nyu[1] or nyu[0] & nyu[2] or nyu[1] & nyu[2])

    # The pose file reproduces the train labels exactly, and its shapes lie outside the source's.
    poses, extra = load_pose_file(out / "target_train_poses.npz")
    model = HandModel.load("open")
    with torch.no_grad():
        joints = model(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                       torch.from_numpy(poses.global_orient), torch.from_numpy(extra["transl"]).float()).nyu14
    uvd = xyz_to_uvd(joints.double().numpy() * 1000.0, NYU_KINECT)
    np.testing.assert_allclose(uvd, train.labels_uvd, atol=0.05)
    assert np.all(np.abs(poses.betas[:, 0]) >= 2.0)

    # The surface seen at the palm-centre label lies in front of that joint (it is inside the hand).
    for cap in (test, train):
        for i in range(len(cap)):
            u, v, d = cap.labels_uvd[i][-1]
            patch = cap.depth_mm(i)[int(round(v)) - 2:int(round(v)) + 3, int(round(u)) - 2:int(round(u)) + 3]
            surface = np.median(patch[patch > 0])
            assert 0 < d - surface < 100, (cap.root, i, d, surface)
            centre = locate_hand(cap.depth_mm(i), cap.intrinsics).centre_uvd
            assert np.hypot(*(centre[:2] - cap.labels_uvd[i][-1][:2])) < 60

    # The rig's side camera sees the hand where its extrinsics put it: the detected hand centre of
    # the front frame, carried into the side camera, lands on a surface at that depth.
    side = unlabeled.view("side")
    assert side is not None and not test.views and not train.views
    for i in range(len(unlabeled)):
        centre = side.to_view(uvd_to_xyz(unlabeled.locate(i).centre_uvd, NYU_KINECT))
        u, v, d = xyz_to_uvd(centre, side.intrinsics)
        patch = unlabeled.depth_mm(i, side)[int(round(v)) - 4:int(round(v)) + 5, int(round(u)) - 4:int(round(u)) + 5]
        assert (patch > 0).any() and abs(np.median(patch[patch > 0]) - d) < 60, (i, d, patch)
        assert not np.array_equal(unlabeled.depth_mm(i, side), unlabeled.depth_mm(i))

    pairs = open_pairs(out / "pairs", 4)
    assert len(pairs.twins) == 4
    assert record["commands"]["pairs"]["argv"][:3] == ["render-hands", "--poses", "../target_train_poses.npz"]
    source = json.loads((out / "source" / "manifest.json").read_text())
    assert (source["views"], source["sensor"], source["poses"], source["count"]) == (3, "clean", "prior", 16)


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--preset", "tiny", "--out", "/proc/sim2real"], "/proc/sim2real: cannot write"),
    (["--preset", "tiny", "--shared", "/nonexistent/shared"], "/nonexistent/shared: shared data folder not found"),
    (["--preset", "tiny", "--test", "0"], "frame counts must be >= 1"),
    (["--preset", "tiny", "--seed", "-1"], "--seed must be >= 0"),
    (["--preset", "tiny", "--figure", "/nonexistent/fig.png"], "/nonexistent/fig.png: cannot write (no such folder"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    result = _run(*args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()
    assert message in last[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_hole_shapes_keep_only_their_own_pixels():
    """A small hole inside another hole's bounding box is not part of that hole's shape."""
    sys.path.insert(0, str(BUILD.parent))
    import target as tgt
    holes = np.zeros((9, 9), bool)
    holes[1, 1:8] = holes[1:8, 1] = True          # an L of 13 pixels
    holes[5, 5] = True                             # a pixel inside the L's box
    shapes = tgt.hole_shapes(holes)
    assert sorted(int(s.sum()) for s in shapes) == [1, 13]
    assert [s.shape for s in shapes] == [(7, 7), (1, 1)]


@needs_shared
def test_splits_larger_than_their_pool_vary_the_pose():
    """The paper preset's pools run out of NYU poses: later passes perturb them, labels stay exact."""
    sys.path.insert(0, str(BUILD.parent))
    import target as tgt
    from hand_models.model import HandModel
    from render.camera import NYU_KINECT, xyz_to_uvd

    model = HandModel.load("open")
    labels = tgt.load_nyu_labels(SHARED / "eval_anchors" / "nyu" / "nyu_test_groundtruth_label.txt")
    splits = tgt.split_nyu(len(labels), 0)
    assert sum(len(v) for v in splits.values()) == len(labels)
    assert not set(splits["test"]) & set(splits["train"])
    holes = tgt.HolePatterns.measure([SHARED / "real_samples" / "nyu"])
    synth = tgt.TargetSynthesizer(model, holes, seed=0)
    try:
        fitted = tgt.fit_nyu(model, synth.prior, labels, splits["train"][:2], steps=30)
        frames = synth.frames("train", 0, 4, fitted)
    finally:
        synth.close()
    assert not np.allclose(frames[0].pose.hand_pose, frames[2].pose.hand_pose)   # pose 0, second pass
    assert np.all(synth.prior.within_limits(np.concatenate([f.pose.hand_pose for f in frames]), 1e-3))
    for f in frames:
        with torch.no_grad():
            joints = model(torch.from_numpy(f.pose.hand_pose), torch.from_numpy(f.pose.betas),
                           torch.from_numpy(f.pose.global_orient), torch.from_numpy(f.transl_m[None]).float()).nyu14
        np.testing.assert_allclose(xyz_to_uvd(joints[0].double().numpy() * 1000, NYU_KINECT), f.nyu14_uvd, atol=0.05)
        assert f.depth_mm.shape == (480, 640) and f.depth_mm.dtype == np.uint16


@needs_shared
def test_runner_trains_every_row_per_seed_and_resumes(two_builds, tmp_path, capsys, one_torch_thread):
    """The whole table end to end on the tiny build (2 steps a run): every row once per seed, the
    table aggregated over seeds, and a second invocation reading the finished rows."""
    run = _script(REPO / "benchmarks/sim2real/run.py", "sim2real_run_e2e")
    args = ["--data", str(two_builds[0]), "--out", str(tmp_path / "runs"), "--steps", "1", "2", "--seeds", "0", "1",
            "--no-report"]
    assert run.main(args) == 0
    rows = ["synthetic-only", "supervisedn-all", "murauern-all", "feature-mappingn-all", "simgan", "aign",
            "twins-onlyn-all"]
    for seed in (0, 1):
        assert sorted(p.name for p in (tmp_path / "runs" / f"seed{seed}").iterdir()) == sorted(rows)
    first = capsys.readouterr().out
    assert first.count(" steps, ") == 2 * len(rows)                    # each run's closing line
    table = first[first.index("| method |"):]
    assert len(table.strip().splitlines()) == 2 + len(rows) and table.count(" ± ") == len(rows)
    twins = json.loads((tmp_path / "runs" / "seed0" / "twins-onlyn-all" / "config.json").read_text())
    assert twins["synthetic"].endswith("pairs") and twins["method"] == "synthetic-only"
    # A result scored by an earlier runner (no palm-centred score) is scored again, not trained again.
    old = tmp_path / "runs" / "seed1" / "aign" / "result.json"
    scored = json.loads(old.read_text())
    assert scored["config"]["steps"] == 2 and scored["config"]["method"] == "aign"
    old.write_text(json.dumps({k: v for k, v in scored.items() if k != "palm_centred_error_mm"}))
    checkpoint = (old.parent / "checkpoint.pt").stat().st_mtime_ns
    # So is one scored under other resolved settings (a preset's default changed since, say).
    other = tmp_path / "runs" / "seed1" / "simgan" / "result.json"
    simgan = json.loads(other.read_text())
    other.write_text(json.dumps({**simgan, "config": {**simgan["config"], "batch_size": 99}}))
    # Read back, and this time the report: into --docs, the repository's docs untouched.
    documented = (REPO / "docs" / "benchmarks.md").read_bytes()
    docs = tmp_path / "docs"
    report = [*args[:-1], "--docs", str(docs)]
    assert run.main(report) == 0                                       # everything read back, nothing trained
    again = capsys.readouterr().out
    assert again.count(" steps, ") == 2 and again[again.index("| method |"):] == table   # aign's, simgan's runs, finished
    assert again.count("read back from") == 2 * len(rows) - 2
    assert json.loads(old.read_text()) == scored and (old.parent / "checkpoint.pt").stat().st_mtime_ns == checkpoint
    assert json.loads(other.read_text()) == simgan
    section = (docs / "benchmarks.md").read_text()
    assert "A SMOKE RUN: --steps 1 2" in section and " ".join(report) in section and table.strip() in section
    assert all((docs / name).stat().st_size > 1000     # the tiny build has 3 test frames: SimGAN's picture too
               for name in ("sim2real_curves.png", "sim2real_real_frames.png", "simgan_refined.png"))
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == documented
    # Other settings into the same folders: train-mapping refuses them, no result of the old ones is reused.
    assert run.main([*args[:args.index("--steps")], "--steps", "2", "3", "--seeds", "0", "--no-report"]) == 2
    assert "different settings (pretrain_steps" in capsys.readouterr().err
    # Runs trained on one build are not scored on another: a rebuilt --data is refused for them.
    record = json.loads((tmp_path / "runs" / "data.json").read_text())
    (tmp_path / "runs" / "data.json").write_text(json.dumps({**record, "checksums": {**record["checksums"], "target_test": "0"}}))
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its runs were trained on another build of the data" in err
    assert "differ in target_test" in err


@needs_shared
def test_runner_refuses_before_training(two_builds, tmp_path, capsys):
    """Settings a row's method refuses, and a damaged real sample, stop the table before any row
    trains, in one line."""
    import shutil
    run = _script(REPO / "benchmarks/sim2real/run.py", "sim2real_run_refuse")
    out = tmp_path / "runs"
    args = ["--data", str(two_builds[0]), "--out", str(out), "--no-report"]
    assert run.main([*args, "--steps", "0", "2"]) == 2      # feature-mapping freezes a pre-trained head
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "row feature-mapping n=all: method feature-mapping" in err
    assert "pretrain_steps must be positive" in err
    shared = tmp_path / "shared"
    shutil.copytree(SHARED / "real_samples" / "nyu", shared / "real_samples" / "nyu")
    (shared / "real_samples" / "nyu" / "capture.json").write_text("{")
    assert run.main([*args, "--steps", "1", "2", "--shared", str(shared)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nyu/capture.json" in err
    assert not any(out.glob("seed*/*/checkpoint.pt"))


@needs_shared
def test_a_failed_background_render_stops_the_build_early(tmp_path):
    """render-hands renders the source beside the target frames: its failure ends the build once
    seen, not after every target split has been built."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "source").write_text("not a folder")
    result = _run("--preset", "tiny", "--out", str(out), "--workers", "1", "--shared", str(SHARED))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "render-hands failed" in last and ".source.log" in last and "Traceback" not in result.stderr, result.stderr
    assert not (out / "target_unlabeled").exists() and not (out / "build.json").exists()
