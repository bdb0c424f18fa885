"""3D hand pose errors from uvd prediction files, as the hand pose literature reports them.

Published results (NYU, ICVL, MSRA) ship as text files with one frame per line and `u v d` per
joint (pixels, pixels, millimetres). Errors are measured in 3D after back-projecting both files
with the dataset's intrinsics, so a method is scored on metric error, not pixel error. The sign
convention of y (NYU's y-up or OpenCV's y-down) does not change any distance; the presets use
the convention of each dataset's own code.

Metrics:
- mean 3D joint error (mm) over all frames and joints, and per joint;
- the "success" curve: the fraction of frames whose *worst* joint lies within a threshold
  (Taylor et al. 2012; the curve most papers plot).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hand_models.joints import JOINT_NAMES, NYU14_NAMES
from render.arguments import say
from render.atomic import WriteError, check_writable
from render.camera import NYU_KINECT, Intrinsics, uvd_to_xyz
from render.jsonfile import read_json_object
from training.figures import figure_format, save_figure

# Intrinsics the published result files were produced with; y_up is the convention of the
# dataset's own code (distances do not depend on it).
DATASETS: dict[str, tuple[Intrinsics, bool]] = {
    "nyu": (NYU_KINECT, True),
    "icvl": (Intrinsics(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240), False),
    "msra": (Intrinsics(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240), False),
}

JOINT_SETS: dict[str, tuple[str, ...]] = {"nyu14": NYU14_NAMES, "21": JOINT_NAMES}

DEFAULT_THRESHOLDS_MM = np.arange(0.0, 80.5, 0.5)
OUTSIDE_WARNING = 0.1   # more joints than this fraction outside the image: probably not this camera's uvd


class EvalInputError(ValueError):
    """A prediction or ground-truth file that cannot be scored (message names file and line)."""


def load_uvd(path: str | Path, num_joints: int | None = None) -> np.ndarray:
    """Read a uvd text file into (frames, joints, 3); refuse ragged, non-numeric or empty files.

    Blank lines are skipped (some published files end with one); every other line must hold
    3 * joints finite numbers with positive depth.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise EvalInputError(f"{path}: cannot read ({err})") from None
    rows: list[np.ndarray] = []
    width = None if num_joints is None else 3 * num_joints
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = np.array([float(f) for f in fields])
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            raise EvalInputError(f"{path}:{lineno}: non-numeric value {bad!r}") from None
        if width is None:
            if len(fields) % 3:
                raise EvalInputError(f"{path}:{lineno}: {len(fields)} columns, not a multiple of 3 (u v d per joint)")
            width = len(fields)
        if len(fields) != width:
            raise EvalInputError(f"{path}:{lineno}: {len(fields)} columns, expected {width}")
        if not np.all(np.isfinite(values)):
            raise EvalInputError(f"{path}:{lineno}: non-finite value")
        if np.any(values[2::3] <= 0):
            raise EvalInputError(f"{path}:{lineno}: depth must be positive")
        rows.append(values)
    if not rows:
        raise EvalInputError(f"{path}: no frames")
    return np.stack(rows).reshape(len(rows), -1, 3)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def joint_errors_mm(pred_xyz: np.ndarray, gt_xyz: np.ndarray) -> np.ndarray:
    """Euclidean error of each joint of each frame, (frames, joints)."""
    return np.linalg.norm(np.asarray(pred_xyz, float) - np.asarray(gt_xyz, float), axis=-1)


def success_curve(errors: np.ndarray, thresholds_mm: np.ndarray = DEFAULT_THRESHOLDS_MM) -> np.ndarray:
    """Fraction of frames whose worst joint error is <= each threshold."""
    worst = np.asarray(errors).max(axis=1)
    return (worst[None, :] <= np.asarray(thresholds_mm)[:, None]).mean(axis=1)


@dataclass
class EvalResult:
    mean_error_mm: float
    per_joint_mm: dict[str, float]
    frames: int
    thresholds_mm: list[float] = field(repr=False)
    fraction_within: list[float] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "mean_error_mm": self.mean_error_mm,
            "per_joint_mm": self.per_joint_mm,
            "frames": self.frames,
            "thresholds_mm": self.thresholds_mm,
            "fraction_within": self.fraction_within,
        }


def evaluate_uvd(pred_uvd: np.ndarray, gt_uvd: np.ndarray, cam: Intrinsics, y_up: bool = False,
                 joint_names: tuple[str, ...] | None = None,
                 thresholds_mm: np.ndarray = DEFAULT_THRESHOLDS_MM) -> EvalResult:
    """Score (frames, joints, 3) uvd predictions against uvd ground truth in millimetres."""
    if pred_uvd.shape != gt_uvd.shape:
        raise EvalInputError(f"prediction shape {pred_uvd.shape} differs from ground truth {gt_uvd.shape}")
    errors = joint_errors_mm(uvd_to_xyz(pred_uvd, cam, y_up), uvd_to_xyz(gt_uvd, cam, y_up))
    names = joint_names or tuple(f"joint_{j}" for j in range(errors.shape[1]))
    if len(names) != errors.shape[1]:
        raise EvalInputError(f"{len(names)} joint names for {errors.shape[1]} joints")
    per_joint = errors.mean(axis=0)
    return EvalResult(
        mean_error_mm=float(errors.mean()),
        per_joint_mm={n: float(e) for n, e in zip(names, per_joint)},
        frames=int(errors.shape[0]),
        thresholds_mm=[float(t) for t in thresholds_mm],
        fraction_within=[float(f) for f in success_curve(errors, thresholds_mm)],
    )


def plot_success_curve(curves: dict[str, EvalResult], path: str | Path) -> None:
    """Write the worst-joint success curve(s) as a picture in the format the suffix names (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, res in curves.items():
        ax.plot(res.thresholds_mm, np.asarray(res.fraction_within) * 100,
                label=f"{label} (mean {res.mean_error_mm:.2f} mm)")
    ax.set_xlabel("max allowed distance to ground truth (mm)")
    ax.set_ylabel("frames with all joints within distance (%)")
    ax.set_xlim(0, max(res.thresholds_mm[-1] for res in curves.values()))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hand-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", required=True, type=Path, help="predictions: one frame per line, u v d per joint")
    p.add_argument("--gt", required=True, type=Path, help="ground truth in the same layout")
    p.add_argument("--dataset", choices=[*DATASETS, "custom"],
                   help="intrinsics preset (default: the capture.json beside --gt if there is one, else nyu); "
                        "custom needs --intrinsics")
    p.add_argument("--intrinsics", type=Path,
                   help="camera JSON {fx, fy, cx, cy, width, height} (bare or under 'intrinsics'); implies custom")
    p.add_argument("--joints", choices=["auto", *JOINT_SETS], default="auto",
                   help="joint set of the files, for per-joint names (auto: the capture.json's label_joints, else "
                        "NYU-14 for 14 joints, joint_k for others)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", type=Path, help="write the worst-joint success curve to this picture (.png, .pdf, .svg, .jpg)")
    return p


def _camera(args: argparse.Namespace) -> tuple[Intrinsics, bool, str, str | None]:
    """Intrinsics, y_up, where they came from, and the label_joints of a capture.json they came from."""
    if args.intrinsics is not None:
        if args.dataset not in (None, "custom"):
            raise EvalInputError(f"--dataset {args.dataset} has its own intrinsics; give it or --intrinsics, not both")
        return Intrinsics.from_json(args.intrinsics), False, f"--intrinsics {args.intrinsics}", None
    if args.dataset == "custom":
        raise EvalInputError("--dataset custom needs --intrinsics JSON")
    capture_json = args.gt.parent / "capture.json"
    if args.dataset is None and capture_json.is_file():
        # A capture's own labels: its camera, not NYU's, or every millimetre is off.
        joints = read_json_object(capture_json, "capture.json").get("label_joints")
        return Intrinsics.from_json(capture_json), False, f"{capture_json} (beside --gt)", joints
    cam, y_up = DATASETS[args.dataset or "nyu"]
    return cam, y_up, f"--dataset {args.dataset}" if args.dataset else "nyu (the default)", None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cam, y_up, camera_source, label_joints = _camera(args)
        if args.plot:
            check_writable(args.plot)
            figure_format(args.plot)
        names = JOINT_SETS.get(args.joints)
        expected = None if names is None else len(names)
        gt = load_uvd(args.gt, expected)
        pred = load_uvd(args.pred, gt.shape[1])
        if len(pred) != len(gt):
            raise EvalInputError(f"{args.pred}: {len(pred)} frames but {args.gt} has {len(gt)}")
        for path, uvd in ((args.gt, gt), (args.pred, pred)):
            outside = cam.outside(uvd).mean()
            if outside > OUTSIDE_WARNING:   # xyz given for uvd, or another dataset's camera
                print(f"hand-eval: warning: {path}: {100 * outside:.0f} % of joints lie outside the "
                      f"{cam.width}x{cam.height} image of {camera_source}; is it u v d (pixels, pixels, mm) "
                      "for that camera?", file=sys.stderr)
        if names is None:
            # 21 joints come in a different order in every dataset (MSRA: wrist, index, ..., thumb):
            # this project's order only where the capture says so; 14 joints are NYU's subset.
            known = JOINT_SETS.get(label_joints) if isinstance(label_joints, str) else None
            names = known or (NYU14_NAMES if gt.shape[1] == len(NYU14_NAMES) else None)
            names = names if names is not None and len(names) == gt.shape[1] else None
        result = evaluate_uvd(pred, gt, cam, y_up, names)
    except (EvalInputError, ValueError, WriteError) as err:
        print(f"hand-eval: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        say(json.dumps(result.to_dict()))
    else:
        say(f"camera: {camera_source}: fx {cam.fx:g} fy {cam.fy:g} cx {cam.cx:g} cy {cam.cy:g}\n" + _table(result))
    # After the results: a plot that cannot be written does not cost the numbers.
    if args.plot:
        try:
            plot_success_curve({args.pred.stem: result}, args.plot)
        except (WriteError, ValueError) as err:
            print(f"hand-eval: error: {err}", file=sys.stderr)
            return 2
    return 0


def _table(result: EvalResult) -> str:
    width = max(len(n) for n in result.per_joint_mm)
    lines = [f"frames: {result.frames}  joints: {len(result.per_joint_mm)}",
             f"mean 3D joint error: {result.mean_error_mm:.3f} mm"]
    lines += [f"  {name:<{width}}  {err:7.3f} mm" for name, err in result.per_joint_mm.items()]
    lines += [f"  frames with worst joint <= {t:2d} mm: {100 * np.interp(t, result.thresholds_mm, result.fraction_within):5.1f} %"
              for t in (10, 20, 30, 40, 50, 80)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
