"""render-hands: labelled synthetic depth frames of a posed hand, written as WebDataset shards.

    render-hands --n 500000 --out data/synth              # all cores, NYU Kinect camera
    render-hands --n 500000 --out data/synth --dry-run    # print the plan, write nothing
    render-hands --n 500000 --out /shared/synth --shard-index 3 --num-shards 16   # one of 16 jobs
    render-hands merge /shared/synth                      # after all 16: one manifest.json

The format is described in docs/data_format.md, the rendering in docs/rendering.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from render import generate
from render.arguments import OneLineParser, non_negative_int, one_line_warnings, positive_int
from render.dataset import POSE_BLOCK, SENSORS, RenderConfig, load_camera
from render.shards import sha256_file

DESCRIPTION = __doc__.split("\n\n")[0]


def render_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="render-hands", description=DESCRIPTION,
        epilog="Subcommand: 'render-hands merge DIR [SLICE_DIR ...]' combines the slice manifests "
               "of a --num-shards run into DIR/manifest.json (see 'render-hands merge --help'). "
               "Re-running the same command resumes an interrupted run.",
)
    p.add_argument("--n", type=positive_int, required=True,
                   help="number of samples (frames of the front view) in the dataset")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder for manifest.json and shard-NNNNNN.tar files")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed every random choice derives from, with the sample index; the same "
                        "seed and settings give identical samples whatever --workers is (default: 0)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="worker processes, each with its own offscreen GL context (default: all cores)")
    p.add_argument("--shard-size", type=positive_int, default=1024,
                   help="samples per tar shard; shard k holds samples [k*K, (k+1)*K) (default: 1024)")
    p.add_argument("--hand-model", default="open", metavar="open|PATH",
                   help="'open' for the built-in openly licensed hand, or an official MANO "
                        "MANO_RIGHT.pkl/.npz file (default: open)")
    p.add_argument("--poses", default="prior", metavar="prior|FILE",
                   help="'prior' samples anatomically valid random poses; an .npz pose file "
                        "(hand_pose, betas, global_orient) is cycled through with small random "
                        "perturbations (default: prior)")
    p.add_argument("--views", type=int, choices=(1, 3), default=1,
                   help="1: front camera only; 3: also NYU-like top and side cameras "
                        "(KEY.depth.view1.png, KEY.depth.view2.png, labels under 'views'); default 1")
    p.add_argument("--sensor", choices=SENSORS, default="clean",
                   help="'clean': exact depth rounded to 1 mm; 'kinect': Kinect v1 artefacts "
                        "(disparity quantisation, noise, edge and grazing-angle dropouts, holes); "
                        "default clean")
    p.add_argument("--camera", default="nyu", metavar="nyu|JSON",
                   help="'nyu' for the NYU Kinect (fx 588.03, fy 587.07, cx 320, cy 240, 640x480) "
                        "or a JSON file with fx, fy, cx, cy, width, height (pixels); default nyu")
    p.add_argument("--distance", type=float, nargs=2, default=(500.0, 1100.0), metavar=("MIN", "MAX"),
                   help="range of palm-centre distances from the camera in mm (default: 500 1100, "
                        "as in NYU's captures)")
    p.add_argument("--no-forearm", dest="forearm", action="store_false",
                   help="leave out the forearm stub attached at the wrist (on by default because "
                        "real captures always show a forearm)")
    p.add_argument("--shard-index", type=non_negative_int, default=0,
                   help="render only slice i of --num-shards k disjoint slices (cluster array jobs); "
                        "merge the slices afterwards with 'render-hands merge'")
    p.add_argument("--num-shards", type=positive_int, default=1,
                   help="number of slices the shards are split into (see --shard-index)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different dataset found in --out instead of refusing")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (shards, what is already done, settings) and write nothing")
    p.add_argument("--gl", choices=("egl", "osmesa"), default=None,
                   help="offscreen GL backend (default: EGL if it works, else OSMesa)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def merge_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="render-hands merge",
        description="Combine the slice manifests of a dataset rendered with --shard-index/--num-shards "
                    "into one DIR/manifest.json, checking every shard's sha256.")
    p.add_argument("out", type=Path, help="dataset folder that receives manifest.json")
    p.add_argument("sources", type=Path, nargs="*", default=[],
                   help="other folders holding slices of the same dataset; their shards are moved into DIR")
    return p


def build_job(args: argparse.Namespace, argv: list[str]) -> generate.Job:
    """Validate every input (camera, model, poses, folder) before anything is written."""
    camera, camera_source = load_camera(args.camera)
    config = RenderConfig(n=args.n, seed=args.seed, shard_size=args.shard_size,
                          hand_model=args.hand_model, poses=args.poses, views=args.views,
                          sensor=args.sensor, camera=camera, camera_source=camera_source,
                          forearm=args.forearm, distance_mm=tuple(args.distance))
    from hand_models.model import HandModel
    model = HandModel.load(args.hand_model)
    poses_checksum = None
    if args.poses != "prior":
        from hand_models.poses import load_pose_file
        load_pose_file(args.poses, model.num_betas)  # refuse a malformed file before any work
        poses_checksum = sha256_file(Path(args.poses))
    identity = config.identity(model.name, model.checksum, poses_checksum)
    part = generate.Slice.of(config.num_shards, args.shard_index, args.num_shards)
    return generate.prepare(config, args.out, identity, part, shlex.join(["render-hands", *argv]),
                            overwrite=args.overwrite, dry_run=args.dry_run)


def print_plan(job: generate.Job, workers: int, backend: str) -> None:
    cfg, part = job.config, job.part
    pending = job.pending() if job.out.is_dir() else list(range(part.start, part.stop))
    n_part = sum(cfg.shard_range(s)[1] - cfg.shard_range(s)[0] for s in range(part.start, part.stop))
    cam = cfg.camera
    lines = [
        f"render-hands plan for {job.out}",
        f"  samples    {cfg.n} in {cfg.num_shards} shards of {cfg.shard_size} (poses drawn in blocks of {POSE_BLOCK})",
        f"  this run   slice {part.index} of {part.count}: shards {part.start}..{part.stop - 1}, {n_part} samples; "
        f"{len(pending)} shards to render, {part.stop - part.start - len(pending)} already complete",
        f"  camera     {cfg.camera_source}: fx {cam.fx} fy {cam.fy} cx {cam.cx} cy {cam.cy} {cam.width}x{cam.height}",
        f"  hand       {cfg.hand_model} (sha256 {job.identity['hand_model_checksum'][:12]}), poses {cfg.poses}, "
        f"forearm {'on' if cfg.forearm else 'off'}, palm at {cfg.distance_mm[0]:.0f}..{cfg.distance_mm[1]:.0f} mm",
        f"  output     {cfg.views} view(s), sensor {cfg.sensor}, seed {cfg.seed}, ~{generate.estimate_bytes(cfg) / 1e9:.2f} GB",
        f"  workers    {workers} process(es), GL backend {backend}",
        f"  manifest   {'manifest.json' if part.whole else generate.SLICE_MANIFEST.format(index=part.index, count=part.count)}",
    ]
    print("\n".join(lines))


def main_merge(argv: list[str]) -> int:
    args = merge_parser().parse_args(argv)
    manifest = generate.merge(args.out, args.sources)
    print(f"{args.out / 'manifest.json'}: {manifest['count']} samples in {len(manifest['shards'])} shards")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a batch system's stop) ends the run as Ctrl-C does: workers stopped, resumable."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with one_line_warnings("render-hands"):   # a folder that cannot be locked, say
            return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["merge"]:
            return main_merge(argv[1:])
        args = render_parser().parse_args(argv)
        job = build_job(args, argv)
        from render.gl import choose_backend
        backend = choose_backend(args.gl)
        if args.dry_run:
            print_plan(job, args.workers, backend)
            return 0
        start = time.time()
        manifest, written = generate.run(job, args.workers, show_progress=not args.quiet)
        took = time.time() - start
        name = "manifest.json" if job.part.whole else "slice manifest"
        print(f"{job.out}: {manifest['count']} samples in {len(manifest['shards'])} shards, "
              + (f"{name} written ({took:.1f} s)" if written else f"already complete ({name} kept)"), file=sys.stderr)
        return 0
    except (ValueError, RuntimeError, OSError) as err:
        print(f"render-hands: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print("render-hands: interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
