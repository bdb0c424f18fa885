"""The sim-to-real table: every method trained on the benchmark's data, scored on its target test split.

    python benchmarks/sim2real/run.py --data DIR --preset small --out RUNS [--seeds 0 1 2]

DIR is what benchmarks/sim2real/build.py writes: source/ (clean synthetic 3-view shards),
pairs/ (synthetic twins of target_train), target_train/ (labelled pool; the first n frames are
the n-labelled subset), target_unlabeled/, target_test/ (capture folders). Each row is one
`train-mapping` command per seed, in RUNS/seed{s}/ROW (run in this process through
training.cli.main, so the command written beside the row is exactly what ran), then `predict` on
target_test around the detected hand and training.evaluate's metrics: mean 3D error over the
NYU-14 joints and the fraction of frames whose worst joint lies within a threshold (and the mean
error of crops around the labelled palm centre, the protocol of the published numbers). Gap
closed = (synthetic-only - method) / (synthetic-only - upper bound), where the upper bound is
`supervised` with every target_train label (the same run as the `supervised` n = all row, not
trained twice). A last, diagnostic row trains on the twins alone (clean renders of every
target_train pose and hand, no real pixel): the part of the gap it closes is content, not
appearance. With several seeds a row reports the mean and standard deviation over them, and the
gap closed of the means.

Rows whose run folder already holds a result of the same command and resolved settings are not
run again: an interrupted table resumes (and an interrupted run inside it resumes from its
checkpoint). A result of other settings (a changed preset default included) is handed back to
train-mapping, which resumes the run where its resume rules allow the change and otherwise refuses
the folder, so a table never mixes settings. RUNS/data.json records the checksums of the build the
runs were trained on (DIR/build.json's); a rebuilt DIR is refused for those runs, so a table never
mixes data either (copy data.json with finished run folders to have them scored again elsewhere).
Every row's settings, the data and the real sample frames are checked before the first row trains.

Writes the "sim2real <preset>" section of DOCS/benchmarks.md, DOCS/sim2real_curves.png,
DOCS/sim2real_real_frames.png (predictions of every model on the real frames in
SHARED/real_samples, ../shared by default: the stand-in must not hide a failure on real sensors)
and DOCS/simgan_refined.png; DOCS is docs/ unless --docs says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine, write_section  # noqa: E402
from render.atomic import WriteError, check_writable, write_json  # noqa: E402
from training.captures import CaptureError  # noqa: E402
from training.data import DataError  # noqa: E402
from training.figures import save_figure  # noqa: E402

DOCS = ROOT / "docs"
DEFAULT_SHARED = ROOT.parent / "shared"
N_LABELED = (10, 100, 1000, "all")
TWINS = "twins-only n=all"

# Settings on top of train-mapping's presets. The small preset is sized so that the 10 runs of
# one seed take about 20 minutes on a 2-core CPU (about 8 to 15 steps/s at batch 24); its
# embedding and view weights were chosen on a validation split (docs/sim2real.md: at 0.2 the
# mapping fits the few pairs and fails on every other real frame; view prediction from the
# unlabeled frames' rig view is what carries the mapping to frames without labels, and on these
# short runs it does so best at 100 times the paper's 1e-4).
PRESETS: dict[str, dict] = {
    "small": {"train_preset": "cpu-small",
              "settings": {"pretrain_steps": 600, "steps": 1600, "epoch_steps": 100, "log_every": 50,
                           "checkpoint_every": 200, "eval_every": 200, "workers": 1, "lr_schedule": "cosine",
                           "w_embedding": 0.02, "w_view": 1e-2}},
    # Paper-sized crops and networks, for a GPU; a shortened schedule (the paper's is 307k steps a run).
    "paper": {"train_preset": "paper",
              "settings": {"pretrain_steps": 20000, "steps": 50000, "epoch_steps": 1137, "log_every": 200,
                           "checkpoint_every": 5000, "eval_every": 5000, "workers": 8}},
}


class BenchmarkError(RuntimeError):
    """The benchmark data cannot be used; the message names the folder."""


@dataclass(frozen=True)
class Row:
    label: str            # as the table shows it
    method: str
    n: int                # labelled target frames (0: none)
    args: tuple[str, ...]  # train-mapping arguments
    run: Path
    seed: int
    config: str           # the settings train-mapping resolves the arguments to (JSON)

    @property
    def command(self) -> str:
        return "train-mapping " + " ".join(shlex.quote(a) for a in self.args)


def _capture_frames(folder: Path) -> int:
    from training.captures import load_capture
    try:
        return len(load_capture(folder))
    except CaptureError as err:
        raise BenchmarkError(str(err)) from None


def check_data(data: Path, out: Path) -> None:
    """Record the build the runs in `out` are trained on (its checksums), or refuse another one."""
    from render.jsonfile import read_json_object

    try:
        checksums = read_json_object(data / "build.json", "build.json")["checksums"]
        record = out / "data.json"
        trained_on = read_json_object(record, "data.json").get("checksums") if record.exists() else None
    except (ValueError, KeyError) as err:
        raise BenchmarkError(str(err)) from None
    if trained_on is None:
        write_json(record, {"data": str(data.resolve()), "checksums": checksums})
    elif trained_on != checksums:
        differ = ", ".join(k for k in sorted(set(checksums) | set(trained_on)) if checksums.get(k) != trained_on.get(k))
        raise BenchmarkError(f"{out}: its runs were trained on another build of the data ({record} and "
                             f"{data / 'build.json'} differ in {differ}); give a new --out, or delete {out} to train again")


def plan(data: Path, preset: str, out: Path, steps: tuple[int, int] | None = None, seed: int = 0) -> list[Row]:
    """The table's rows for one seed, in order; every folder and every row's settings checked
    before anything runs."""
    from training.cli import config_of
    from training.config import ConfigError
    from training.methods import method_class

    for part in ("source", "pairs", "target_train", "target_unlabeled", "target_test"):
        if not (data / part).is_dir():
            raise BenchmarkError(f"{data / part}: missing (build the data with benchmarks/sim2real/build.py)")
    if not (data / "build.json").is_file():
        raise BenchmarkError(f"{data}: no build.json, so not a complete build (build.py writes it last); "
                             f"run the build command again")
    pool = _capture_frames(data / "target_train")
    _capture_frames(data / "target_unlabeled")
    _capture_frames(data / "target_test")
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{preset}.json"
    settings = dict(PRESETS[preset]["settings"])
    if steps:
        settings["pretrain_steps"], settings["steps"] = steps
    write_json(config, settings)
    base = ["--eval", str(data / "target_test"), "--preset", PRESETS[preset]["train_preset"], "--config", str(config)]
    train, unl = str(data / "target_train"), str(data / "target_unlabeled")
    counts = [n for n in N_LABELED if n == "all" or n < pool]

    def row(label: str, method: str, n: int, real: list[str], pairs: bool = False, synthetic: str = "source") -> Row:
        run = out / f"seed{seed}" / label.replace(" ", "").replace("=", "-")
        args = ["--synthetic", str(data / synthetic), *base, "--method", method, "--real", *real,
                "--seed", str(seed), "--out", str(run)]
        if n and method != "synthetic-only":
            args += ["--n-labeled", str(n)]
        if pairs:
            args += ["--pairs", str(data / "pairs")]
        try:
            resolved = config_of(args)
            method_class(resolved.method).check(resolved)
        except ConfigError as err:
            raise BenchmarkError(f"row {label}: {err}") from None
        return Row(label, method, n, tuple(args), run, seed, json.dumps(dataclasses.asdict(resolved)))

    rows = [row("synthetic-only", "synthetic-only", 0, [unl])]
    for n in counts:
        k = pool if n == "all" else n
        rows.append(row(f"supervised n={n}", "supervised", k, [train]))
    for n in counts:
        k = pool if n == "all" else n
        rows.append(row(f"murauer n={n}", "murauer", k, [train, unl], pairs=True))
    rows.append(row("feature-mapping n=all", "feature-mapping", pool, [train], pairs=True))
    rows.append(row("simgan", "simgan", 0, [unl]))
    rows.append(row("aign", "aign", 0, [unl]))
    # Diagnostic, not a method: clean renders of every target_train pose and hand (the twins) and no
    # real pixel. What it closes is the gap's content part (poses, shapes); the rest is appearance.
    rows.append(row(TWINS, "synthetic-only", pool, [unl], synthetic="pairs"))
    return rows


def upper_bound(rows: list[Row]) -> Row:
    """`supervised` with every target_train label."""
    return max((r for r in rows if r.method == "supervised"), key=lambda r: r.n)


# --- running and scoring -----------------------------------------------------------------------
class Scoring:
    """The frames every model is scored on, with their crop centres: detection costs more than a
    small model's forward pass, so it runs once per capture (when the first row is scored), not per row."""

    def __init__(self, test: Path, samples: dict[str, Path]) -> None:
        self.test_folder, self.samples = test, samples

    @cached_property
    def test(self) -> tuple:
        """target_test (a Capture), its detected-hand centres and its labelled palm centres."""
        from training.captures import load_capture
        from training.predict import frame_centres

        capture = load_capture(self.test_folder)
        return capture, frame_centres(capture), frame_centres(capture, "labels")

    @cached_property
    def real(self) -> dict:
        """Each real sample capture with its detected-hand centres."""
        from training.captures import load_capture
        from training.predict import frame_centres

        return {name: (c, frame_centres(c)) for name, c in
                ((name, load_capture(folder)) for name, folder in self.samples.items())}


def evaluate_run(row: Row, scoring: Scoring) -> dict:
    """Predict target_test with the run's checkpoint and score it; also predictions on the real
    sample frames (uvd per frame) for the overlays."""
    from training.predict import load_model, predict_capture, score_capture

    method, config = load_model(row.run / "checkpoint.pt")
    capture, detected, palm_centres = scoring.test
    result = score_capture(capture, predict_capture(method, config, capture, detected))
    # The protocol of the published numbers: crops around the labelled palm centre.
    palm = score_capture(capture, predict_capture(method, config, capture, palm_centres))
    real = {name: predict_capture(method, config, c, centres).tolist() for name, (c, centres) in scoring.real.items()}
    return {"label": row.label, "method": row.method, "n": row.n, "command": row.command,
            "mean_error_mm": result.mean_error_mm, "palm_centred_error_mm": palm.mean_error_mm, "frames": result.frames,
            "thresholds_mm": list(result.thresholds_mm), "fraction_within": list(result.fraction_within),
            "real_samples_uvd": real}


def real_sample_captures(shared: Path) -> dict[str, Path]:
    """The real frames every model is shown: NYU Kinect v1 (labelled), SR305, BigHand SR300 (those
    present in the shared data folder)."""
    root = shared / "real_samples"
    folders = {"NYU Kinect v1": root / "nyu", "RealSense SR305": root / "realsense_sr305" / "seq_a",
               "BigHand SR300": root / "bighand"}
    return {k: v for k, v in folders.items() if (v / "capture.json").is_file()}


def run_row(row: Row, scoring: Scoring) -> dict:
    """The row's result: read back when it was scored from a run of this command and resolved
    settings (and has every score this runner gives), else trained or resumed by train-mapping and
    scored."""
    from training.cli import main as train_mapping

    done = row.run / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if (result.get("command") == row.command and result.get("config") == json.loads(row.config)
                and "palm_centred_error_mm" in result and set(scoring.samples) <= set(result["real_samples_uvd"])):
            print(f"    read back from {done}", flush=True)
            return result
    # A finished run of these settings returns at once (and keeps its clock); other settings are
    # resumed or refused by train-mapping's own check.
    status = train_mapping(list(row.args))
    if status == 130:
        raise KeyboardInterrupt
    if status != 0:
        raise BenchmarkError(f"{row.run}: {row.command} failed (its error is above)")
    # The run's own clock (its last training invocation), so a row trained earlier keeps its time.
    seconds = json.loads((row.run / "summary.json").read_text())["seconds"]
    result = {**evaluate_run(row, scoring), "config": json.loads(row.config), "train_seconds": seconds}
    write_json(done, result, indent=None)
    return result


def gap_closed(synthetic_only_mm: float, method_mm: float, upper_mm: float) -> float:
    """(synthetic-only - method) / (synthetic-only - upper bound); nan when there is no gap."""
    gap = synthetic_only_mm - upper_mm
    return (synthetic_only_mm - method_mm) / gap if gap > 0 else math.nan


def error_within(result: dict, threshold_mm: float) -> float:
    """Fraction of frames whose worst joint lies within `threshold_mm` (from the stored curve)."""
    t = np.asarray(result["thresholds_mm"])
    return float(np.interp(threshold_mm, t, result["fraction_within"]))


def aggregate(results: list[dict]) -> list[dict]:
    """One entry per row label (first-seen order) from the results of every seed: errors, curves,
    train time and the NYU frame's error averaged; the per-seed errors and their standard
    deviation kept; the first seed's command and real-frame predictions."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r["label"], []).append(r)
    merged = []
    for runs in rows.values():
        errors = [r["mean_error_mm"] for r in runs]
        nyu = [r["nyu_real_error_mm"] for r in runs if r.get("nyu_real_error_mm") is not None]
        merged.append({**runs[0], "mean_error_mm": float(np.mean(errors)), "seed_errors_mm": errors,
                       "palm_centred_error_mm": float(np.mean([r["palm_centred_error_mm"] for r in runs])),
                       "sd_mm": float(np.std(errors, ddof=1)) if len(errors) > 1 else math.nan,
                       "fraction_within": list(np.mean([r["fraction_within"] for r in runs], axis=0)),
                       "train_seconds": float(np.mean([r.get("train_seconds", 0.0) for r in runs])),
                       "nyu_real_error_mm": float(np.mean(nyu)) if nyu else None})
    return merged


def table(results: list[dict], upper_label: str) -> str:
    """Markdown table of aggregated results (`aggregate`): one line per row, gap closed against
    the synthetic-only row (on palm-centred crops too, against that column's own bounds)."""
    syn_row = next(r for r in results if r["label"] == "synthetic-only")
    upper_row = next(r for r in results if r["label"] == upper_label)
    syn, upper = syn_row["mean_error_mm"], upper_row["mean_error_mm"]
    syn_palm, upper_palm = syn_row["palm_centred_error_mm"], upper_row["palm_centred_error_mm"]

    def percent(gap: float) -> str:
        return "n/a" if math.isnan(gap) else f"{100 * gap:.0f} %"

    lines = ["| method | target labels | mean 3D error (mm) | seeds (mm) | frames within 20 / 40 mm | gap closed | "
             "palm-centred crops (mm, gap closed) | NYU real frame (mm) | train (s) | command (first seed) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gap = gap_closed(syn, r["mean_error_mm"], upper)
        palm = r["palm_centred_error_mm"]
        nyu = r.get("nyu_real_error_mm")
        sd = r.get("sd_mm", math.nan)
        seeds = " / ".join(f"{e:.1f}" for e in r.get("seed_errors_mm", [r["mean_error_mm"]]))
        lines.append(
            f"| {r['label']}{' (upper bound)' if r['label'] == upper_label else ''}"
            f"{' (diagnostic: poses only)' if r['label'] == TWINS else ''} | {r['n']} | "
            f"{r['mean_error_mm']:.1f}{'' if math.isnan(sd) else f' ± {sd:.1f}'} | {seeds} | "
            f"{100 * error_within(r, 20):.0f} % / {100 * error_within(r, 40):.0f} % | "
            f"{percent(gap)} | {palm:.1f} ({percent(gap_closed(syn_palm, palm, upper_palm))}) | "
            f"{'-' if nyu is None else f'{nyu:.1f}'} | {r.get('train_seconds', 0):.0f} | `{r['command']}` |")
    return "\n".join(lines)


def nyu_real_error(result: dict, samples: dict[str, Path]) -> float | None:
    """Mean 3D error on the labelled NYU real frame (one frame: a smoke test, not a score)."""
    from training.captures import load_capture
    from training.predict import score_capture

    name = "NYU Kinect v1"
    if name not in samples:
        return None
    return score_capture(load_capture(samples[name]), np.asarray(result["real_samples_uvd"][name])).mean_error_mm


# --- pictures ----------------------------------------------------------------------------------
def plot_curves(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for r in results:
        style = ":" if r["label"] == TWINS else "--" if r["method"] in ("synthetic-only", "simgan", "aign",
                                                                           "feature-mapping") else "-"
        ax.plot(r["thresholds_mm"], r["fraction_within"], style, label=f"{r['label']} ({r['mean_error_mm']:.1f} mm)")
    ax.set(xlabel="max joint error threshold (mm)", ylabel="fraction of frames with all joints within",
           xlim=(0, 80), ylim=(0, 1), title="target_test: fraction of frames")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for method, marker in (("supervised", "o"), ("murauer", "s")):
        pts = sorted((r["n"], r["mean_error_mm"], np.nan_to_num(r.get("sd_mm", 0.0)))
                     for r in results if r["method"] == method)
        if pts:
            n, mm, sd = zip(*pts)
            bx.errorbar(n, mm, yerr=sd, marker=marker, capsize=3, label=f"{method} (bars: sd over seeds)")
    for r, color in zip([r for r in results if r["method"] in ("synthetic-only", "simgan", "aign", "feature-mapping")],
                        ("black", "tab:purple", "tab:olive", "tab:cyan", "tab:brown")):
        bx.axhline(r["mean_error_mm"], ls=":" if r["label"] == TWINS else "--", color=color,
                   label=f"{r['label']} (no n axis)")
    bx.set(xscale="log", xlabel="labelled target frames n", ylabel="mean 3D error (mm)",
           title="mean error against labels used")
    bx.grid(alpha=0.3)
    bx.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


BONES = ((0, 1), (1, 13), (2, 3), (3, 13), (4, 5), (5, 13), (6, 7), (7, 13), (8, 9), (9, 10), (10, 13),
         (11, 13), (12, 13), (11, 12))


def plot_real_frames(results: list[dict], path: Path, samples: dict[str, Path]) -> None:
    """Each model's prediction drawn on each real sample frame (first frame of each capture)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.captures import load_capture

    captures = {name: load_capture(folder) for name, folder in samples.items()}
    fig, axes = plt.subplots(len(captures), len(results), figsize=(1.9 * len(results), 2.1 * len(captures)),
                             squeeze=False)
    for i, (name, capture) in enumerate(captures.items()):
        depth = capture.depth_mm(0).astype(np.float32)
        loc = capture.locate(0).centre_uvd
        half = 170.0 * capture.intrinsics.fx / loc[2]
        for j, r in enumerate(results):
            ax = axes[i, j]
            ax.imshow(np.where(depth > 0, depth, np.nan), cmap="gray", vmin=loc[2] - 150, vmax=loc[2] + 250)
            uvd = capture.flip_left(np.asarray(r["real_samples_uvd"][name][:1]))[0]   # drawn on depth_mm's frame
            for a, b in BONES:
                ax.plot(uvd[[a, b], 0], uvd[[a, b], 1], "-", color="orange", lw=1)
            ax.plot(uvd[:, 0], uvd[:, 1], ".", color="red", ms=3)
            if capture.labels_uvd is not None:
                gt = capture.labels_uvd[0]
                ax.plot(gt[:, 0], gt[:, 1], "x", color="cyan", ms=3)
            ax.set_xlim(loc[0] - half, loc[0] + half)
            ax.set_ylim(loc[1] + half, loc[1] - half)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(r["label"], fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle("predictions (red, skeleton orange) on real sensor frames; NYU labels as cyan crosses", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_refined(run: Path, data: Path, path: Path, count: int = 6) -> None:
    """Synthetic crops, the SimGAN refiner's output, their difference, and real target crops."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from render.shards import decode_depth_png, iter_shard
    from training.captures import load_capture
    from training.crop import CropConfig, crop_shard_sample
    from training.data import crop_frames, open_shards
    from training.predict import load_model

    method, config = load_model(run / "checkpoint.pt")
    target = load_capture(data / "target_test")
    count = min(count, len(target))
    shards = open_shards(data / "source")
    crops = []
    for _, files in iter_shard(shards.shards[0][0]):
        sample = json.loads(files["json"])
        sample["depth"] = decode_depth_png(files["depth.png"])
        crops.append(crop_shard_sample(sample, CropConfig(config.cube_mm, config.crop_size)).image)
        if len(crops) == count:
            break
    count = len(crops)   # a first shard shorter than count
    syn = torch.from_numpy(np.stack(crops))[:, None]
    with torch.no_grad():
        refined = method.refiner(syn)
    real = crop_frames(target, config, list(range(count))).images
    fig, axes = plt.subplots(4, count, figsize=(1.8 * count, 7.6), squeeze=False)
    rows = (("synthetic", syn), ("refined", refined), ("refined - synthetic", refined - syn), ("real (target)", real))
    for i, (name, images) in enumerate(rows):
        for j in range(count):
            diff = name.startswith("refined -")
            axes[i, j].imshow(images[j, 0].numpy(), cmap="coolwarm" if diff else "gray",
                              vmin=-0.2 if diff else -1, vmax=0.2 if diff else 1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("SimGAN refiner: synthetic source crops, refined,\ndifference (+-30 mm), real target crops", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _build_summary(path: Path) -> str:
    """' (preset, seed, frame counts)' from the data's build.json, or '' where it lacks them."""
    try:
        b = json.loads(path.read_text())
        counts = ", ".join(f"{k} {v}" for k, v in b["counts"].items())
        return f" (build.py preset {b['preset']}, seed {b['seed']}: {counts} frames)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


# --- the command -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder written by benchmarks/sim2real/build.py")
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--out", required=True, type=Path, help="folder for the runs (resumed if present)")
    p.add_argument("--steps", nargs=2, type=int, metavar=("PRETRAIN", "TOTAL"),
                   help="override the preset's pre-training and total steps (e.g. a smoke run)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="train every row once per seed (default: 0); the table gives mean and sd")
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                   help="the shared data folder whose real_samples/ every model is shown (default: ../shared "
                        "beside the repo)")
    p.add_argument("--docs", type=Path,
                   help="where the table (a section of DOCS/benchmarks.md) and its pictures go (default docs/)")
    p.add_argument("--no-report", action="store_true", help="run and score, leave docs/ alone")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    try:
        if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) < len(args.seeds):
            raise BenchmarkError(f"--seeds must be distinct and >= 0, got {' '.join(map(str, args.seeds))}")
        if args.steps and not 0 <= args.steps[0] < args.steps[1]:
            raise BenchmarkError(f"--steps PRETRAIN TOTAL needs 0 <= PRETRAIN < TOTAL (the methods train "
                                 f"after pre-training), got {args.steps[0]} {args.steps[1]}")
        if args.steps and not args.no_report and args.docs is None:
            raise BenchmarkError("--steps makes a smoke run: give --docs DIR or --no-report, so that the "
                                 "documented table in docs/benchmarks.md is not replaced")
        args.docs = args.docs or DOCS
        check_writable(args.out, folder=True)
        if not args.no_report:
            check_writable(args.docs, folder=True)
        rows = [row for seed in args.seeds for row in plan(args.data, args.preset, args.out, args.steps, seed)]
        check_data(args.data, args.out)
        samples = real_sample_captures(args.shared)
        scoring = Scoring(args.data / "target_test", samples)
        scoring.real   # a damaged real sample is found now, not after the first row has trained
    except (BenchmarkError, WriteError, CaptureError, DataError) as err:
        print(f"sim2real: error: {err}", file=sys.stderr)
        return 2
    try:
        return _run_table(args, argv, rows, scoring)
    except (BenchmarkError, CaptureError, DataError) as err:
        print(f"sim2real: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sim2real: interrupted; run the same command to finish the table (finished rows are read back, "
              "an interrupted run resumes from its checkpoint if it saved one)", file=sys.stderr)
        return 130


def _run_table(args: argparse.Namespace, argv: list[str], rows: list[Row], scoring: Scoring) -> int:
    """Train or read back every row, then write the report."""
    samples = scoring.samples
    if not samples:
        print(f"sim2real: note: no real sample captures under {args.shared / 'real_samples'}; the table has no "
              f"real-sensor overlays", file=sys.stderr)
    t0 = time.perf_counter()
    results = []
    for i, row in enumerate(rows, 1):
        print(f"[{i}/{len(rows)}] {row.label}, seed {row.seed}: {row.command}", flush=True)
        result = run_row(row, scoring)
        result["nyu_real_error_mm"] = nyu_real_error(result, samples)
        print(f"    {row.label}, seed {row.seed}: {result['mean_error_mm']:.2f} mm on {result['frames']} target_test "
              f"frames ({(time.perf_counter() - t0) / 60:.1f} min so far)", flush=True)
        results.append(result)
    elapsed = time.perf_counter() - t0
    upper = upper_bound(rows).label
    merged = aggregate(results)
    if args.no_report:
        print(table(merged, upper))
        return 0
    args.docs.mkdir(parents=True, exist_ok=True)
    plot_curves(merged, args.docs / "sim2real_curves.png", f"sim2real, preset {args.preset}, "
                f"mean over seed(s) {', '.join(map(str, args.seeds))}")
    if samples:
        plot_real_frames(merged, args.docs / "sim2real_real_frames.png", samples)
    simgan = next((r for r in rows if r.method == "simgan"), None)
    if simgan is not None:
        plot_refined(simgan.run, args.data, args.docs / "simgan_refined.png")
    build = args.data / "build.json"
    seeds = " ".join(map(str, args.seeds))
    smoke = (f" A SMOKE RUN: --steps {args.steps[0]} {args.steps[1]} instead of the preset's schedule; these are "
             f"not the preset's figures." if args.steps else "")
    body = (f"## Sim-to-real table ({args.preset} preset)\n\n"
            f"`python benchmarks/sim2real/run.py {' '.join(shlex.quote(a) for a in argv)}` on {machine()}:{smoke} "
            f"{len(rows)} runs, "
            f"{sum(r['train_seconds'] for r in results) / 60:.1f} min of training in all (each run's own clock); "
            f"this invocation {elapsed / 60:.1f} min (rows whose folder held a result of the same settings were read, "
            f"not re-run). "
            f"Data: {args.data}{_build_summary(build)}. "
            f"Scored on target_test around the detected hand (the palm-centred column: around the labelled palm "
            f"centre, the protocol of the published numbers); each row is the mean (± sd) over seeds {seeds}, "
            f"per-seed errors beside it; the commands are the first seed's (the others differ in --seed and --out); "
            f"upper bound = {upper}; gap closed = (synthetic-only - method) / (synthetic-only - upper bound), "
            f"from the means. {TWINS} is a diagnostic, not a method: synthetic-only trained on the clean twins of "
            f"every target_train frame (their poses and hands, no real pixel), so the part of the gap it closes is "
            f"content, the rest appearance. "
            f"The NYU column is the one labelled real Kinect frame in {args.shared / 'real_samples'} (a smoke test on "
            f"a real sensor, one frame; seed {args.seeds[0]}'s models in the overlays). Beside this file: curves "
            f"sim2real_curves.png; "
            + ("real-sensor overlays sim2real_real_frames.png; " if samples else "no real-sensor overlays "
               f"(no real sample captures under {args.shared / 'real_samples'}); ")
            + "SimGAN refinements simgan_refined.png.\n\n"
            + table(merged, upper))
    write_section(f"sim2real {args.preset}", body, args.docs / "benchmarks.md")
    print(table(merged, upper))
    return 0


if __name__ == "__main__":
    sys.exit(main())
