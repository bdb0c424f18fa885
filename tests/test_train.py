"""train-mapping on tiny shards and the real samples: every method, overfitting, exact resume,
predict + hand-eval, NaN stop, refused inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main
from training.config import ConfigError, TrainConfig, lr_multiplier, preset
from training.data import Parts, TrainStream, open_sources
from training.evaluate import main as hand_eval
from training.methods import REGISTRY, build, method_class
from training.networks import Encoder, Mapping, ViewDecoder
from training.train import load_checkpoint

TINY = {"batch_size": 8, "pretrain_steps": 2, "steps": 4, "log_every": 1, "eval_every": 2,
        "checkpoint_every": 2, "workers": 0}


# Most runs here train on the one labelled NYU frame and evaluate on it (the fixture `trained`
# checks the warning that says so).
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:.*--eval is the first --real capture:UserWarning")]


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared):
    """Synthetic 3-view shards, and twins of the labelled NYU frame rendered from its fitted pose."""
    from hand_models.fitting import fit
    from hand_models.model import HandModel
    from hand_models.poses import save_pose_file
    from hand_models.prior import PosePrior
    from render.camera import NYU_KINECT, uvd_to_xyz

    root = tmp_path_factory.mktemp("train")
    render = [sys.executable, "-m", "render.cli", "--workers", "1", "--sensor", "kinect", "--quiet"]
    subprocess.run(render + ["--n", "32", "--shard-size", "8", "--views", "3", "--out", str(root / "synth")], check=True)
    labels = np.loadtxt(shared / "real_samples/nyu/labels_uvd.txt", ndmin=2).reshape(-1, 14, 3)
    model = HandModel.load("open")
    result = fit(model, PosePrior(model), uvd_to_xyz(labels, NYU_KINECT) / 1000.0, "nyu14", steps=60)
    save_pose_file(root / "nyu_pose.npz", result.poses)
    subprocess.run(render + ["--n", "4", "--shard-size", "4", "--poses", str(root / "nyu_pose.npz"),
                             "--out", str(root / "pairs")], check=True)
    real = shared / "real_samples"
    return {"root": root, "synthetic": root / "synth", "pairs": root / "pairs", "nyu": real / "nyu",
            "real": [real / "nyu", _rig_capture(real / "realsense_sr305/seq_a", root / "rig"), real / "bighand"]}


def _rig_capture(src: Path, root: Path) -> Path:
    """A copy of a real capture whose frames a second, co-located camera ("side", identity
    extrinsics) films again: its view-prediction targets are the frames' own unaugmented crops."""
    import shutil

    shutil.copytree(src, root)
    shutil.copytree(src, root / "side", ignore=shutil.ignore_patterns("*.json"))
    meta = json.loads((root / "capture.json").read_text())
    meta["views"] = [{"name": "side", "folder": "side", "intrinsics": meta["intrinsics"],
                      "extrinsics_mm": np.eye(4).tolist()}]
    (root / "capture.json").write_text(json.dumps(meta))
    return root


def _config(tmp: Path, **settings) -> Path:
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.json"
    path.write_text(json.dumps({**TINY, **settings}))
    return path


def _args(data: dict, method: str, out: Path, config: Path, labeled: bool = True) -> list[str]:
    args = ["--synthetic", str(data["synthetic"]), "--real", *map(str, data["real"]), "--method", method,
            "--preset", "cpu-small", "--config", str(config), "--out", str(out), "--eval", str(data["nyu"]), "--quiet"]
    if labeled:
        args += ["--n-labeled", "1", "--pairs", str(data["pairs"])]
    return args


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


MAIN_TERMS = {
    "synthetic-only": {"pose_synth"},
    "supervised": {"pose_synth", "pose_real"},
    "murauer": {"pose_synth", "view", "view_real", "pose_real", "embedding", "adversarial", "critic"},
    "feature-mapping": {"pose_synth", "pose_real", "embedding"},
}


@pytest.fixture(scope="module")
def trained(data):
    """The methods of MAIN_TERMS trained for 2 pre-training and 2 main steps (simgan and aign:
    tests/test_sim2real_methods.py). The one labelled NYU frame is trained on and evaluated on, as
    the warning says."""
    runs = {}
    for method in MAIN_TERMS:
        run = data["root"] / f"run-{method}"
        with pytest.warns(UserWarning, match=r"nyu: --eval is the first --real capture, so its score includes the 1 frame"):
            assert main(_args(data, method, run, _config(data["root"]))) == 0
        runs[method] = run
    return runs



def test_every_registered_method_is_trained_by_a_test():
    assert set(REGISTRY) == set(MAIN_TERMS) | {"simgan", "aign"}


@pytest.mark.parametrize("method", list(MAIN_TERMS))
def test_every_method_trains(trained, method):
    run = trained[method]
    records = _records(run)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for r in train for k, v in r.items() if k.startswith("train/"))
    main_terms = {k[len("train/"):] for k in train[-1] if k.startswith("train/")} - {"loss"}
    assert main_terms == MAIN_TERMS[method]
    assert train[0]["phase"] == "pretrain" and train[-1]["phase"] == "main"
    # The schedule's warm-up restarts when the main phase begins.
    assert train[-1]["lr"] == pytest.approx(train[0]["lr"])
    evals = [r for r in records if "eval_mean_error_mm" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["eval_frames"] == 1
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == method and config["lr"] == preset("cpu-small").lr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_per_s"] > 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    assert list((run / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("method", ["murauer", "supervised"])
def test_plot_draws_every_logged_term(trained, tmp_path, monkeypatch, method):
    """train-mapping plot shows each loss term the run logged, whatever the method's terms are."""
    import training.curves as curves

    drawn = {}
    monkeypatch.setattr(curves, "save_figure", lambda fig, path, dpi: drawn.update(
        {line.get_label(): i for i, ax in enumerate(fig.axes) for line in ax.get_lines() if not line.get_label().startswith("_")}))
    assert main(["plot", str(trained[method]), "--out", str(tmp_path / "c.png")]) == 0
    logged = {k[len("train/"):] for r in _records(trained[method]) for k in r if k.startswith("train/")} - {"loss"}
    assert logged <= set(drawn) and drawn["pose_synth"] == 0
    assert [curves.panel(t) for t in ("pose_real", "view_real", "silhouette", "self_reg", "realism", "pose_adversarial",
                                      "critic")] == [0, 1, 1, 1, 2, 2, 2]


def test_plot_of_a_damaged_run_is_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["supervised"], run)
    (run / "config.json").write_text("[]")
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err == (f"train-mapping plot: error: {run}: cannot plot ({run / 'config.json'}: "
                                       f"run config must be a JSON object)\n")
    # Hand-edited values of the wrong type are passed over; a run with no records is no picture.
    (run / "config.json").write_text(json.dumps({"pretrain_steps": "600", "method": "supervised"}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": "x", "train/loss": 1.0}) + "\n" + json.dumps({"step": 9, "train/loss": "1"}) + "\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    (run / "metrics.jsonl").write_text("")
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "d.png")]) == 2
    assert capsys.readouterr().err == (f"train-mapping plot: error: {run}: cannot plot ({run / 'metrics.jsonl'}: "
                                       f"no training records to plot)\n")
    assert not (tmp_path / "d.png").exists()


def test_predict_and_hand_eval_round_trip(trained, data, tmp_path, capsys):
    run = trained["murauer"]
    pred = tmp_path / "pred.txt"
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(data["nyu"]),
                 "--out", str(pred)]) == 0
    rows = np.loadtxt(pred, ndmin=2)
    assert rows.shape == (1, 42) and np.all(rows[:, 2::3] > 0)
    capsys.readouterr()
    assert hand_eval(["--pred", str(pred), "--gt", str(data["nyu"] / "labels_uvd.txt"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    # The same checkpoint, frames and crops as the evaluation during training: the same error.
    during = json.loads((run / "summary.json").read_text())["eval_mean_error_mm"]
    assert scored["mean_error_mm"] == pytest.approx(during, abs=1e-3)


def test_predict_saves_and_reuses_crop_centres(trained, data, tmp_path, capsys):
    """--save-centres writes the crop centres in the capture's own images (a left hand's mirrored
    back), and --centre FILE crops around them again: the same predictions, nothing detected."""
    import shutil

    from PIL import Image

    left = tmp_path / "left"   # the NYU frame as a left hand would be filmed: mirrored image and labels
    shutil.copytree(data["nyu"], left)
    for png in left.glob("*.png"):
        Image.fromarray(np.asarray(Image.open(png))[:, ::-1]).save(png)
    labels = np.loadtxt(left / "labels_uvd.txt", ndmin=2).reshape(-1, 14, 3)
    labels[..., 0] = 639 - labels[..., 0]
    np.savetxt(left / "labels_uvd.txt", labels.reshape(len(labels), -1), fmt="%.4f")
    meta = json.loads((left / "capture.json").read_text())
    (left / "capture.json").write_text(json.dumps({**meta, "hand": "left"}))

    checkpoint = str(trained["murauer"] / "checkpoint.pt")

    def predict(capture: Path, name: str, *extra: str) -> np.ndarray:
        assert main(["predict", "--checkpoint", checkpoint, "--real", str(capture), "--out", str(tmp_path / name),
                     *extra]) == 0
        return np.loadtxt(tmp_path / name, ndmin=2)

    right = predict(data["nyu"], "right.txt", "--save-centres", str(tmp_path / "right-centres.txt"))
    mirrored = predict(left, "left.txt", "--save-centres", str(tmp_path / "left-centres.txt"))
    centres = [np.loadtxt(tmp_path / f"{side}-centres.txt", ndmin=2) for side in ("right", "left")]
    # (A mirrored image's cx is 639 - 320 = 319, so its viewing rays differ by a pixel: 0.004 mm.)
    np.testing.assert_allclose(centres[1], centres[0] * [-1, 1, 1] + [639, 0, 0], atol=0.05)
    np.testing.assert_allclose(mirrored[:, 0::3], 639 - right[:, 0::3], atol=0.05)
    again = predict(left, "again.txt", "--centre", str(tmp_path / "left-centres.txt"))
    np.testing.assert_allclose(again, mirrored, atol=1e-3)

    capsys.readouterr()
    assert main(["predict", "--checkpoint", checkpoint, "--real", str(left), "--out", str(tmp_path / "p.txt"),
                 "--centre", "label"]) == 2
    assert capsys.readouterr().err == "train-mapping predict: error: --centre label: not detect, labels or a centres file\n"
    (tmp_path / "two.txt").write_text("320 240 800\n330 250 810\n")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", checkpoint, "--real", str(left), "--out", str(tmp_path / "p.txt"),
                 "--centre", str(tmp_path / "two.txt")]) == 2
    assert capsys.readouterr().err == f"train-mapping predict: error: {tmp_path / 'two.txt'}: 2 centres for 1 frames\n"
    # Centres that cannot be a hand's: off the image, xyz (mm) given for uvd, depth in metres.
    for bad, message in [("5000 5000 700", "centre 5000 5000 lies outside the 640x480 image"),
                         ("-145.3 37.9 778.3", "centre -145.3 37.9 lies outside the 640x480 image"),
                         ("214 272 0.768", "centre depth 0.768 mm is not a hand's distance")]:
        (tmp_path / "bad.txt").write_text(bad + "\n")
        capsys.readouterr()
        assert main(["predict", "--checkpoint", checkpoint, "--real", str(left), "--out", str(tmp_path / "p.txt"),
                     "--centre", str(tmp_path / "bad.txt")]) == 2
        assert capsys.readouterr().err.startswith(f"train-mapping predict: error: {tmp_path / 'bad.txt'}: frame 0: {message}")
    assert not (tmp_path / "p.txt").exists()


def test_predict_warns_in_one_line_of_a_frame_without_a_hand(trained, data, tmp_path):
    """A recording that ends before the hand leaves the view: every frame is predicted, the
    empty one at its neighbour's centre, and one warning line says so."""
    import shutil

    from PIL import Image

    capture = tmp_path / "ends-empty"
    shutil.copytree(data["nyu"], capture)
    meta = json.loads((capture / "capture.json").read_text())
    (capture / "capture.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("labels", "label_joints")}))
    frame = next(capture.glob("*.png"))
    empty = np.zeros_like(np.asarray(Image.open(frame)))
    Image.fromarray(empty).save(capture / "z_empty.png")
    done = subprocess.run([sys.executable, "-m", "training.cli", "predict", "--checkpoint",
                           str(trained["murauer"] / "checkpoint.pt"), "--real", str(capture), "--out", str(tmp_path / "p.txt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = np.loadtxt(tmp_path / "p.txt", ndmin=2)
    assert rows.shape == (2, 42)
    np.testing.assert_allclose(rows[1, 0::3].mean(), rows[0, 0::3].mean(), atol=40)   # cropped where frame 0's hand is
    assert done.stderr == (f"train-mapping: warning: {capture}: no hand found in 1 of 2 frames (z_empty.png, ...); "
                           "cropped at a neighbour's centre\n")


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_continues_exactly(data, tmp_path):
    """7 steps straight == 5 steps, stop, resume to 7; two loader workers (the resumed run starts
    at an odd step, so worker 0 continues worker 1's share), phase change before the stop."""
    config = _config(tmp_path, steps=7, pretrain_steps=3, checkpoint_every=3, workers=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(data, "murauer", straight, config)) == 0
    assert main(_args(data, "murauer", resumed, config) + ["--max-steps", "5"]) == 0
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == 5
    assert main(_args(data, "murauer", resumed, config)) == 0
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for key in ("model", "optimizer", "scheduler", "critic", "critic_optimizer", "rng"):
        assert _tensors_equal(a[key], b[key]), key
    train = lambda run: [{k: v for k, v in r.items() if k != "samples_per_s"}  # noqa: E731
                         for r in _records(run) if "train/loss" in r]
    assert train(straight) == train(resumed)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(resumed / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == list(range(1, 8))   # step 5 too, logged before the stop


def test_resume_refuses_other_settings(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=2))) == 0
    capsys.readouterr()
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=4, lr=0.1))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.pt" in err and "lr" in err
    # A run is not cut back below the step it reached.
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=1))) == 2
    assert "at step 2, past steps = 1" in capsys.readouterr().err
    # Under the cosine schedule the step count sets every rate: another count is other settings.
    cosine = tmp_path / "cosine"
    assert main(_args(data, "synthetic-only", cosine, _config(tmp_path, steps=2, lr_schedule="cosine",
                                                                  pretrain_steps=1))) == 0
    capsys.readouterr()
    assert main(_args(data, "synthetic-only", cosine, _config(tmp_path, steps=4, lr_schedule="cosine",
                                                                  pretrain_steps=1))) == 2
    assert "different settings (steps)" in capsys.readouterr().err


def test_discriminator_schedule_keeps_step_with_the_networks(data, tmp_path):
    """The discriminator steps in the main phase only; its learning rate is the networks' at the
    same step (it once read its own step count as the run's, so it annealed a phase early)."""
    run = tmp_path / "run"
    assert main(_args(data, "murauer", run, _config(tmp_path, steps=6, epoch_steps=1))) == 0
    state = load_checkpoint(run / "checkpoint.pt")
    lrs = [state[k]["param_groups"][0]["lr"] for k in ("optimizer", "critic_optimizer")]
    assert lrs[0] == pytest.approx(preset("cpu-small").lr * np.exp(-0.2)) and lrs[1] == lrs[0]


def test_a_run_stopped_before_its_summary_keeps_its_last_evaluation(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=2), labeled=False)) == 0
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()   # killed after the last checkpoint, before the summary
    capsys.readouterr()
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=2), labeled=False)) == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["eval_mean_error_mm"] == first["eval_mean_error_mm"] and "not evaluated" not in capsys.readouterr().out


def test_resume_refuses_changed_data(data, tmp_path, capsys):
    """A frame taken out of a capture between two sessions changes every later batch."""
    import shutil

    capture = tmp_path / "capture"
    shutil.copytree(data["real"][1], capture)
    args = _args(data, "synthetic-only", tmp_path / "run", _config(tmp_path, steps=2), labeled=False)
    args[args.index("--real") + 1:args.index("--method")] = [str(capture)]
    assert main(args) == 0
    last = sorted(capture.glob("*.png"))[-1]
    last.unlink()
    (capture / "side" / last.name).unlink()
    capsys.readouterr()
    assert main(args + ["--max-steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"train-mapping: error: {tmp_path / 'run' / 'checkpoint.pt'}: the data changed since the run "
                   f"began (real frames [8] then, [7] now); the batches depend on it: use a new --out folder or "
                   f"the data as it was"), err


def test_loss_goes_down_on_a_fixed_batch(data):
    config = TrainConfig.from_dict({**TINY, "synthetic": str(data["synthetic"]), "real": [str(p) for p in data["real"]],
                                    "n_labeled": 1, "pairs": str(data["pairs"]), "method": "murauer",
                                    "pretrain_steps": 0, "lr_schedule": "constant"}, preset("cpu-small"))
    parts = Parts.of(method_class("murauer"))
    batch = next(iter(TrainStream(config, open_sources(config, parts), parts)))
    assert {"syn_view", "lab_image", "pair_image", "unl_image"} <= set(batch)
    torch.manual_seed(0)
    method = build(config)
    critic = method.make_discriminator()
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        terms = method(batch, False, critic)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append({k: float(v.detach()) for k, v in terms.items() if not k.startswith("critic_")})
    for term in ("pose_synth", "pose_real"):
        assert losses[-1][term] < 0.1 * losses[0][term], term
    assert losses[-1]["loss"] < 0.3 * losses[0]["loss"]
    # The embedding target (the twin's features) moves with the encoder, and view prediction,
    # weighted 1e-4, learns slowest: both still fall clearly.
    assert losses[-1]["embedding"] < 0.6 * losses[0]["embedding"]
    assert losses[-1]["view"] < 0.7 * losses[0]["view"]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    config = _config(tmp_path, lr=1e30, steps=6, pretrain_steps=6, checkpoint_every=1, lr_schedule="constant")
    assert main(_args(data, "synthetic-only", run, config, labeled=False)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "loss term 'pose_synth'" in err and "last good checkpoint" in err
    failed_at = int(err.split("step ")[1].split(":")[0])
    kept = load_checkpoint(run / "checkpoint.pt")
    assert 1 <= kept["step"] <= failed_at
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_bad_inputs_give_one_clear_line(data, tmp_path, capsys):
    config = _config(tmp_path)
    cases = [
        (["--synthetic", str(tmp_path / "nowhere")], "nowhere: shard folder does not exist"),
        (["--real", str(data["real"][2])], "capture has no labels"),
        (["--n-labeled", "5"], "5 labelled frames asked for"),
        (["--method", "feature-mapping"], "needs corresponding real/synthetic pairs"),
        (["--n-labeled", "0"], "needs labelled real frames"),
    ]
    for extra, message in cases:
        base = ["--synthetic", str(data["synthetic"]), "--method", "supervised", "--preset", "cpu-small",
                "--config", str(config), "--out", str(tmp_path / "run-bad"), "--quiet", "--real", str(data["nyu"]),
                "--n-labeled", "1"]
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)
    assert not (tmp_path / "run-bad").exists()   # nothing written for refused input

    corrupt = tmp_path / "run-corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    assert main(_args(data, "synthetic-only", corrupt, config, labeled=False)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.pt: not a readable checkpoint" in err
    assert main(["predict", "--checkpoint", str(corrupt / "checkpoint.pt"), "--real", str(data["nyu"]),
                 "--out", str(tmp_path / "p.txt")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()

    # A damaged shard: one line naming the shard, before training; a label's digit changed still
    # parses, so only the checksum tells.
    import shutil
    import tarfile
    damaged = tmp_path / "damaged"
    shutil.copytree(data["synthetic"], damaged)
    shard = sorted(damaged.glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        label = next(m for m in tar if m.name.endswith(".json"))
    raw = bytearray(shard.read_bytes())
    at = next(i for i in range(label.offset_data, label.offset_data + label.size) if raw[i:i + 1].isdigit())
    raw[at] = ord("7") if raw[at] != ord("7") else ord("3")
    shard.write_bytes(bytes(raw))
    args = _args(data, "synthetic-only", tmp_path / "run-damaged", _config(tmp_path, workers=1), labeled=False)
    args[args.index("--synthetic") + 1] = str(damaged)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train-mapping: error: {shard}: sha256 differs from the manifest (damaged or replaced; " \
                  f"inspect-shards {damaged} lists every problem)", err
    assert not (tmp_path / "run-damaged").exists()

    # Intact tars whose samples do not decode, or decode to a label missing its fields: one line
    # naming shard and sample.
    for suffix, payload, message in ((".depth.png", b"garbage" * 10, "cannot decode depth.png (ValueError: not an image)"),
                                     (".json", b'{"a": 1}', "malformed sample (KeyError: "),
                                     (".json", b'[1, 2, 3]', "the sample's json is not an object")):
        keys = _replace_members(sorted(data["synthetic"].glob("shard-*.tar"))[0], shard, suffix, payload)
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert any(f"{shard}: {key}: {message}" in err for key in keys), err


def test_a_bad_real_frame_or_pairs_path_is_refused_before_training(data, tmp_path, capsys):
    import shutil

    from PIL import Image

    capture = tmp_path / "capture"
    shutil.copytree(data["real"][1], capture, ignore=shutil.ignore_patterns("side"))
    meta = json.loads((capture / "capture.json").read_text())
    meta.pop("views")
    (capture / "capture.json").write_text(json.dumps(meta))
    last = sorted(capture.glob("*.png"))[-1]
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(last)
    args = _args(data, "synthetic-only", tmp_path / "run", _config(tmp_path), labeled=False)
    args[args.index("--real") + 1:args.index("--method")] = [str(capture)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{last}: uint16 depth must be a 16-bit" in err, err
    assert not (tmp_path / "run").exists()

    args = _args(data, "supervised", tmp_path / "run", _config(tmp_path))
    args[args.index("--pairs") + 1] = str(tmp_path / "no-pairs")
    assert main(args) == 2
    assert "no-pairs: shard folder does not exist" in capsys.readouterr().err

    pairs = tmp_path / "pairs"
    shutil.copytree(data["pairs"], pairs)
    shutil.copy(data["root"] / "nyu_pose.npz", tmp_path)   # its pose file, beside it as the manifest says
    shard = sorted(pairs.glob("shard-*.tar"))[0]
    _replace_members(shard, shard, ".json", b'{"a": 1}')
    args = _args(data, "feature-mapping", tmp_path / "run", _config(tmp_path))
    args[args.index("--pairs") + 1] = str(pairs)
    assert main(args) == 2
    assert f"{shard}: 000000000: malformed sample (index None)" in capsys.readouterr().err


def test_a_rig_view_that_training_cannot_use_is_found_before_training(data, tmp_path, capsys):
    """A view named otherwise than the one predicted would silently drop view prediction: warned.
    Extrinsics that put the hand behind the view camera are refused before pre-training, not
    when the main phase first reads a view."""
    import shutil

    rig = tmp_path / "rig"
    shutil.copytree(data["real"][1], rig)
    meta = json.loads((rig / "capture.json").read_text())
    meta["views"][0]["name"] = "Side"
    (rig / "capture.json").write_text(json.dumps(meta))
    args = _args(data, "murauer", tmp_path / "renamed", _config(tmp_path), labeled=False)
    args[args.index("--real") + 1:args.index("--method")] = [str(rig)]
    with pytest.warns(UserWarning, match=r"rig: none of its views \(Side\) is named 'side', the view training predicts"):
        assert main(args) == 0
    assert "train/view_real" not in set().union(*_records(tmp_path / "renamed"))

    # A camera turned to face away; and a side camera 60 degrees round the hand, its translation
    # copied in metres (render-hands stores its extrinsics in metres): the rotation alone swings
    # the hand out of the view.
    a = np.radians(60)
    side = np.eye(4)
    side[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    side[:3, 3] = (np.array([0, 0, 700.0]) - side[:3, :3] @ [0, 0, 700.0]) / 1000
    meta["views"][0]["name"] = "side"
    for name, extrinsics, messages in (
            ("behind", np.diag([-1.0, 1.0, -1.0, 1.0]), ["the hand lies behind the side camera; check its extrinsics_mm"]),
            ("metres", side, ["put the hand outside that camera's image on every frame checked", "in metres"])):
        meta["views"][0]["extrinsics_mm"] = extrinsics.tolist()
        (rig / "capture.json").write_text(json.dumps(meta))
        args[args.index("--out") + 1] = str(tmp_path / name)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(m in err for m in messages), err
        assert not (tmp_path / name).exists()


def test_held_out_frames_without_a_hand_are_named_as_the_evaluation(data, tmp_path, capsys):
    import shutil

    from PIL import Image

    capture = tmp_path / "nyu2"
    shutil.copytree(data["nyu"], capture)
    frame = sorted(capture.glob("*.png"))[0]
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(capture / f"z{frame.name}")   # a dropped frame
    labels = (capture / "labels_uvd.txt").read_text()
    (capture / "labels_uvd.txt").write_text(labels + labels)
    args = _args(data, "supervised", tmp_path / "run", _config(tmp_path))
    args[args.index("--real") + 1:args.index("--method")] = [str(capture)]
    del args[args.index("--pairs"):args.index("--pairs") + 2]
    del args[args.index("--eval"):args.index("--eval") + 2]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"train-mapping: error: evaluation frames (the labelled frames not trained on; give --eval CAPTURE for "
        f"others): {capture}: no hand found in the 1 frame to crop (z{frame.name})")


def test_settings_and_labels_no_run_can_use_are_refused_before_anything_is_written(data, tmp_path, capsys):
    """From a user's review: each of these trained silently, failed with a traceback, or left a
    half-written run folder."""
    import shutil

    def refused(args: list[str], message: str) -> None:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())

    out = tmp_path / "run"
    base = ["--synthetic", str(data["synthetic"]), "--real", str(data["nyu"]), "--method", "synthetic-only",
            "--preset", "cpu-small", "--quiet", "--out", str(out)]
    # Evaluating on the held-out labelled frames: a bad --real-labels is an error, not "not evaluated".
    refused(base + ["--config", str(_config(tmp_path)), "--real-labels", str(tmp_path / "none.txt")], "none.txt: cannot read")
    metres = np.loadtxt(data["nyu"] / "labels_uvd.txt", ndmin=2)
    metres[:, 2::3] /= 1000
    np.savetxt(tmp_path / "metres.txt", metres)
    refused(base + ["--config", str(_config(tmp_path)), "--real-labels", str(tmp_path / "metres.txt")],
            "metres.txt: frame 0, joint 0: depth 0.")
    for bad, message in [({"lr": -1}, "lr must be a positive number"), ({"w_pose_real": -1}, "w_pose_real = -1.0"),
                         ({"cube_mm": 0}, "cube_mm must be positive"), ({"aug_scale": [1.0]}, "aug_scale must be")]:
        refused(base + ["--config", str(_config(tmp_path, **bad))], message)
    refused(base + ["--config", str(_config(tmp_path)), "--pairs", str(data["pairs"])], "give --n-labeled N with --pairs")
    refused(base + ["--config", str(_config(tmp_path)), "--real", str(data["nyu"]), str(data["nyu"])], "given twice")
    refused(_args(data, "feature-mapping", out, _config(tmp_path, pretrain_steps=0)), "pretrain_steps must be positive")
    refused(base + ["--config", str(_config(tmp_path, workers=5))], "fewer workers")   # 4 shards for 5 workers
    # A folder holding the user's own config.json is not a run to resume into.
    out.mkdir()
    (out / "config.json").write_text(json.dumps(TINY))
    assert main(base + ["--config", str(out / "config.json")]) == 2
    assert "a folder of other files, not a run" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == TINY
    shutil.rmtree(out)

    # The pairs' pose file is found beside the shards, and only by its checksum.
    moved = tmp_path / "moved" / "pairs"
    shutil.copytree(data["pairs"], moved)
    args = _args(data, "feature-mapping", out, _config(tmp_path))
    args[args.index("--pairs") + 1] = str(moved)
    refused(args, "is needed to pair samples with labelled frames, and is not there")
    shutil.copy(data["root"] / "nyu_pose.npz", moved.parent / "nyu_pose.npz")
    assert main(args) == 0   # moved with its pose file: still paired
    shutil.rmtree(out)
    poses = np.load(moved.parent / "nyu_pose.npz")
    np.savez(moved.parent / "nyu_pose.npz", **{k: poses[k] for k in poses.files}, extra=np.zeros(1))
    refused(args, f"{moved.parent / 'nyu_pose.npz'}: not the pose file {moved} was rendered from")


def test_an_interrupted_run_says_which_step_it_resumes_from(trained, tmp_path, capsys, monkeypatch):
    import shutil

    import training.train

    def interrupted(config, out, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.train, "train", interrupted)
    run = tmp_path / "run"
    shutil.copytree(trained["supervised"], run)
    args = ["--synthetic", "x", "--method", "synthetic-only", "--preset", "cpu-small", "--out", str(run)]
    assert main(args) == 130
    assert capsys.readouterr().err == (f"train-mapping: interrupted; run the same command to resume from "
                                       f"{run / 'checkpoint.pt'} (step 4)\n")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "step": "abc"}, run / "checkpoint.pt")   # damaged: no step to resume from
    assert main(args) == 130
    assert capsys.readouterr().err.startswith(f"train-mapping: interrupted; no resumable checkpoint: {run / 'checkpoint.pt'}: "
                                              "not a readable checkpoint (damaged: step 'abc'")
    shutil.rmtree(run)
    assert main(args) == 130
    assert "no checkpoint was saved yet; running the same command starts over" in capsys.readouterr().err


def test_a_capture_labelled_with_another_joint_set_is_not_evaluated_on(data, tmp_path):
    """Labels of another joint set are not bad labels: a run that trains on none of them goes
    ahead without evaluation, and says why."""
    import shutil

    capture = tmp_path / "nyu21"
    shutil.copytree(data["nyu"], capture)
    labels = np.loadtxt(capture / "labels_uvd.txt", ndmin=2).reshape(-1, 14, 3)
    np.savetxt(capture / "labels_uvd.txt", np.concatenate([labels, labels[:, :7]], axis=1).reshape(len(labels), -1))
    meta = json.loads((capture / "capture.json").read_text())
    (capture / "capture.json").write_text(json.dumps({**meta, "label_joints": "21"}))
    with pytest.warns(UserWarning, match="labelled with 21 joints, training nyu14: not evaluated on it"):
        assert main(["--synthetic", str(data["synthetic"]), "--real", str(capture), "--method", "synthetic-only",
                     "--preset", "cpu-small", "--config", str(_config(tmp_path)), "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert "eval_mean_error_mm" not in json.loads((tmp_path / "run" / "summary.json").read_text())


def test_data_paths_in_a_config_file_are_relative_to_it(data, tmp_path, capsys):
    import os

    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "synth").symlink_to(data["synthetic"])
    config = _config(folder, synthetic="synth", real=[os.path.relpath(data["nyu"], folder)])
    args = ["--method", "synthetic-only", "--preset", "cpu-small", "--config", str(config), "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0   # from the test's working folder, not the config's
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["synthetic"] == str(data["synthetic"].resolve()) and saved["real"] == [str(data["nyu"].resolve())]
    # The same folders named on the command line (spelled otherwise) are the same run: it resumes.
    assert main(args + ["--max-steps", "6", "--synthetic", str(folder / "synth"),
                        "--real", str(folder / ".." / os.path.relpath(data["nyu"], tmp_path))]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"] == 4
    (folder / "bad.json").write_text(json.dumps({"aug_scale": ["a", "b"]}))
    capsys.readouterr()
    assert main(["--method", "synthetic-only", "--preset", "cpu-small", "--config", str(folder / "bad.json"),
                 "--synthetic", str(data["synthetic"]), "--out", str(tmp_path / "bad")]) == 2
    assert "aug_scale must be [low, high]" in capsys.readouterr().err


def test_a_malformed_manifest_is_one_line(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "synthetic"
    shutil.copytree(data["synthetic"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][1]["count"] = "lots"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    args = _args(data, "synthetic-only", tmp_path / "run", _config(tmp_path), labeled=False)
    args[args.index("--synthetic") + 1] = str(copy)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train-mapping: error: {copy / 'manifest.json'}: malformed manifest (ValueError: expected a count, got 'lots')"


def _replace_members(src: Path, dst: Path, suffix: str, payload: bytes) -> set[str]:
    """Copy shard `src` to `dst` with every member ending in `suffix` replaced by `payload`, and its
    checksum in dst's manifest updated: a shard written bad, not damaged later; the keys."""
    import io
    import tarfile

    from render.shards import sha256_file

    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(dst, "w") as tar:
        for member, data in members:
            if member.name.endswith(suffix):
                data = payload
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    manifest = json.loads((dst.parent / "manifest.json").read_text())
    for record in manifest["shards"]:
        if record["name"] == dst.name:
            record["sha256"] = sha256_file(dst)
    (dst.parent / "manifest.json").write_text(json.dumps(manifest))
    return {Path(m.name).name.split(".")[0] for m, _ in members}


def test_resume_after_a_torn_metrics_line(data, tmp_path):
    """A crash mid-write leaves half a metrics line: the resumed run drops it and goes on."""
    run, config = tmp_path / "run", _config(tmp_path)
    assert main(_args(data, "synthetic-only", run, config) + ["--max-steps", "2"]) == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "train/lo')
    assert main(_args(data, "synthetic-only", run, config)) == 0
    steps = [r["step"] for r in _records(run) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]


def test_networks_as_the_paper_gives_them():
    config = TrainConfig(synthetic="x")
    encoder = Encoder(config)
    assert encoder.fc.in_features == 4096 and encoder.fc.out_features == 1024   # 256 channels at 4x4
    encoder.eval()
    assert encoder(torch.zeros(2, 1, 128, 128)).shape == (2, 1024)
    decoder = ViewDecoder(config).eval()
    assert decoder(torch.zeros(2, 1024), torch.zeros(2, 3)).shape == (2, 1, 128, 128)
    # The mapping's residual blocks are non-linear (the public code's are linear plus a skip).
    mapping = Mapping(preset("cpu-small"))
    for p in mapping.parameters():
        torch.nn.init.normal_(p, std=0.3)
    a, b = torch.randn(4, 128), torch.randn(4, 128)
    zero = mapping(torch.zeros(1, 128))
    assert not torch.allclose(mapping(a + b) - zero, (mapping(a) - zero) + (mapping(b) - zero), atol=1e-3)


def test_config_and_schedule():
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="decoder_channels"):
        TrainConfig.from_dict({"synthetic": "x", "crop_size": 64}).validate()
    with pytest.raises(ConfigError, match=r"stage_channels must be positive integers, got \[16.5, 16, 32, 32\]"):
        TrainConfig.from_dict({"synthetic": "x", "stage_channels": [16.5, 16, 32, 32]}).validate()
    # Rounded shares that leave a main-phase batch without synthetic frames, or drop a kind of
    # frame the fractions ask for, are refused before training, not at the first main-phase step;
    # a method that reads no real frames takes any batch.
    from training.methods import build
    real = {"synthetic": "x", "real": ["a"], "n_labeled": 5, "pairs": "p"}
    for shares, message in (({"batch_size": 2}, "leaves no synthetic frame once rounded"),
                            ({"batch_size": 10, "paired_fraction": 0.6, "unlabeled_fraction": 0.35}, "no synthetic frame"),
                            ({"batch_size": 4, "paired_fraction": 0.1}, "rounds to no labelled frame per batch")):
        with pytest.raises(ConfigError, match=message):
            build(TrainConfig.from_dict({**real, "method": "murauer", **shares}, preset("cpu-small")).validate())
    build(TrainConfig.from_dict({**real, "method": "synthetic-only", "batch_size": 2}, preset("cpu-small")).validate())
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        TrainConfig.from_dict({"synthetic": "x", "seed": -1}).validate()
    for value in (10**400, float("inf"), True):   # JSON integers have no size limit
        with pytest.raises(ConfigError, match="lr must be a number"):
            TrainConfig.from_dict({"lr": value})
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.batch_size) == (3.3e-4, 1e-3, 64)
    assert (c.w_pose_real, c.w_embedding, c.w_view, c.w_adversarial) == (1.0, 0.2, 1e-4, 1e-5)
    e = c.epoch_steps
    # The public code's epochs count from 1: one epoch at 0.109, two at 0.33, then exp(-0.04 e).
    first = [lr_multiplier(c, k * e) for k in range(5)]
    assert first == pytest.approx([0.1089, 0.33, 0.33, np.exp(-0.16), np.exp(-0.2)])
    assert lr_multiplier(c, e - 1) == pytest.approx(0.1089) and lr_multiplier(c, 9 * e) == pytest.approx(np.exp(-0.4))
    assert lr_multiplier(c, c.pretrain_steps) == pytest.approx(0.1089)   # restarts for the main phase
    cos = TrainConfig(lr_schedule="cosine", pretrain_steps=100, steps=300)
    assert [lr_multiplier(cos, s) for s in (0, 50, 100, 200, 300)] == pytest.approx([1.0, 0.5, 1.0, 0.5, 0.0])
    no_pretraining = TrainConfig(lr_schedule="cosine", pretrain_steps=0, steps=200)   # once 0 from step 1
    assert [lr_multiplier(no_pretraining, s) for s in (0, 1, 100, 200)] == pytest.approx([1.0, 0.999938, 0.5, 0.0])


def test_cuda_code_path_on_cpu(data, tmp_path):
    """bf16 autocast and channels_last, as on CUDA, exercised on the CPU."""
    run = tmp_path / "run"
    config = _config(tmp_path, amp="on", channels_last="on", steps=3, pretrain_steps=1)
    assert main(_args(data, "murauer", run, config)) == 0
    train = [r for r in _records(run) if "train/loss" in r]
    assert len(train) == 3 and all(np.isfinite(r["train/loss"]) for r in train)
    state = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())   # weights stay fp32
    assert main(_args(data, "murauer", run, config) + ["--max-steps", "4"]) == 0   # resumed into channels_last
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_real_frame_cache_gives_the_crops_of_full_frames(shared):
    from training.captures import load_capture
    from training.crop import Augmentation
    from training.data import RealFrameCache, real_crop

    config = TrainConfig.from_dict({"synthetic": "x", "aug_jitter_mm": 15.0, "aug_scale": [0.9, 1.1]}, preset("cpu-small"))
    cache = RealFrameCache(config, budget_mb=1.0)   # small: windows get dropped and decoded again
    rng = np.random.default_rng(0)
    captures = [load_capture(shared / "real_samples/realsense_sr305/seq_a"), load_capture(shared / "real_samples/nyu")]
    for _ in range(3):
        for capture in captures:
            for i in range(len(capture)):
                aug = Augmentation(60.0, 15.0, (0.9, 1.1), 5.0).sample(rng)
                centre = capture.locate(i).centre_uvd
                expected = real_crop(capture, i, config, aug, centre).image
                assert np.array_equal(cache.crop(capture, i, aug, None).image, expected)
    assert cache.used <= 1.0 * 2**20 or len(cache.entries) == 1


def test_a_labelled_frame_cropped_as_unlabeled_is_centred_on_the_detected_hand(shared):
    """MURAUER reads the labelled frames again as unlabeled ones: that crop must not be centred
    on the labels the cache saw first."""
    from training.captures import load_capture
    from training.crop import AugmentParams
    from training.data import RealFrameCache, real_crop
    from training.localize import centre_from_labels

    config = preset("cpu-small")
    cap = load_capture(shared / "real_samples/nyu")
    cache = RealFrameCache(config, budget_mb=64)
    at_labels = centre_from_labels(cap.labels_uvd[0], "nyu14", cap.intrinsics)
    labelled = cache.crop(cap, 0, AugmentParams(), at_labels, cap.labels_uvd[0]).image
    unlabeled = cache.crop(cap, 0, AugmentParams(), None).image
    assert np.array_equal(unlabeled, real_crop(cap, 0, config, AugmentParams(), cap.locate(0).centre_uvd).image)
    assert not np.array_equal(unlabeled, labelled)


def test_ranks_read_disjoint_shards(data):
    # Without augmentation a frame's targets identify it (its pose relative to its palm centre).
    config = TrainConfig.from_dict({**TINY, "synthetic": str(data["synthetic"]), "method": "synthetic-only",
                                    "aug_rotation_deg": 0.0, "aug_jitter_mm": 0.0, "aug_depth_noise_mm": 0.0},
                                   preset("cpu-small"))
    parts = Parts.of(method_class("synthetic-only"))
    sources = open_sources(config, parts)
    poses = []
    for rank in (0, 1):
        stream = iter(TrainStream(config, sources, parts, rank=rank, world=2))
        poses.append(torch.cat([next(stream)["syn_pose"] for _ in range(2)]))   # 16 of each rank's 16 frames
    # 4 shards of 8 frames, 2 per rank: together the ranks saw all 32 frames once.
    frames = [{tuple(np.round(p.numpy(), 4)) for p in rank_poses} for rank_poses in poses]
    assert len(frames[0]) == len(frames[1]) == 16 and not frames[0] & frames[1]


def test_torchrun_two_processes(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.cli",
           *_args(data, "murauer", run, _config(tmp_path, workers=1))]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(run / "checkpoint.pt")["world"] == 2
    # The resolved configuration is a settings file as it stands.
    assert TrainConfig.from_json(run / "config.json").to_dict() == json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert [r["step"] for r in _records(run) if "train/loss" in r] == [1, 2, 3, 4]


def test_torchrun_ranks_leave_data_warnings_to_rank_0(data, tmp_path):
    import shutil

    rig = tmp_path / "rig"
    shutil.copytree(data["real"][1], rig)
    meta = json.loads((rig / "capture.json").read_text())
    meta["views"][0]["name"] = "Side"   # warned about before training
    (rig / "capture.json").write_text(json.dumps(meta))
    args = _args(data, "murauer", tmp_path / "ddp", _config(tmp_path, workers=1), labeled=False)
    args[args.index("--real") + 1:args.index("--method")] = [str(rig)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.cli",
           *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("none of its views (Side)") == 1, result.stderr[-2000:]


def test_unlabeled_frames_without_a_hand_are_passed_over(shared, tmp_path):
    """A real capture with an empty frame among its unlabeled frames still trains: the frame
    that shows no hand is replaced by the next one that does."""
    import shutil

    from PIL import Image

    from training.captures import CaptureError, load_capture
    from training.crop import AugmentParams
    from training.data import RealFrameCache, crop_frames, unlabeled_item

    src = shared / "real_samples" / "realsense_sr305" / "seq_a"
    cap = tmp_path / "cap"
    cap.mkdir()
    shutil.copy(src / "capture.json", cap / "capture.json")
    frames = sorted(src.glob("*.png"), key=lambda p: int(p.stem))[:5]
    for k, f in enumerate(frames):
        shutil.copy(f, cap / f"{k}.png")
    Image.fromarray(np.zeros((480, 640), np.uint16)).save(cap / "1.png")  # no hand at all
    capture = load_capture(cap)
    items = tuple((capture, i) for i in range(len(capture)))
    cache = RealFrameCache(preset("cpu-small"), budget_mb=64)
    empty = unlabeled_item(items, 1, cache, AugmentParams(), None)["image"]
    after = unlabeled_item(items, 2, cache, AugmentParams(), None)["image"]
    assert np.array_equal(empty, after)
    assert not np.array_equal(unlabeled_item(items, 0, cache, AugmentParams(), None)["image"], after)
    # Evaluation and prediction crop every frame: the empty one where its predecessor's hand was.
    with pytest.warns(UserWarning, match="no hand found in 1 of 5 frames"):
        crops = crop_frames(capture, preset("cpu-small"))
    centres = [g.centre_xyz for g in crops.geometries]
    assert len(centres) == 5 and np.array_equal(centres[1], centres[0]) and not np.array_equal(centres[2], centres[0])
    # A frame that cannot be read is an error naming it, not a frame passed over.
    (cap / "3.png").write_bytes(b"not a png")
    with pytest.raises(CaptureError, match="3.png: cannot decode image"):
        unlabeled_item(items, 3, RealFrameCache(preset("cpu-small"), budget_mb=64), AugmentParams(), None)


def test_unlabeled_frames_of_a_rig_come_with_their_view(data):
    """Unlabeled frames of a capture with the target view carry that view's crop around the
    detected hand (carried through the rig's extrinsics); frames of other captures carry zeros
    and has_view 0, so that the view term skips them."""
    from training.captures import load_capture
    from training.crop import Augmentation, AugmentParams
    from training.data import RealFrameCache, real_crop, unlabeled_item

    config = TrainConfig.from_dict({"synthetic": "x"}, preset("cpu-small"))
    rig, plain = load_capture(data["real"][1]), load_capture(data["real"][2])
    items = tuple((rig, i) for i in range(len(rig))) + ((plain, 0),)
    cache = RealFrameCache(config, budget_mb=64)
    aug = Augmentation(60.0, 15.0, (0.9, 1.1), 5.0).sample(np.random.default_rng(1))
    for k, (capture, i) in enumerate(items):
        item = unlabeled_item(items, k, cache, aug, "side")
        centre = capture.locate(i).centre_uvd
        np.testing.assert_array_equal(item["image"][0], real_crop(capture, i, config, aug, centre).image)
        if capture is rig:
            expected = real_crop(capture, i, config, AugmentParams(), centre).image   # co-located camera
            assert item["has_view"] == 1 and np.array_equal(item["view"][0], expected)
        else:
            assert item["has_view"] == 0 and not item["view"].any()
        geo = real_crop(capture, i, config, aug, centre).geometry
        np.testing.assert_allclose(item["centre_m"], geo.centre_xyz / 1000.0, rtol=1e-6)
    assert "view" not in unlabeled_item(items, 0, cache, aug, None)


def test_unwritable_run_folder_is_refused_before_the_data_is_read(tmp_path, capsys):
    """--out a file, or inside one: one line naming the folder; the data (here absent) is not
    opened first, and nothing is written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out, reason in ((blocker, "not a folder"), (blocker / "run", f"{blocker} is not a folder")):
        assert main(["--synthetic", str(tmp_path / "no-shards"), "--real", str(tmp_path / "no-capture"),
                     "--method", "synthetic-only", "--preset", "cpu-small", "--out", str(out), "--quiet"]) == 2
        assert capsys.readouterr().err == f"train-mapping: error: {out}: cannot write ({reason})\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"] and blocker.read_text() == ""

    # A folder of other things (the folder of several runs, say) is not made a run.
    runs = tmp_path / "runs"
    (runs / "run-a").mkdir(parents=True)
    assert main(["--synthetic", str(tmp_path / "no-shards"), "--method", "synthetic-only", "--preset", "cpu-small",
                 "--out", str(runs), "--quiet"]) == 2
    assert capsys.readouterr().err == f"train-mapping: error: {runs}: a folder of other files, not a run; " \
                                      f"give a new or empty --out\n"
    assert [p.name for p in runs.iterdir()] == ["run-a"]
    # A temporary left by a kill while config.json was written is no other file.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".config.tmp-123.json").write_text("{")
    assert main(["--synthetic", str(tmp_path / "no-shards"), "--method", "synthetic-only", "--preset", "cpu-small",
                 "--out", str(killed), "--quiet"]) == 2
    assert "no-shards: shard folder does not exist" in capsys.readouterr().err


def test_a_run_without_held_out_labels_says_it_was_not_evaluated(data, tmp_path, capsys):
    args = _args(data, "supervised", tmp_path / "run", _config(tmp_path, steps=2, pretrain_steps=1))
    args[args.index("--real") + 1:args.index("--method")] = [str(data["nyu"])]   # its one label is trained on
    del args[args.index("--eval"):args.index("--eval") + 2]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("not evaluated: no labelled real frame was held out "
                                                    "(give --eval CAPTURE)")


def test_unwritable_prediction_file_gives_one_line(data, tmp_path, capsys):
    """predict --out in a missing folder, or onto a folder: one line naming it, no temporary left."""
    run = tmp_path / "run"
    assert main(_args(data, "synthetic-only", run, _config(tmp_path, steps=1, pretrain_steps=1), labeled=False)) == 0
    (tmp_path / "a-folder").mkdir()
    for out, reason in ((tmp_path / "nowhere" / "p.txt", f"no such folder {tmp_path / 'nowhere'}"),
                        (tmp_path / "a-folder", "a folder")):
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(data["nyu"]),
                     "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"train-mapping predict: error: {out}: cannot write ({reason})\n"
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "a-folder").iterdir())
    # An output onto an input (the checkpoint, the centres read) or into the capture folder.
    import shutil
    capture = tmp_path / "nyu"
    shutil.copytree(data["nyu"], capture)
    (tmp_path / "centres.txt").write_text("214 272 768\n")
    frame = next(capture.glob("*.png"))
    for out, reason in ((run / "checkpoint.pt", "is the --checkpoint file"), (tmp_path / "centres.txt", "is the --centre file"),
                        (capture / "labels_uvd.txt", "is the capture's labels"), (frame, "is a frame of the capture")):
        before = out.read_bytes()
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(capture), "--out", str(out),
                     "--centre", str(tmp_path / "centres.txt")]) == 2
        assert capsys.readouterr().err == f"train-mapping predict: error: {out}: {reason}; write elsewhere\n"
        assert out.read_bytes() == before
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(capture), "--out",
                 str(capture / "new.png")]) == 2
    assert "would be read as a frame of the capture" in capsys.readouterr().err
    # Beside the frames, a file of another kind is no input: predictions kept with their capture.
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(capture), "--out",
                 str(capture / "predictions.txt")]) == 0


def test_a_checkpoint_whose_contents_are_damaged_gives_one_line(data, tmp_path, capsys):
    """Settings no run can have, weights that are not a state dict, another method's weights,
    weights that went NaN: one line naming the checkpoint, nothing written."""
    run = tmp_path / "run"
    assert main(_args(data, "murauer", run, _config(tmp_path, steps=1, pretrain_steps=1), labeled=False)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    nan = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
    for name, damaged, reason in (
            ("cube", {**state, "config": {**state["config"], "cube_mm": -300.0}}, "cube_mm must be positive"),
            ("list", {**state, "model": [1, 2]}, "checkpoint does not match its configuration"),
            ("other", {**state, "config": {**state["config"], "method": "synthetic-only"}}, "Unexpected key(s) in state_dict"),
            ("nan", {**state, "model": nan}, "the network predicts non-finite joints on 1 of 1 frames")):
        path = tmp_path / f"{name}.pt"
        torch.save(damaged, path)
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(path), "--real", str(data["nyu"]), "--out", str(tmp_path / "p.txt")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"train-mapping predict: error: {path}") and reason in err, err
    assert not (tmp_path / "p.txt").exists()


def test_checkpoint_torch_refuses_gives_one_line_without_unsafe_advice(tmp_path, capsys, recwarn):
    """A pickle of other objects, or a text file, as checkpoint: one line that says what is wrong;
    not torch's advice to load with weights_only=False (that would run code from the file), and
    no warning of torch's unpickler before it."""
    import pickle

    pickled, text, cut = tmp_path / "pickled.pt", tmp_path / "notes.pt", tmp_path / "cut.pt"
    pickled.write_bytes(pickle.dumps({"step": 1}, protocol=4))
    text.write_text("hello world\n")
    torch.save({"weights": torch.zeros(100_000)}, cut)
    cut.write_bytes(cut.read_bytes()[:50_000])   # a copy that stopped half-way: torch says EINVAL
    for path, reason in ((pickled, "holds objects other than tensors"), (text, "not a file torch.save wrote"),
                         (cut, "damaged")):
        assert main(["predict", "--checkpoint", str(path), "--real", str(tmp_path),
                     "--out", str(tmp_path / "p.txt")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{path}: not a readable checkpoint" in err and reason in err, err
        assert "weights_only" not in err
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
