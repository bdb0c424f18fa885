"""`hand-model`: look at a hand model's poses, fit poses to joint labels.

    hand-model [--hand-model open|PATH] demo --out docs/hand_poses.png [--seed S]
    hand-model [--hand-model open|PATH] fit LABELS --out POSES.npz [--camera nyu|JSON] [--joints nyu14|21] [--shape]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from render.arguments import OneLineParser, non_negative_int, positive_int
from render.atomic import WriteError, check_writable


def _demo(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .joints import JOINT_PARENTS
    from .model import HandModel
    from .prior import PosePrior

    check_writable(args.out.parent, folder=True)   # before any work; the folder is made as needed
    model = HandModel.load(args.hand_model)
    prior = PosePrior(model)
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    poses = prior.sample(args.count, rng)
    rate = args.count / (time.perf_counter() - t)
    with torch.no_grad():
        out = model(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                    torch.from_numpy(poses.global_orient))
    cols = min(4, args.count)
    rows = -(-args.count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    for ax, v, j in zip(np.ravel(axes), out.vertices.numpy(), out.joints.numpy()):
        # Camera view (x right, y down): nearer triangles drawn last.
        tri = v[model.faces]
        order = np.argsort(-tri[:, :, 2].mean(1))
        shade = 1.0 - (tri[order, :, 2].mean(1) - v[:, 2].min()) / max(np.ptp(v[:, 2]), 1e-6) * 0.7
        from matplotlib.collections import PolyCollection
        ax.add_collection(PolyCollection(tri[order, :, :2], facecolors=plt.cm.gray(shade), edgecolors="none"))
        for c, p in enumerate(JOINT_PARENTS):
            if p >= 0:
                ax.plot(j[[p, c], 0], j[[p, c], 1], "r-", lw=1)
        ax.plot(j[:, 0], j[:, 1], "r.", ms=3)
        ax.set_xlim(v[:, 0].min() - 0.01, v[:, 0].max() + 0.01)
        ax.set_ylim(v[:, 1].max() + 0.01, v[:, 1].min() - 0.01)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle(f"{model.name}: poses from the prior (seed {args.seed}), camera view")
    fig.tight_layout()
    from training.figures import save_figure
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out, dpi=80)
    print(f"wrote {args.out}: {args.count} poses of {model.name} (sampler {rate:.0f} poses/s)")


def _hand(camera: Path) -> str:
    """The "hand" of a capture.json given as camera (a bare camera JSON has none: right)."""
    meta = json.loads(camera.read_text())
    hand = meta.get("hand", "right") if isinstance(meta, dict) else "right"
    if hand not in ("left", "right"):
        raise ValueError(f"{camera}: hand must be \"left\" or \"right\", got {hand!r}")
    return hand


def _fit(args) -> None:
    from render.camera import NYU_KINECT, Intrinsics, uvd_to_xyz
    from training.captures import mirror_intrinsics, mirror_uvd
    from training.evaluate import load_uvd

    from .fitting import fit
    from .model import HandModel
    from .poses import save_pose_file
    from .prior import PosePrior

    cam = NYU_KINECT if args.camera == "nyu" else Intrinsics.from_json(args.camera)
    uvd = load_uvd(args.labels, {"nyu14": 14, "21": 21}[args.joints])[: args.limit]
    if args.camera != "nyu" and _hand(Path(args.camera)) == "left":
        # train-mapping mirrors a left hand's frames and labels into a right hand's: the twins
        # must show that right hand.
        uvd, cam = mirror_uvd(uvd, cam.width), mirror_intrinsics(cam)
    check_writable(args.out)
    xyz = uvd_to_xyz(uvd, cam) / 1000.0
    model = HandModel.load(args.hand_model)
    result = fit(model, PosePrior(model), xyz, args.joints, fit_shape=args.shape, steps=args.steps, progress=True)
    frame_mm = result.residual.mean(1) * 1000
    save_pose_file(args.out, result.poses, transl=result.transl.astype(np.float32),
                   residual_mm=frame_mm.astype(np.float32))
    report = {"frames": len(uvd), "mean_mm": float(result.residual.mean() * 1000),
              "p95_frame_mean_mm": float(np.percentile(frame_mm, 95)),
              "per_joint_mm": np.round(result.residual.mean(0) * 1000, 2).tolist(),
              "within_limits": bool(PosePrior(model).within_limits(result.poses.hand_pose).all()),
              "hand_model": model.name, "fit_shape": args.shape, "steps": args.steps}
    print(json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="hand-model", description=__doc__.split("\n")[0])
    parser.add_argument("--hand-model", default="open", help='"open" (built-in) or a MANO .pkl/.npz path')
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample poses from the prior and draw them")
    demo.add_argument("--out", type=Path, default=Path("docs/hand_poses.png"))
    demo.add_argument("--count", type=positive_int, default=8)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    f = sub.add_parser("fit", help="fit poses to uvd joint labels (one frame per line)")
    f.add_argument("labels", type=Path)
    f.add_argument("--out", type=Path, required=True, help="pose library (.npz) to write")
    f.add_argument("--camera", default="nyu",
                   help='"nyu", or a camera JSON {fx, fy, cx, cy, width, height}: the capture.json of the labels\' '
                        'capture, whose "hand": "left" mirrors them into the right hand train-mapping sees')
    f.add_argument("--joints", choices=["nyu14", "21"], default="nyu14")
    f.add_argument("--shape", action="store_true", help="fit shape coefficients too")
    f.add_argument("--steps", type=positive_int, default=300)
    f.add_argument("--limit", type=positive_int, help="fit only the first N frames (default: all)")
    args = parser.parse_args(argv)
    try:
        {"demo": _demo, "fit": _fit}[args.command](args)
    except (ValueError, WriteError) as err:
        print(f"hand-model: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
