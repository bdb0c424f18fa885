"""Hand model figures: pose-sampler rate, fitting residual on NYU test labels, the NYU-frame fit.

    python benchmarks/hand_model.py [--frames 8252] [--steps 300] [--only sampler|fit]

Writes the "hand model: sampler" and "hand model: fitting" sections of docs/benchmarks.md,
docs/nyu_fit.png and, with --poses-out, the fitted pose library (real NYU hand poses the
renderer can sample with --poses).
"""

from __future__ import annotations

import os
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BENCHMARKS_MD, check_outputs, command_line, machine, write_section  # noqa: E402
from render.arguments import OneLineParser, positive_int  # noqa: E402

from hand_models.fitting import fit  # noqa: E402
from hand_models.model import HandModel  # noqa: E402
from hand_models.poses import save_pose_file  # noqa: E402
from hand_models.prior import PosePrior  # noqa: E402
from render.camera import NYU_KINECT, uvd_to_xyz, xyz_to_uvd  # noqa: E402
from training.figures import save_figure  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def sampler_rate(prior: PosePrior, n: int = 5000) -> float:
    prior.sample(200, np.random.default_rng(0))  # warm-up
    t = time.perf_counter()
    prior.sample(n, np.random.default_rng(1))
    return n / (time.perf_counter() - t)


def draw_nyu_fit(model: HandModel, prior: PosePrior, out: Path) -> float:
    """Fit the labelled real NYU frame and overlay the fitted mesh and joints on its depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from training.captures import load_capture

    capture = load_capture(SHARED / "real_samples" / "nyu")
    depth = capture.depth_mm(0)
    labels = capture.labels_uvd[0]
    result = fit(model, prior, uvd_to_xyz(labels, NYU_KINECT)[None] / 1000.0, "nyu14", fit_shape=True, steps=400)
    with torch.no_grad():
        o = model(*(torch.from_numpy(np.asarray(x, np.float32)) for x in (
            result.poses.hand_pose, result.poses.betas, result.poses.global_orient, result.transl)))
    verts = xyz_to_uvd(o.vertices[0].numpy() * 1000, NYU_KINECT)
    fitted = xyz_to_uvd(o.nyu14[0].numpy() * 1000, NYU_KINECT)
    u0, v0 = labels[:, :2].min(0) - 60
    u1, v1 = labels[:, :2].max(0) + 60
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, mesh in zip(axes, (False, True)):
        ax.imshow(np.where(depth > 0, depth, np.nan), cmap="gray_r", vmin=650, vmax=950)
        if mesh:
            tri = verts[model.faces]
            ax.add_collection(PolyCollection(tri[:, :, :2], facecolors=(1, 0.5, 0, 0.25), edgecolors="none"))
        ax.plot(labels[:, 0], labels[:, 1], "c+", ms=10, mew=2, label="NYU labels")
        ax.plot(fitted[:, 0], fitted[:, 1], "r.", ms=8, label="fitted open hand (NYU-14)")
        ax.set_xlim(u0, u1)
        ax.set_ylim(v1, v0)
        ax.axis("off")
    axes[0].legend(loc="lower left", fontsize=8)
    err = float(result.residual.mean() * 1000)
    fig.suptitle(f"Open hand fitted to NYU test frame 1 (camera 1): mean NYU-14 residual {err:.1f} mm")
    fig.tight_layout()
    save_figure(fig, out, dpi=90)
    return err


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=positive_int, default=8252, help="NYU test frames to fit (all 8252 by default)")
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--poses-out", type=Path, help="also save the fitted pose library here")
    parser.add_argument("--only", choices=["sampler", "fit"], help="refresh one section only")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave docs/benchmarks.md and docs/nyu_fit.png alone")
    args = parser.parse_args()
    if not args.no_write:
        check_outputs(BENCHMARKS_MD, DOCS / "nyu_fit.png")
    if args.poses_out:
        check_outputs(args.poses_out)
    torch.manual_seed(0)
    model = HandModel.load("open")
    prior = PosePrior(model)
    if args.only != "fit":
        rate = sampler_rate(prior)
        if not args.no_write:
            write_section("hand model: sampler", f"""## Hand model: pose sampler (`{command_line()}`)

Machine: {machine()}; load average {os.getloadavg()[0]:.1f}. Prior with collision rejection, one process, 5,000 poses: **{rate:.0f} poses/s**.
""")
        print(f"sampler: {rate:.0f} poses/s")
    if args.only == "sampler":
        return
    if not SHARED.is_dir():
        sys.exit(f"hand_model.py: {SHARED} is absent (NYU labels live there)")
    frame_err = draw_nyu_fit(model, prior, Path(tempfile.gettempdir()) / "nyu_fit.png" if args.no_write else DOCS / "nyu_fit.png")

    uvd = np.loadtxt(SHARED / "eval_anchors/nyu/nyu_test_groundtruth_label.txt")[: args.frames]
    xyz = uvd_to_xyz(uvd.reshape(-1, 14, 3), NYU_KINECT) / 1000.0
    rows = []
    for shape in (False, True):
        t = time.perf_counter()
        result = fit(model, prior, xyz, "nyu14", fit_shape=shape, steps=args.steps, progress=True)
        seconds = time.perf_counter() - t
        res = result.residual * 1000
        inside = prior.within_limits(result.poses.hand_pose).mean() * 100
        rows.append(f"| {'pose + shape' if shape else 'pose only'} | {len(xyz)} | {res.mean():.2f} | "
                    f"{np.percentile(res.mean(1), 95):.2f} | {np.percentile(res, 95):.2f} | {inside:.1f} % | {seconds:.0f} s |")
        if shape and args.poses_out:
            save_pose_file(args.poses_out, result.poses, transl=result.transl.astype(np.float32),
                           residual_mm=res.mean(1).astype(np.float32))
    per_joint = " ".join(f"{v:.1f}" for v in res.mean(0))
    body = f"""## Hand model: fitting (`{command_line()}`)

Machine: {machine()}. Open hand `{model.name}`.

- Fit to the labelled real NYU frame in real_samples/nyu: mean NYU-14 residual {frame_err:.1f} mm (docs/nyu_fit.png).

Fitting the open hand to the NYU test ground truth (NYU-14 joints, {args.steps} Adam steps, batched on the CPU):

| fit | frames | mean residual (mm) | 95th pct of frame means (mm) | 95th pct of joint residuals (mm) | poses within the prior's limits | wall time |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Per-joint mean residual with shape (mm, NYU-14 order): {per_joint}.
"""
    if not args.no_write:
        write_section("hand model: fitting", body)
    print(body)


if __name__ == "__main__":
    main()
