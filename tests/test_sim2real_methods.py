"""SimGAN and AIGN-style training (training.simgan, training.aign) and the sim2real table's arithmetic
(benchmarks/sim2real/run.py): both methods train on tiny shards and real samples, the history
buffer mixes old and new refined crops, the sphere renderer is exact and differentiable on a sphere
seen head-on, the pose discriminator is shown synthetic poses, gap closed and the table are right."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.aign import AIGN, render_spheres, render_terms, skeleton_spheres, wrist_relative
from training.cli import main
from training.config import preset
from training.simgan import HistoryBuffer, Refiner, SimGAN

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch_size": 12, "pretrain_steps": 2, "steps": 5, "log_every": 1, "eval_every": 5,
        "checkpoint_every": 5, "workers": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("sim2real")
    subprocess.run([sys.executable, "-m", "render.cli", "--workers", "1", "--quiet", "--n", "24", "--shard-size", "8",
                    "--out", str(root / "synth")], check=True)
    real = shared / "real_samples"
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    return {"root": root, "config": config, "nyu": real / "nyu", "unlabeled": real / "realsense_sr305/seq_a"}


def _train(data: dict, method: str) -> Path:
    run = data["root"] / f"run-{method}"
    args = ["--synthetic", str(data["root"] / "synth"), "--real", str(data["unlabeled"]), str(data["nyu"]),
            "--method", method, "--preset", "cpu-small", "--config", str(data["config"]), "--out", str(run),
            "--eval", str(data["nyu"]), "--quiet"]
    assert main(args) == 0
    return run


@pytest.mark.parametrize("method, terms", [
    ("simgan", {"pose_synth", "self_reg", "realism", "critic"}),
    ("aign", {"pose_synth", "silhouette", "surface", "data", "pose_adversarial", "critic"}),
])
def test_method_trains_and_predicts(data, method, terms, tmp_path):
    run = _train(data, method)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    last = {k[len("train/"):] for k in train[-1] if k.startswith("train/")} - {"loss"}
    assert last == terms and train[0]["phase"] == "pretrain" and train[-1]["phase"] == "main"
    assert all(math.isfinite(v) for r in train for k, v in r.items() if k.startswith("train/"))
    pred = tmp_path / "pred.txt"
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--real", str(data["nyu"]),
                 "--out", str(pred)]) == 0
    assert np.loadtxt(pred, ndmin=2).shape == (1, 42)


def test_simgan_buffer_survives_resume_and_refiner_learns(data):
    run = data["root"] / "run-simgan"
    if not run.exists():
        run = _train(data, "simgan")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # 3 main-phase steps, 8 synthetic crops each (12 - 4 unlabeled): 4 pushed per step.
    assert int(state["model"]["history.count"]) == 12
    assert state["model"]["history.images"][:12].abs().sum() > 0
    # The refiner's last layer starts at zero; training moved it.
    assert state["model"]["refiner.out.weight"].abs().sum() > 0


def test_refiner_starts_as_identity():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    x[0, 0, :4] = 1.0   # far plane
    assert torch.allclose(Refiner(8, 2)(x), x, atol=1e-5)


def test_refined_background_stays_background():
    """A small residual (one Adam step on the last bias) leaves far-plane patches out of the
    discriminator's loss and the background next to real background (they once turned every
    patch into 'content' and sat 1e-3 in front of the far plane)."""
    from training.simgan import content
    x = torch.ones(2, 1, 64, 64)
    x[:, :, 20:30, 20:30] = 0.0
    refiner = Refiner(8, 2)
    for bias in (-1e-3, 1e-3, -0.1):
        with torch.no_grad():
            refiner.out.bias.fill_(bias)
            refined = refiner(x)
        assert torch.equal(content(refined), content(x))
        assert float((1 - refined[:, :, 40:, 40:]).abs().max()) < 1e-5


def test_history_buffer_mixes_old_and_new():
    torch.manual_seed(0)
    buf = HistoryBuffer(capacity=8, size=2)
    first = torch.full((4, 1, 2, 2), 0.25)
    out = buf.mix(first)                    # empty buffer: all fresh, then 2 of them stored
    assert torch.equal(out, first) and int(buf.count) == 2
    buf.mix(torch.full((4, 1, 2, 2), 0.25))
    buf.mix(torch.full((4, 1, 2, 2), 0.25))
    assert int(buf.count) == 6
    new = torch.full((4, 1, 2, 2), -0.5)
    out = buf.mix(new)
    values = out.flatten(1)[:, 0]
    assert len(out) == 4
    assert (values == -0.5).sum() == 2 and (values == 0.25).sum() == 2   # half fresh, half history
    assert int(buf.count) == 8
    for _ in range(4):                      # full: fresh crops replace random entries
        buf.mix(torch.full((4, 1, 2, 2), 0.75))
    stored = buf.images.flatten(1)[:, 0].float()
    assert int(buf.count) == 8 and (stored == 0.75).any() and len(set(stored.tolist())) > 1


def test_sphere_seen_head_on_is_exact_and_differentiable():
    size, r, z = 64, 0.4, 0.1
    centre = torch.tensor([[[0.0, 0.0, z]]], dtype=torch.float64, requires_grad=True)
    depth, covered, silhouette = render_spheres(centre, torch.tensor([r], dtype=torch.float64), size)
    k = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / (size / 2)
    rho2 = k[None, :] ** 2 + k[:, None] ** 2
    inside = rho2 < r ** 2
    assert torch.equal(covered[0], inside)
    expected = torch.where(inside, z - torch.sqrt((r ** 2 - rho2).clamp_min(0)), torch.ones(()))
    assert torch.allclose(depth[0], expected, atol=1e-6)
    assert float(depth.detach().min()) == pytest.approx(z - math.sqrt(r ** 2 - 2 * (0.5 / 32) ** 2), abs=1e-9)
    # The soft silhouette (a logistic edge of width s = 1 px, centred 2 s inside the outline) covers
    # the area of the integral of sigmoid((R - 2 s - rho) / s) 2 pi rho d rho = pi (R - 2 s)^2 + pi^3 s^2 / 3.
    assert float(silhouette.detach().sum()) == pytest.approx(math.pi * (r * size / 2 - 2) ** 2 + math.pi ** 3 / 3, rel=1e-3)
    # Moving the sphere away moves every surface pixel by the same amount: d depth / dz = covered pixels.
    depth.sum().backward()
    assert centre.grad[0, 0, 2] == pytest.approx(float(inside.sum()))
    # A sideways move: the gradient of the sum of depths is zero by symmetry, the silhouette's too.
    assert abs(float(centre.grad[0, 0, 0])) < 1e-6
    assert torch.autograd.gradcheck(
        lambda c: render_spheres(c, torch.tensor([r], dtype=torch.float64), 16)[0],
        (torch.tensor([[[0.03, -0.02, z]]], dtype=torch.float64, requires_grad=True),), atol=1e-5)


def test_render_terms_prefer_the_true_pose():
    """Crops rendered from a skeleton are explained best by that skeleton."""
    torch.manual_seed(1)
    joints = torch.zeros(1, 14, 3)
    joints[0, :, :2] = torch.rand(14, 2) * 0.6 - 0.3
    centres, radii = skeleton_spheres(joints, 150.0)
    depth, _, _ = render_spheres(centres, radii, 64)
    image = depth[:, None]
    true = render_terms(joints, image, 150.0)
    moved = render_terms(joints + torch.tensor([0.15, 0.0, 0.05]), image, 150.0)
    assert true["surface"] < 1e-6
    assert moved["silhouette"] > true["silhouette"] and moved["surface"] > true["surface"] \
        and moved["data"] > true["data"]


def test_render_terms_draw_each_crop_in_its_own_units():
    """Scale augmentation gives every crop its own cube: a batch of crops of 150 and 180 mm half
    edges is scored as each alone, and the true pose explains a crop only at that crop's scale."""
    torch.manual_seed(2)
    joints = torch.zeros(2, 14, 3)
    joints[:, :, :2] = torch.rand(2, 14, 2) * 0.6 - 0.3
    half = torch.tensor([150.0, 180.0])
    centres, radii = skeleton_spheres(joints, half)
    images = render_spheres(centres, radii, 64)[0][:, None]
    together = render_terms(joints, images, half)
    alone = [render_terms(joints[i:i + 1], images[i:i + 1], float(h)) for i, h in enumerate(half)]
    for term, value in together.items():
        assert float(value) == pytest.approx(sum(float(a[term]) for a in alone) / 2, rel=1e-5, abs=1e-9)
    assert float(together["surface"]) < 1e-6
    assert float(render_terms(joints[1:], images[1:], 150.0)["surface"]) > 1e-4   # the unscaled cube misses


def test_aign_discriminator_judges_predictions_against_synthetic_poses():
    config = preset("cpu-small")
    config.method = "aign"
    method = AIGN(config).eval()   # batch statistics would make the two encoder passes differ
    critic = method.make_discriminator()
    batch = {"syn_image": torch.rand(6, 1, 64, 64) * 2 - 1, "syn_pose": torch.randn(6, 42) * 0.3,
             "unl_image": torch.rand(4, 1, 64, 64) * 2 - 1, "unl_half_mm": torch.full((4,), 150.0)}
    terms = method.losses(batch, critic)
    assert torch.allclose(terms["critic_synth"], wrist_relative(batch["syn_pose"].view(6, 14, 3)))
    predicted = method.head(method.encoder(batch["unl_image"])).view(4, 14, 3)
    assert torch.allclose(terms["critic_real"], wrist_relative(predicted), atol=1e-5)
    assert terms["critic_real"][:, 13 * 3:].abs().max() == 0       # palm-relative
    # The discriminator's step pulls synthetic scores to 0, predicted to 1.
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    first = float(method.critic_loss(critic, terms).detach())
    for _ in range(30):
        loss = method.critic_loss(critic, terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(method.critic_loss(critic, terms).detach()) < 0.5 * first
    assert terms["pose_adversarial"].requires_grad


def test_simgan_refiner_learns_only_from_realism_and_self_regularisation():
    config = preset("cpu-small")
    config.method = "simgan"
    method = SimGAN(config)
    critic = method.make_discriminator()
    batch = {"syn_image": torch.rand(4, 1, 64, 64) * 2 - 1, "syn_pose": torch.randn(4, 42),
             "unl_image": torch.rand(2, 1, 64, 64) * 2 - 1}
    terms = method.losses(batch, critic)
    terms["pose_synth"].backward()
    assert all(p.grad is None for p in method.refiner.parameters())   # pose loss sees refined crops detached
    assert critic(terms["critic_synth"]).shape == (4, 8, 8)            # one score per local patch


# --- the runner --------------------------------------------------------------------------------
def _runner():
    spec = importlib.util.spec_from_file_location("sim2real_run", ROOT / "benchmarks/sim2real/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _fake(label: str, method: str, n: int, mm: float) -> dict:
    t = list(np.arange(0.0, 80.5, 0.5))
    return {"label": label, "method": method, "n": n, "mean_error_mm": mm, "palm_centred_error_mm": mm - 10,
            "command": f"train-mapping --method {method}",
            "thresholds_mm": t, "fraction_within": list(np.clip((np.asarray(t) - mm) / 20 + 0.5, 0, 1)),
            "train_seconds": 12.0, "nyu_real_error_mm": None}


def test_gap_closed_and_table(tmp_path):
    run = _runner()
    assert run.gap_closed(21.3, 12.2, 9.5) == pytest.approx(0.771, abs=1e-3)   # MURAUER, n = 100, NYU
    assert run.gap_closed(20.0, 20.0, 10.0) == 0.0 and run.gap_closed(20.0, 10.0, 10.0) == 1.0
    assert run.gap_closed(20.0, 25.0, 10.0) == pytest.approx(-0.5)
    assert math.isnan(run.gap_closed(10.0, 12.0, 10.0))                       # no gap to close
    results = [_fake("synthetic-only", "synthetic-only", 0, 30.0), _fake("supervised n=all", "supervised", 50, 10.0),
               _fake("murauer n=10", "murauer", 10, 15.0)]
    results[2]["palm_centred_error_mm"] = 4.0    # palm-centred bounds 20 and 0 mm: 80 % of that gap
    text = run.table(results, "supervised n=all")
    lines = text.splitlines()
    assert len(lines) == 5
    assert "| murauer n=10 | 10 | 15.0 |" in lines[4] and "| 75 % | 4.0 (80 %) |" in lines[4]
    assert "(upper bound)" in lines[3] and "| 100 % |" in lines[3] and "| 0 % |" in lines[2]
    assert "`train-mapping --method murauer`" in lines[4]
    assert run.error_within(results[0], 30.0) == pytest.approx(0.5)
    # The section lands in the benchmarks file without disturbing the others.
    from benchmarks.report import write_section
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n<!-- begin other -->\nkeep\n<!-- end other -->\n")
    write_section("sim2real small", text, md)
    write_section("sim2real small", text, md)
    out = md.read_text()
    assert out.count("murauer n=10") == 1 and "keep" in out
    run.plot_curves(results, tmp_path / "curves.png", "fake")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_plan_refuses_missing_data_and_lists_every_row(tmp_path, shared):
    run = _runner()
    with pytest.raises(run.BenchmarkError, match="source: missing"):
        run.plan(tmp_path, "small", tmp_path / "runs")
    for part in ("source", "pairs"):
        (tmp_path / part).mkdir()
    for part in ("target_train", "target_unlabeled", "target_test"):   # three captures: train-mapping refuses one twice
        shutil.copytree(shared / "real_samples/realsense_sr305/seq_a", tmp_path / part)
    with pytest.raises(run.BenchmarkError, match="no build.json, so not a complete build"):
        run.plan(tmp_path, "small", tmp_path / "runs")         # an interrupted build
    (tmp_path / "build.json").write_text("{}")
    rows = run.plan(tmp_path, "small", tmp_path / "runs")      # a pool of 8 frames: n = all only
    assert [r.label for r in rows] == ["synthetic-only", "supervised n=all", "murauer n=all", "feature-mapping n=all",
                                       "simgan", "aign", "twins-only n=all"]
    assert run.upper_bound(rows).label == "supervised n=all" and run.upper_bound(rows).n == 8
    assert "--n-labeled 8" in rows[2].command and "--pairs" in rows[2].command
    twins = rows[-1].args   # the twins as the synthetic frames, no labelled real frame
    assert twins[twins.index("--synthetic") + 1] == str(tmp_path / "pairs") and "--n-labeled" not in twins
    assert len({r.run for r in rows}) == len(rows)
    again = run.plan(tmp_path, "small", tmp_path / "runs", seed=1)    # another seed: its own folders
    assert all("--seed 1" in r.command and r.run.parent.name == "seed1" for r in again)
    assert not {r.run for r in rows} & {r.run for r in again}


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0", "-1", "--no-report"], "--seeds must be distinct and >= 0, got 0 -1"),
    (["--seeds", "0", "0", "--no-report"], "--seeds must be distinct and >= 0, got 0 0"),
    (["--steps", "10", "4", "--no-report"], "--steps PRETRAIN TOTAL needs 0 <= PRETRAIN < TOTAL"),
    (["--steps", "-1", "4", "--no-report"], "--steps PRETRAIN TOTAL needs 0 <= PRETRAIN < TOTAL"),
    (["--steps", "1", "4"], "--steps makes a smoke run: give --docs DIR or --no-report"),
    (["--docs", "DATA/build.json"], "build.json: cannot write (not a folder)"),
])
def test_runner_refuses_bad_arguments_before_anything_runs(tmp_path, shared, capsys, args, message):
    run = _runner()
    data = tmp_path / "data"
    for part in ("source", "pairs"):
        (data / part).mkdir(parents=True)
    for part in ("target_train", "target_unlabeled", "target_test"):
        (data / part).symlink_to(shared / "real_samples/realsense_sr305/seq_a")
    (data / "build.json").write_text("{}")
    args = [a.replace("DATA", str(data)) for a in args]
    assert run.main(["--data", str(data), "--out", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_runner_refuses_an_unwritable_out(tmp_path, capsys):
    assert _runner().main(["--data", str(tmp_path), "--out", "/proc/sim2real-runs", "--no-report"]) == 2
    assert capsys.readouterr().err == "sim2real: error: /proc/sim2real-runs: cannot write (No such file or directory)\n"


def test_seeds_are_aggregated_per_row():
    run = _runner()
    seeds = [_fake("synthetic-only", "synthetic-only", 0, mm) for mm in (30.0, 32.0)]
    seeds += [_fake("murauer n=10", "murauer", 10, mm) for mm in (14.0, 16.0)]
    seeds[1]["nyu_real_error_mm"], seeds[3]["nyu_real_error_mm"] = 20.0, 10.0
    seeds[0]["palm_centred_error_mm"] = 19.0
    merged = run.aggregate(seeds)
    assert [r["label"] for r in merged] == ["synthetic-only", "murauer n=10"]
    assert merged[0]["mean_error_mm"] == 31.0 and merged[0]["sd_mm"] == pytest.approx(np.sqrt(2.0))
    assert merged[0]["seed_errors_mm"] == [30.0, 32.0] and merged[0]["nyu_real_error_mm"] == 20.0
    assert merged[0]["palm_centred_error_mm"] == 20.5
    curve = np.mean([seeds[2]["fraction_within"], seeds[3]["fraction_within"]], axis=0)
    assert np.allclose(merged[1]["fraction_within"], curve)
    line = run.table(merged, "murauer n=10").splitlines()[3]
    assert "| 15.0 ± 1.4 | 14.0 / 16.0 |" in line and "| 100 % |" in line and "| 10.0 |" in line


def test_simgan_patches_of_empty_background_do_not_count():
    from training.simgan import content
    x = torch.ones(2, 1, 64, 64)
    x[:, :, 20:30, 20:30] = 0.0
    mask = content(x)
    assert mask.shape == (2, 8, 8) and int(mask.sum()) == 2 * 4       # rows and columns 16..31
    config = preset("cpu-small")
    config.method = "simgan"
    method = SimGAN(config)
    # A critic that scores every surface patch 0.5 and background patches wildly: only the former count.
    critic = lambda images: torch.where(content(images) > 0, 0.5, 100.0)  # noqa: E731
    terms = {"critic_real": x[:1], "critic_synth": x[1:]}
    assert float(method.critic_loss(critic, terms)) == pytest.approx(0.25 + 0.25)
