"""Build the sim-to-real benchmark's data: a clean synthetic source and a reproducible target domain.

    python benchmarks/sim2real/build.py --preset small --out /tmp/sim2real_small [--seed 0]

The target domain is a STAND-IN for real captures (see docs/sim2real.md and target.py): NYU test
poses, out-of-distribution hand shapes, a Kinect model with real-capture hole patterns, and
arm / body / table / wall surfaces, as full 640x480 frames. Layout of DIR:

    build.json                 preset, seed, counts, commands, timings, checksums, localisation rate
    source/                    render-hands shards: clean sensor, prior poses, --views 3
    target_train_poses.npz     pose file of the target_train frames, in order (with transl)
    pairs/                     render-hands --poses target_train_poses.npz --views 1 --sensor clean
    target_test/               capture folder, labelled (labels_uvd.txt, nyu14)
    target_train/              capture folder, labelled: the pool the runner takes its first n from
    target_unlabeled/          capture folder without labels, with a second camera of the rig (side/)

Same preset and seed give identical files (build.json's checksums; timings excepted). Re-running
into the same DIR resumes render-hands and rewrites the target folders.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from render.atomic import WriteError, check_writable, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import target as tgt  # noqa: E402

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NYU_LABELS = Path("eval_anchors/nyu/nyu_test_groundtruth_label.txt")
REAL_CAPTURES = [Path("real_samples/nyu"), Path("real_samples/bighand"), Path("real_samples/realsense_sr305/seq_a")]
CHUNK = 32          # target frames per task
FIT_CHUNK = 128     # NYU frames fitted per task
LOCATE_EVERY = 10   # localisation is measured on every test frame and every 10th other frame
SPLIT_FOLDERS = {"test": "target_test", "train": "target_train", "unlabeled": "target_unlabeled"}


@dataclass(frozen=True)
class Preset:
    source: int       # source frames (three views each)
    test: int
    train: int
    unlabeled: int
    fit_steps: int    # pose-fitting iterations per NYU frame
    shard_size: int = 1024


PRESETS = {
    "tiny": Preset(source=16, test=3, train=4, unlabeled=3, fit_steps=60, shard_size=8),
    "small": Preset(source=4000, test=300, train=1000, unlabeled=1000, fit_steps=150),
    "paper": Preset(source=100_000, test=2000, train=10_000, unlabeled=20_000, fit_steps=200),
}


class BuildError(Exception):
    """Bad input or a failed step; main prints the message as one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Build the sim-to-real benchmark data (source shards, stand-in target domain).")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS),
                   help="small: ~3 min on 2 CPU cores; paper: paper-sized, for a GPU machine; tiny: tests")
    p.add_argument("--out", required=True, type=Path, help="output folder (layout in docs/sim2real.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    for name in ("source", "test", "train", "unlabeled"):
        p.add_argument(f"--{name}", type=int, default=None, metavar="N", help=f"override the preset's {name} frame count")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for target frames (default: all cores)")
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                   help="the shared data folder with eval_anchors/ and real_samples/ (default: ../shared beside the repo)")
    p.add_argument("--figure", type=Path, default=None, metavar="PNG",
                   help="also draw source and target frames side by side into PNG (docs/sim2real_target.png)")
    return p.parse_args(argv)


def folder_checksum(root: Path, pattern: str = "*") -> str:
    """sha256 over the names and sha256s of the folder's files matching `pattern` (sorted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.glob(pattern) if p.is_file()):
        h.update(f"{path.relative_to(root)} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def repository_version() -> dict:
    """The commit the data was built with: hand model, prior and renderer all shape the frames."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "render", "hand_models", "training",
                                "benchmarks/sim2real/build.py", "benchmarks/sim2real/target.py"], cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return {"commit": None, "modified": None}
    return {"commit": commit or None, "modified": bool(dirty)}


def check_inputs(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise BuildError(f"--workers must be >= 1, got {args.workers}")
    if args.seed < 0:
        raise BuildError(f"--seed must be >= 0, got {args.seed}")
    try:
        check_writable(args.out, folder=True)
        if args.figure is not None:
            check_writable(args.figure)
    except WriteError as err:
        raise BuildError(str(err)) from None
    if not args.shared.is_dir():
        raise BuildError(f"{args.shared}: shared data folder not found (needs {NYU_LABELS} and real_samples/; "
                         f"give --shared)")
    for rel in [NYU_LABELS] + REAL_CAPTURES:
        if not (args.shared / rel).exists():
            raise BuildError(f"{args.shared / rel}: missing from the shared data folder")


def render_hands(args_list: list[str], cwd: Path, log: Path) -> tuple[list[str], subprocess.Popen]:
    """Start render-hands in `cwd`, its output going to `log`."""
    cmd = [sys.executable, "-m", "render.cli", *args_list, "--quiet"]
    with open(log, "w") as fh:
        return cmd, subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)


def check(proc: subprocess.Popen, log: Path, finish: bool = False) -> None:
    """Stop the build as soon as a background render-hands has failed (with `finish`, wait for it
    first), rather than after the target frames it runs beside."""
    if (proc.wait() if finish else proc.poll()) not in (None, 0):
        lines = log.read_text().strip().splitlines() if log.exists() else []
        raise BuildError(f"render-hands failed (exit {proc.returncode}, log {log}): {lines[-1] if lines else ''}")


# --- target frames in worker processes ---------------------------------------------------------
_worker: dict = {}


def _init_worker(holes: tgt.HolePatterns, seed: int, labels: np.ndarray) -> None:
    import torch

    from hand_models.model import HandModel
    torch.set_num_threads(1)
    _worker.update(synth=tgt.TargetSynthesizer(HandModel.load("open"), holes, seed), labels=labels)


def _fit_chunk(frames: np.ndarray, steps: int) -> tgt.FittedPoses:
    synth = _worker["synth"]
    return tgt.fit_nyu(synth.model, synth.prior, _worker["labels"], frames, steps)


def _render_chunk(split: str, start: int, stop: int, n: int, folder: str, fitted: tgt.FittedPoses,
                  rig: tuple[np.ndarray, ...]) -> list[dict]:
    """Write frames start..stop-1 of a split of n as PNGs into `folder` (rig views into its
    subfolder tgt.RIG_VIEW); return their labels and poses."""
    from render.shards import encode_depth_png

    checked = frozenset({0, n // 2, n - 1})  # the frames load_capture's unit check looks at
    frames = _worker["synth"].frames(split, start, stop, fitted, checked, rig)
    out = []
    for i, f in zip(range(start, stop), frames):
        (Path(folder) / f"{i:06d}.png").write_bytes(encode_depth_png(f.depth_mm))
        for view in f.views:
            (Path(folder) / tgt.RIG_VIEW / f"{i:06d}.png").write_bytes(encode_depth_png(view))
        located = None
        if split == "test" or i % LOCATE_EVERY == 0:
            located = tgt.locate_error_mm(f.depth_mm, f.nyu14_uvd)
        out.append({"index": i, "uvd": f.nyu14_uvd, "hand_pose": f.pose.hand_pose[0], "betas": f.pose.betas[0],
                    "global_orient": f.pose.global_orient[0], "transl": f.transl_m, "locate_mm": located})
    return out


def _check_or_cancel(check_background: Callable[[], None], jobs: list[futures.Future]) -> None:
    """check_background(); when it fails, the chunks not yet started are cancelled, so the pool's
    exit waits only for those running (Future.cancel, not a cancelling pool shutdown: that could
    hang on Ctrl-C while workers were starting)."""
    try:
        check_background()
    except BuildError:
        for job in jobs:
            job.cancel()
        raise


def build_split(split: str, n: int, out: Path, pool: futures.Executor, fitted: tgt.FittedPoses,
                meta: dict, check_background: Callable[[], None]) -> list[dict]:
    folder = out / SPLIT_FOLDERS[split]
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # The unlabeled frames are filmed by a rig of two cameras, for view prediction.
    rig = (tgt.rig_extrinsics(fitted),) if split == "unlabeled" else ()
    if rig:
        (tmp / tgt.RIG_VIEW).mkdir()
        meta = {**meta, "views": tgt.rig_views(rig)}
    jobs = [pool.submit(_render_chunk, split, s, min(s + CHUNK, n), n, str(tmp), fitted, rig)
            for s in range(0, n, CHUNK)]
    rows: list[dict] = []
    with tqdm(total=n, desc=f"target {split}", unit="frame") as bar:
        for job in futures.as_completed(jobs):
            part = job.result()
            rows += part
            bar.update(len(part))
            _check_or_cancel(check_background, jobs)
    rows.sort(key=lambda r: r["index"])
    labelled = split != "unlabeled"
    tgt.finish_capture(tmp, [r["uvd"] for r in rows] if labelled else None, meta)
    try:
        tgt.load_capture(tmp)  # as the runner will read it, before it takes the folder's name
    except ValueError as err:
        raise BuildError(f"{folder}: the capture does not load: {err}") from None
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return rows


def build(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.preset]
    counts = {k: getattr(args, k) for k in ("source", "test", "train", "unlabeled") if getattr(args, k) is not None}
    bad = [f"--{k} {v}" for k, v in counts.items() if v < 1]
    if bad:
        raise BuildError(f"frame counts must be >= 1: {', '.join(bad)}")
    preset = replace(preset, **counts)
    check_inputs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    # build.json marks a complete build: an earlier one's must not vouch for a half-done rebuild.
    (out / "build.json").unlink(missing_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    commands: dict = {"build": ["python", "benchmarks/sim2real/build.py", *args.argv]}
    # DIR/source and DIR/pairs belong to this build: render-hands resumes them when nothing changed
    # and replaces them when a setting, the pose file or its code did.
    # render-hands gets half the cores: it runs beside the target's workers.
    extra = ["--overwrite", "--workers", str(max(1, args.workers // 2))]

    # The source renders in the background while the target is built (render-hands resumes).
    source_cmd, source_proc = render_hands(
        ["--n", str(preset.source), "--out", "source", "--views", "3", "--sensor", "clean", "--seed", str(args.seed),
         "--shard-size", str(preset.shard_size), *extra], out, out / ".source.log")
    commands["source"] = {"cwd": ".", "argv": ["render-hands", *source_cmd[3:]]}
    pairs_proc = None

    def check_background() -> None:
        check(source_proc, out / ".source.log")
        if pairs_proc is not None:
            check(pairs_proc, out / ".pairs.log")

    try:
        from hand_models.poses import save_pose_file

        t = time.perf_counter()
        labels = tgt.load_nyu_labels(args.shared / NYU_LABELS)
        splits = tgt.split_nyu(len(labels), args.seed)
        holes = tgt.HolePatterns.measure([args.shared / c for c in REAL_CAPTURES])
        sizes = {"test": preset.test, "train": preset.train, "unlabeled": preset.unlabeled}
        rows = {}
        ctx = multiprocessing.get_context("spawn")  # a fresh GL context and torch per worker
        with futures.ProcessPoolExecutor(args.workers, ctx, initializer=_init_worker,
                                         initargs=(holes, args.seed, labels)) as pool:
            # Fixed chunks (not one per worker) so that the fitted poses do not depend on --workers.
            jobs = {}
            for split in tgt.SPLITS:
                frames = splits[split][:min(sizes[split], len(splits[split]))]
                jobs[split] = [pool.submit(_fit_chunk, frames[s:s + FIT_CHUNK], preset.fit_steps)
                               for s in range(0, len(frames), FIT_CHUNK)]
            total = sum(len(j) for j in jobs.values())
            with tqdm(total=total, desc="fitting NYU poses", unit="chunk") as bar:
                queued = [j for js in jobs.values() for j in js]
                for job in futures.as_completed(queued):
                    job.result()
                    bar.update()
                    _check_or_cancel(check_background, queued)
            fitted = {split: tgt.FittedPoses.concat([j.result() for j in js]) for split, js in jobs.items()}
            timings["fit_s"] = time.perf_counter() - t
            print(f"fitted {sum(len(f.nyu_index) for f in fitted.values())} NYU poses in {timings['fit_s']:.1f} s",
                  flush=True)
            t = time.perf_counter()
            for split in tgt.SPLITS:
                meta = {"sensor": "STAND-IN target domain of benchmarks/sim2real (synthetic: Kinect v1 model, "
                                  "real-capture hole patterns, NYU poses, out-of-distribution hand shapes, scene surfaces)",
                        "nyu_test_frames": [int(i) for i in fitted[split].nyu_index],
                        "seed": args.seed, "split": split}
                rows[split] = build_split(split, sizes[split], out, pool, fitted[split], meta, check_background)
                if split == "train":
                    r = rows["train"]
                    batch = tgt.PoseBatch(np.stack([x["hand_pose"] for x in r]).astype(np.float32),
                                          np.stack([x["betas"] for x in r]).astype(np.float32),
                                          np.stack([x["global_orient"] for x in r]).astype(np.float32))
                    k = np.arange(len(r)) % len(fitted["train"].nyu_index)
                    save_pose_file(out / "target_train_poses.npz", batch,
                                   transl=np.stack([x["transl"] for x in r]).astype(np.float64),
                                   residual_mm=fitted["train"].residual_mm[k].astype(np.float32),
                                   nyu_index=fitted["train"].nyu_index[k].astype(np.int64))
                    (out / "pairs").mkdir(exist_ok=True)
                    pairs_cmd, pairs_proc = render_hands(
                        ["--poses", "../target_train_poses.npz", "--n", str(preset.train), "--out", ".",
                         "--views", "1", "--sensor", "clean", "--seed", str(args.seed), "--shard-size",
                         str(preset.shard_size), *extra], out / "pairs", out / ".pairs.log")
                    commands["pairs"] = {"cwd": "pairs", "argv": ["render-hands", *pairs_cmd[3:]]}
        timings["target_s"] = time.perf_counter() - t
        t = time.perf_counter()
        check(source_proc, out / ".source.log", finish=True)
        check(pairs_proc, out / ".pairs.log", finish=True)
        timings["wait_render_hands_s"] = time.perf_counter() - t
    except BaseException as err:
        for proc in (source_proc, pairs_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        if isinstance(err, BrokenProcessPool):
            raise BuildError(f"{out}: a target worker process failed ({err}); its error is printed above") from None
        raise
    timings["total_s"] = time.perf_counter() - t0

    located = [r["locate_mm"] for split in tgt.SPLITS for r in rows[split] if r["locate_mm"] is not None]
    test_located = [r["locate_mm"] for r in rows["test"]]
    checksums = {"source": folder_checksum(out / "source", "shard-*.tar"),
                 "pairs": folder_checksum(out / "pairs", "shard-*.tar"),
                 "target_train_poses.npz": hashlib.sha256((out / "target_train_poses.npz").read_bytes()).hexdigest()}
    checksums.update({SPLIT_FOLDERS[s]: folder_checksum(out / SPLIT_FOLDERS[s], "**/*") for s in tgt.SPLITS})
    record = {
        "format": "sim2real-build", "version": 1, "preset": args.preset, "seed": args.seed,
        "counts": {k: v for k, v in asdict(preset).items() if k in ("source", "test", "train", "unlabeled")},
        "settings": asdict(preset),
        "stand_in": "the target domain is synthetic, a reproducible stand-in for real captures (docs/sim2real.md)",
        "commands": commands,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"cpus": os.cpu_count(), "workers": args.workers},
        "repository": repository_version(),
        "checksums": checksums,
        "nyu_split": {s: {"pool": int(len(splits[s])), "fitted": int(len(fitted[s].nyu_index)),
                          "fit_residual_mm_median": round(float(np.median(fitted[s].residual_mm)), 3)}
                      for s in tgt.SPLITS},
        "target_shapes": {"size_sd": list(tgt.SHAPE_SD_RANGE), "extra_directions": tgt.EXTRA_SHAPE_DIRECTIONS},
        "sensor_units": [asdict(u) for u in tgt.sensor_units(args.seed)],
        "hole_patterns": holes.summary(),
        "localization": {"test": tgt.summarize_locate(test_located), "all_measured": tgt.summarize_locate(located)},
    }
    write_json(out / "build.json", record)
    return record


def figure(out: Path, png: Path, n: int = 4) -> None:
    """Source frames (clean, prior poses) beside target frames, whole and zoomed on the hand, and
    unlabeled target frames with the same instant seen by the rig's side camera."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from render.camera import uvd_to_xyz, xyz_to_uvd
    from render.shards import iter_samples
    from training.captures import load_capture
    from training.figures import save_figure

    def show(ax, depth, title, uvd=None, centre=None, zoom=None):
        d = depth.astype(np.float32)
        if zoom is not None:
            u, v = int(centre[0]), int(centre[1])
            d = np.pad(d, zoom)[v:v + 2 * zoom, u:u + 2 * zoom]
            lo = max(float(d[d > 0].min()) if (d > 0).any() else 0.0, centre[2] - 150)
            ax.imshow(np.where(d > 0, np.clip(d, lo, centre[2] + 250), np.nan), cmap="viridis")
            if uvd is not None:
                ax.plot(uvd[:, 0] - u + zoom, uvd[:, 1] - v + zoom, "r.", ms=3)
        else:
            ax.imshow(np.where(d > 0, d, np.nan), cmap="viridis", vmin=300, vmax=2500)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])

    source = []
    for sample in iter_samples(out / "source"):
        full = np.zeros((480, 640), np.uint16)
        (u0, v0), (w, h) = sample["crop_origin"], sample["crop_size"]
        full[v0:v0 + h, u0:u0 + w] = sample["depth"]
        source.append((full, np.asarray(sample["nyu14_uvd"])))
        if len(source) == n:
            break
    test, unlabeled = load_capture(out / "target_test"), load_capture(out / "target_unlabeled")
    side = unlabeled.view(tgt.RIG_VIEW)
    n = min(n, len(source), len(test), len(unlabeled))
    fig, axes = plt.subplots(6, n, figsize=(3.2 * n, 15.6))
    for k in range(n):
        depth, uvd = source[k]
        show(axes[0, k], depth, f"source {k} (clean, prior pose)")
        show(axes[1, k], depth, "source, hand", uvd, uvd[tgt.PALM], zoom=110)
        depth, uvd = test.depth_mm(k), test.labels_uvd[k]
        show(axes[2, k], depth, f"target_test {k} (full frame)")
        show(axes[3, k], depth, "target, hand (labels red)", uvd, uvd[tgt.PALM], zoom=110)
        # No labels here: centred on the detected hand, carried into the side camera as training does.
        centre = unlabeled.locate(k).centre_uvd
        show(axes[4, k], unlabeled.depth_mm(k), f"target_unlabeled {k}, front camera", centre=centre, zoom=110)
        side_centre = xyz_to_uvd(side.to_view(uvd_to_xyz(centre, unlabeled.intrinsics)), side.intrinsics)
        show(axes[5, k], unlabeled.depth_mm(k, side), f"same instant, {tgt.RIG_VIEW} camera", centre=side_centre,
             zoom=110)
    fig.suptitle("sim2real: source (render-hands, clean) vs STAND-IN target (NYU poses, other shapes, "
                 "Kinect + real-capture holes, arm / body / table / wall);\n"
                 "rows 5-6: an unlabeled frame and the same instant from the rig's side camera; depth mm", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    save_figure(fig, png, dpi=80)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        record = build(args)
    except (BuildError, tgt.TargetError) as err:
        print(f"sim2real build: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sim2real build: interrupted; {args.out} has no build.json, so it is not a complete build: "
              f"run the same command again (source/ and pairs/ resume)", file=sys.stderr)
        return 130
    loc = record["localization"]["test"]
    print(f"built {args.out} in {record['timings_s']['total_s']:.0f} s: {record['counts']}; hand localised on "
          f"{100 * loc['hit_rate']:.1f} % of target_test frames (within {loc['tolerance_mm']:.0f} mm)")
    if args.figure is not None:
        figure(args.out, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
