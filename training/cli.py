"""train-mapping: learn a depth hand pose estimator whose real-image features are mapped into the
synthetic feature space (MURAUER), or one of the baselines it is measured against.

    train-mapping --synthetic SHARDS --real CAPTURE [--n-labeled N --pairs SHARDS] --method M --out RUN
    train-mapping predict --checkpoint RUN/checkpoint.pt --real CAPTURE --out PRED.txt
    train-mapping plot RUN --out CURVES.png

Several GPUs: torchrun --nproc_per_node G -m training.cli ... (see docs/training.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from render.arguments import one_line_warnings
from render.atomic import WriteError, check_writable
from render.jsonfile import read_json_object
from training.captures import CaptureError, load_capture
from training.config import PRESETS, ConfigError, TrainConfig, preset
from training.data import DataError
from training.evaluate import EvalInputError
from training.methods import REGISTRY
from training.train import TrainingError, load_checkpoint

ERRORS = (ConfigError, DataError, CaptureError, EvalInputError, TrainingError, WriteError)


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train-mapping", description=__doc__.split("\n\n")[0],
                                epilog="Subcommands: 'train-mapping predict --help', 'train-mapping plot --help'. Re-running the same "
                                       "command resumes the run in --out.")
    p.add_argument("--synthetic", help="render-hands shard folder (labelled synthetic frames)")
    p.add_argument("--real", nargs="+", default=None, metavar="CAPTURE",
                   help="real capture folder(s) (capture.json); unlabeled frames, the first also holds the labels")
    p.add_argument("--real-labels", metavar="FILE", help="uvd labels for the first --real capture (else its own)")
    p.add_argument("--n-labeled", type=int, help="labelled real frames to train with: the first N")
    p.add_argument("--pairs", metavar="DIR", help="shards rendered from the poses fitted to the labelled frames "
                                                  "(render-hands --poses), for the embedding loss")
    p.add_argument("--eval", metavar="CAPTURE", help="labelled capture to evaluate on during training "
                                                     "(default: labelled frames of --real not trained on)")
    p.add_argument("--method", choices=list(REGISTRY), help="what to train (default murauer)")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder (created; resumed if it holds a checkpoint; a folder of other files is refused)")
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="base settings: the paper's (default), or a small CPU one; unset options come from it")
    p.add_argument("--config", type=Path, help="JSON file of settings overriding the preset")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="where to train (default auto)")
    p.add_argument("--max-steps", type=int, help="total steps (pre-training included)")
    p.add_argument("--workers", type=int, help="data loader processes per GPU")
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the training step")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train-mapping predict",
                                description="uvd joint predictions for a real capture, in the format hand-eval reads")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--real", required=True, type=Path, metavar="CAPTURE")
    p.add_argument("--out", required=True, type=Path, help="text file: one frame per line, u v d per joint")
    p.add_argument("--centre", default="detect", metavar="detect|labels|FILE",
                   help="crop around the detected hand (default), the labelled palm centre, or the centres "
                        "of a file (u v d per line, one line per frame)")
    p.add_argument("--save-centres", type=Path, metavar="FILE",
                   help="also write the crop centres used, for --centre FILE next time")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to run the network (default cpu; both in float32)")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Preset, then --config, then the command line."""
    config = preset(args.preset)
    if args.config is not None:
        config = TrainConfig.from_json(args.config, config)
    overrides = {"synthetic": args.synthetic, "real": args.real, "real_labels": args.real_labels,
                 "n_labeled": args.n_labeled, "pairs": args.pairs, "eval": args.eval, "method": args.method,
                 "device": args.device, "steps": args.max_steps, "workers": args.workers, "seed": args.seed,
                 "compile": args.compile}
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("synthetic", "real_labels", "pairs", "eval"):
        if key in given:
            given[key] = str(Path(given[key]).resolve())
    if "real" in given:
        given["real"] = [str(Path(p).resolve()) for p in given["real"]]
    return TrainConfig.from_dict(given, config, source="command line").validate()


def config_of(argv: list[str]) -> TrainConfig:
    """The settings a train-mapping command line (without the program name) resolves to."""
    return resolve_config(_train_parser().parse_args(argv))


def check_not_inputs(outputs: list[Path | None], checkpoint: Path, centre: str, capture) -> None:
    """Refuse an output onto a file predict reads: the checkpoint, the centres file, the capture's
    frames (or a .png/.npy beside them, which would become one), labels or capture.json."""
    meta = capture.root / "capture.json"
    labels = read_json_object(meta, "capture.json").get("labels")
    inputs = {checkpoint.resolve(): "the --checkpoint file", meta.resolve(): "the capture's capture.json"}
    if centre not in ("detect", "labels"):
        inputs[Path(centre).resolve()] = "the --centre file"
    if isinstance(labels, str):
        inputs[(capture.root / labels).resolve()] = "the capture's labels"
    for frame in (*capture.frames, *(f for view in capture.views for f in view.frames)):
        inputs[frame.resolve()] = "a frame of the capture"
    for path in (p for p in outputs if p is not None):
        where = path.resolve()
        if where in inputs:
            raise WriteError(f"{path}: is {inputs[where]}; write elsewhere")
        if where.parent == capture.root.resolve() and where.suffix.lower() in (".png", ".npy"):
            raise WriteError(f"{path}: would be read as a frame of the capture {capture.root}; write elsewhere")


def _predict(argv: list[str]) -> int:
    args = _predict_parser().parse_args(argv)
    import torch

    from training.predict import frame_centres, load_model, predict_capture, save_frame_centres, write_uvd
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda: torch sees no CUDA device")
        for path in (args.out, args.save_centres):
            if path is not None:
                check_writable(path)
        if args.save_centres is not None and args.save_centres.resolve() == args.out.resolve():
            raise WriteError(f"{args.out}: given as both --out and --save-centres")
        if args.centre not in ("detect", "labels") and not Path(args.centre).is_file():
            raise DataError(f"--centre {args.centre}: not detect, labels or a centres file")
        device = torch.device(args.device)
        method, config = load_model(args.checkpoint, device)
        capture = load_capture(args.real)
        check_not_inputs([args.out, args.save_centres], args.checkpoint, args.centre, capture)
        centres = frame_centres(capture, args.centre)
        uvd = predict_capture(method, config, capture, centres, device)
        if not np.isfinite(uvd).all():
            bad = int((~np.isfinite(uvd)).any(axis=(1, 2)).sum())
            raise TrainingError(f"{args.checkpoint}: the network predicts non-finite joints on {bad} of {len(uvd)} "
                                f"frames (damaged weights?); nothing written")
        write_uvd(args.out, uvd)
        if args.save_centres is not None:
            save_frame_centres(args.save_centres, capture, centres)
    except ERRORS as err:
        print(f"train-mapping predict: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(uvd)} frames, {uvd.shape[1]} joints (u v d)")
    return 0


def _plot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="train-mapping plot", description="loss and evaluation curves of a run as a picture")
    p.add_argument("run", type=Path, help="run folder (metrics.jsonl, config.json)")
    p.add_argument("--out", required=True, type=Path, help="picture to write (.png, .pdf, .svg, .jpg)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    from training.curves import plot_run
    try:
        plot_run(args.run, args.out, args.title)
    except WriteError as err:
        print(f"train-mapping plot: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as err:
        print(f"train-mapping plot: error: {args.run}: cannot plot ({err})", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with one_line_warnings("train-mapping"):   # a frame without a hand, say
        return _main(argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    if argv[:1] == ["plot"]:
        return _plot(argv[1:])
    args = _train_parser().parse_args(argv)
    from training.train import train
    try:
        config = resolve_config(args)
        summary = train(config, args.out, progress=not args.quiet)
    except ERRORS as err:
        print(f"train-mapping: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        checkpoint = args.out / "checkpoint.pt"
        try:
            kept = f"run the same command to resume from {checkpoint} (step {load_checkpoint(checkpoint)['step']})" \
                if checkpoint.exists() else "no checkpoint was saved yet; running the same command starts over"
        except TrainingError as err:
            kept = f"no resumable checkpoint: {err}"
        print(f"train-mapping: interrupted; {kept}", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") != "0":
        return 0
    line = f"{args.out}: {summary['steps']} steps, {summary['samples_per_s'] or 0:.1f} samples/s"
    if "eval_mean_error_mm" in summary:
        line += f", mean 3D error {summary['eval_mean_error_mm']:.2f} mm on {summary['eval_frames']} real frame(s)"
    else:
        line += "; not evaluated: no labelled real frame was held out (give --eval CAPTURE)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
