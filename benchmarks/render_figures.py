"""Pictures for docs/rendering.md: frames with joints, clean vs kinect, the three views.

    python benchmarks/render_figures.py [--out docs]        # writes OUT/render_*.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from hand_models.joints import JOINT_PARENTS
from render.atomic import WriteError, check_writable
from render.dataset import RenderConfig, Synthesizer
from render.shards import decode_depth_png
from training.figures import save_figure

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _frame(files: dict, ext: str, label: dict, cam) -> np.ndarray:
    """The full 640x480 frame with the window pasted at its crop origin (0 = no depth)."""
    window = decode_depth_png(files[ext])
    frame = np.zeros((cam.height, cam.width), np.uint16)
    u0, v0 = label["crop_origin"]
    frame[v0:v0 + window.shape[0], u0:u0 + window.shape[1]] = window
    return frame


def _show(ax, frame: np.ndarray, label: dict, zoom: bool = True, joints: bool = True) -> None:
    shown = np.where(frame > 0, frame, np.nan).astype(float)
    ax.imshow(shown, cmap="viridis_r")
    uvd = np.asarray(label["joints_uvd"])
    if joints:
        for j, parent in enumerate(JOINT_PARENTS):
            if parent >= 0:
                ax.plot(uvd[[parent, j], 0], uvd[[parent, j], 1], "-", color="w", lw=0.8)
        ax.scatter(uvd[:, 0], uvd[:, 1], s=6, c="r", zorder=3)
    if zoom:
        u0, v0 = label["crop_origin"]
        w, h = label["crop_size"]
        ax.set_xlim(u0 - 5, u0 + w + 5)
        ax.set_ylim(v0 + h + 5, v0 - 5)
    ax.set_xticks([])
    ax.set_yticks([])


def grid(out: Path, n: int = 12) -> Path:
    cfg = RenderConfig(n=n, seed=1)
    synth = Synthesizer(cfg)
    samples = list(synth.samples(0, n))
    fig, axes = plt.subplots(3, 4, figsize=(12, 9))
    for ax, (key, files) in zip(axes.flat, samples):
        import json
        label = json.loads(files["json"])
        _show(ax, _frame(files, "depth.png", label, cfg.camera), label)
        ax.set_title(f"{key}: palm at {label['nyu14_uvd'][-1][2]:.0f} mm", fontsize=8)
    fig.suptitle("render-hands --seed 1: depth windows (mm) with the 21 joint labels")
    fig.tight_layout()
    save_figure(fig, out / "render_grid.png", dpi=90)
    return out / "render_grid.png"
    synth.close()


def clean_vs_kinect(out: Path, n: int = 3) -> Path:
    import json
    fig, axes = plt.subplots(2, n, figsize=(4 * n, 8))
    for row, sensor in enumerate(("clean", "kinect")):
        synth = Synthesizer(RenderConfig(n=n, seed=2, sensor=sensor))
        for col, (key, files) in enumerate(synth.samples(0, n)):
            label = json.loads(files["json"])
            _show(axes[row, col], _frame(files, "depth.png", label, synth.config.camera), label, joints=False)
            axes[row, col].set_title(f"{key} --sensor {sensor}", fontsize=9)
        synth.close()
    fig.suptitle("The same samples (same seed): exact depth vs Kinect v1 artefacts")
    fig.tight_layout()
    save_figure(fig, out / "render_clean_vs_kinect.png", dpi=90)
    return out / "render_clean_vs_kinect.png"


def three_views(out: Path) -> Path:
    import json
    synth = Synthesizer(RenderConfig(n=2, seed=3, views=3))
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, (key, files) in enumerate(synth.samples(0, 2)):
        label = json.loads(files["json"])
        views = [label] + label["views"]
        for col, view in enumerate(views):
            ext = "depth.png" if col == 0 else f"depth.view{col}.png"
            _show(axes[row, col], _frame(files, ext, view, synth.config.camera), view)
            axes[row, col].set_title(f"{key} view {col} ({view['view_name']})", fontsize=9)
    fig.suptitle("--views 3: one pose seen by the front, top and side cameras (windows around the hand)")
    fig.tight_layout()
    save_figure(fig, out / "render_views.png", dpi=80)
    return out / "render_views.png"
    synth.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs (default: docs/)")
    out = p.parse_args().out
    try:
        check_writable(out, folder=True)
    except WriteError as err:
        sys.exit(f"render_figures.py: error: {err}")
    out.mkdir(parents=True, exist_ok=True)
    written = [draw(out) for draw in (grid, clean_vs_kinect, three_views)]
    print("wrote", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
