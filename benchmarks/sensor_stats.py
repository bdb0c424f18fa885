"""Does the Kinect model look like a Kinect? Hand statistics of the real NYU frame vs synthetic frames.

The same measurement runs on both: hand = pixels within 150 mm of the nearest valid depth, largest
8-connected component; then the number of distinct depth values and the median step between them
(disparity quantisation), the residual to a 5x5 median at pixels whose whole 5x5 window lies in the
hand (surface noise, not edges), and the fraction of zero pixels inside the filled silhouette
(holes). The synthetic hand is ray-cast analytically (an ellipsoid palm, sphere-swept fingers and a
forearm stub) with NYU intrinsics at NYU's distances, an open hand like the NYU frame's; a
further column measures the project's rendered hand in random prior poses (self-occlusion).

    python benchmarks/sensor_stats.py [--frames 20] [--rendered 32] [--figure docs/sensor_kinect.png]
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import check_outputs  # noqa: E402
from render.arguments import OneLineParser, non_negative_int, positive_int  # noqa: E402
from render.camera import NYU_KINECT, Intrinsics  # noqa: E402
from render.sensor import KINECT_V1, _tiles, apply_sensor  # noqa: E402
from training.figures import save_figure  # noqa: E402

NYU_NO_DEPTH = 2001  # NYU's frames hold 2001 where the sensor gave no depth (none are 0)
NYU_FRAME = Path(__file__).resolve().parents[1].parent / "shared/real_samples/nyu/depth_1_0000001.png"
DOCS_FIGURE = Path(__file__).resolve().parents[1] / "docs" / "sensor_kinect.png"


def load_nyu_depth(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return rgb[..., 1].astype(np.int64) * 256 + rgb[..., 2]


def hand_mask(depth_mm: np.ndarray, band_mm: int = 150) -> np.ndarray:
    valid = depth_mm > 0
    near = depth_mm[valid].min()
    labels, n = ndi.label(valid & (depth_mm <= near + band_mm), structure=np.ones((3, 3)))
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def hand_stats(depth_mm: np.ndarray) -> dict[str, float]:
    hand = hand_mask(depth_mm)
    values = depth_mm[hand]
    distinct = np.unique(values)
    median = ndi.median_filter(depth_mm, size=5)
    interior = ndi.binary_erosion(hand, structure=np.ones((5, 5)))
    residual = (depth_mm - median)[interior]
    # A hole is any pixel the silhouette encloses that is not hand: 0 in our frames, NYU's no-depth
    # value 2001 in the real one.
    silhouette = ndi.binary_fill_holes(hand)
    return {
        "near_mm": float(values.min()),
        "far_mm": float(values.max()),
        "pixels": float(hand.sum()),
        "distinct": float(len(distinct)),
        "distinct_per_100mm": 100.0 * len(distinct) / (values.max() - values.min() + 1),
        "median_step_mm": float(np.median(np.diff(distinct))),
        "residual_std_mm": float(residual.std()),
        "hole_pct": 100.0 * float((silhouette & ~hand).sum()) / float(silhouette.sum()),
    }


def edge_gaps(depth_mm: np.ndarray, no_depth: int, fx: float) -> dict[str, float]:
    """How often a row loses depth where it steps between a nearer and a farther surface.

    Along each row, consecutive valid pixels less than 40 px apart whose depths differ by more
    than 50 mm are one discontinuity; it has a gap when no-depth pixels lie between them. A
    projector beside the camera leaves gaps on one side of near objects, as wide as the disparity
    difference b fx (1/z_near - 1/z_far) (ratio with the model's baseline); on the other side
    only edge dropouts do.
    """
    bfx = KINECT_V1.baseline_m * fx * 1000.0
    count = {"right": 0, "left": 0}
    gapped = {"right": 0, "left": 0}
    ratios = []
    for row in depth_mm:
        cols = np.flatnonzero(row != no_depth)
        if cols.size < 2:
            continue
        z = row[cols].astype(np.float64)
        gap = np.diff(cols) - 1
        for k in np.flatnonzero((np.abs(np.diff(z)) > 50) & (gap < 40)):
            side = "right" if z[k] < z[k + 1] else "left"
            count[side] += 1
            gapped[side] += int(gap[k] > 0)
            if side == "right" and gap[k] > 0:
                ratios.append(gap[k] / (bfx * (1 / z[k] - 1 / z[k + 1])))
    return {"right": gapped["right"] / max(count["right"], 1), "left": gapped["left"] / max(count["left"], 1),
            "ratio": float(np.median(ratios)) if ratios else float("nan")}


# --- an analytic hand: spheres and one ellipsoid, ray-cast with exact depth -----------------------

def _rays(cam: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(cam.width) - cam.cx) / cam.fx
    v = (np.arange(cam.height) - cam.cy) / cam.fy
    return np.broadcast_to(u[None, :], (cam.height, cam.width)), np.broadcast_to(v[:, None], (cam.height, cam.width))


def _splat_sphere(depth: np.ndarray, cam: Intrinsics, rx: np.ndarray, ry: np.ndarray,
                  c: np.ndarray, r: float) -> None:
    """z-buffer one sphere (camera mm, OpenCV axes) into depth (mm, 0 = empty)."""
    margin = r / c[2] * max(cam.fx, cam.fy) * 1.3 + 2
    u, v = c[0] / c[2] * cam.fx + cam.cx, c[1] / c[2] * cam.fy + cam.cy
    u0, u1 = int(max(u - margin, 0)), int(min(u + margin + 1, cam.width))
    v0, v1 = int(max(v - margin, 0)), int(min(v + margin + 1, cam.height))
    if u0 >= u1 or v0 >= v1:
        return
    x, y = rx[v0:v1, u0:u1], ry[v0:v1, u0:u1]
    a = x * x + y * y + 1.0
    b = x * c[0] + y * c[1] + c[2]
    disc = b * b - a * (c @ c - r * r)
    hit = disc > 0
    t = np.where(hit, (b - np.sqrt(np.where(hit, disc, 0))) / a, 0)
    window = depth[v0:v1, u0:u1]
    closer = hit & (t > 0) & ((window == 0) | (t < window))
    window[closer] = t[closer]


def _splat_ellipsoid(depth: np.ndarray, rx: np.ndarray, ry: np.ndarray, c: np.ndarray,
                     axes: np.ndarray, semi: np.ndarray) -> None:
    d = np.stack([rx, ry, np.ones_like(rx)], axis=-1) @ axes / semi
    o = -(axes.T @ c) / semi
    a = (d * d).sum(-1)
    b = d @ o
    disc = b * b - a * (o @ o - 1)
    hit = disc > 0
    t = np.where(hit, (-b - np.sqrt(np.where(hit, disc, 0))) / a, 0)
    closer = hit & (t > 0) & ((depth == 0) | (t < depth))
    depth[closer] = t[closer]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rxm = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rym = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rxm @ rym


def synthetic_hand(cam: Intrinsics = NYU_KINECT, centre_mm=(-125.0, 20.0, 783.0),
                   tilt=(0.2, 0.12, 0.1)) -> np.ndarray:
    """Exact depth (metres) of an open right hand facing the camera, forearm receding like NYU's."""
    rx, ry = _rays(cam)
    depth = np.zeros((cam.height, cam.width))
    rot = _rotation(*tilt)  # columns: hand x (thumb side), hand y (wrist -> fingers), hand normal
    centre = np.asarray(centre_mm)
    _splat_ellipsoid(depth, rx, ry, centre, rot, np.array([44.0, 50.0, 15.0]))

    def chain(points: list[np.ndarray], radii: list[float]) -> None:
        for (p, q), (r0, r1) in zip(zip(points[:-1], points[1:]), zip(radii[:-1], radii[1:])):
            n = int(np.ceil(np.linalg.norm(q - p) / (min(r0, r1) / 4))) + 1
            for s in np.linspace(0, 1, n):
                _splat_sphere(depth, cam, rx, ry, p + s * (q - p), r0 + s * (r1 - r0))

    hand = lambda x, y, z: centre + rot @ np.array([x, y, z])  # noqa: E731
    # index, middle, ring, pinky: knuckle x, phalanx lengths, spread and curl per joint (radians)
    for x, lengths, spread, curl, r in [(30, (44, 26, 21), 0.18, 0.12, 8.5), (10, (48, 29, 22), 0.05, 0.15, 8.8),
                                        (-10, (45, 28, 21), -0.08, 0.18, 8.2), (-29, (36, 21, 19), -0.22, 0.22, 7.2)]:
        pts, cur = [np.array([x, -44.0, -2.0])], 0.0
        for length in lengths:
            cur += curl
            pts.append(pts[-1] + length * np.array([np.sin(spread), -np.cos(cur), -np.sin(cur)]))
        chain([hand(*p) for p in pts], [r, r * 0.92, r * 0.84, r * 0.76])
    thumb = [np.array([38.0, 18.0, -6.0]), np.array([62.0, -4.0, -14.0]), np.array([80.0, -28.0, -18.0]),
             np.array([90.0, -50.0, -18.0])]
    chain([hand(*p) for p in thumb], [13.0, 10.5, 9.5, 8.5])
    chain([hand(0, 40, 0), hand(0, 100, 25), hand(0, 230, 100)], [31.0, 28.0, 26.0])  # forearm, receding
    return (depth / 1000.0).astype(np.float32)


def rendered_hands(n: int, seed: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Exact depth windows of the project's own hand (pose prior, forearm) with the palm at 730-800 mm."""
    from render.dataset import RenderConfig, Synthesizer

    synth = Synthesizer(RenderConfig(n=n, seed=seed, distance_mm=(730.0, 800.0)))
    try:
        posed = synth.pose_chunk(0, n)
        depth = synth.render_chunk(posed)
    finally:
        synth.close()
    return [(d[0], (p.windows[0].u0, p.windows[0].v0)) for p, d in zip(posed, depth)]


# --- report --------------------------------------------------------------------------------------

def _time_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    return (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))


def write_figure(path: Path, clean: np.ndarray, kinect: np.ndarray, walled: np.ndarray, real: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    box_s = _bbox(hand_mask(clean), 8)
    box_r = _bbox(hand_mask(real), 8)
    panels = [("synthetic, clean", clean[box_s]), ("synthetic, kinect", kinect[box_s]),
              ("synthetic before a wall, kinect", walled[box_s]), ("real NYU (Kinect v1)", real[box_r])]
    fig, axes = plt.subplots(2, 4, figsize=(16, 9.5), gridspec_kw={"height_ratios": [2.2, 1]})
    for col, (title, img) in enumerate(panels):
        hand = hand_mask(img)
        near = img[hand].min()
        shown = np.ma.masked_where(img == 0, img.astype(float))
        cmap = matplotlib.colormaps["viridis"].copy()
        cmap.set_bad("black")
        axes[0, col].imshow(shown, cmap=cmap, vmin=near, vmax=near + 150, interpolation="nearest")
        axes[0, col].set_title(f"{title}\nnear {near} mm, colour span 150 mm")
        ys, xs = np.nonzero(hand & ndi.binary_erosion(hand, iterations=4))
        cy, cx = int(np.median(ys)), int(np.median(xs))
        zoom = img[cy - 20:cy + 20, cx - 20:cx + 20].astype(float)
        zv = zoom[zoom > 0]
        lo, hi = np.percentile(zv, [2, 98]) if zv.size else (0, 1)
        axes[1, col].imshow(np.ma.masked_where(zoom == 0, zoom), cmap=cmap, vmin=lo, vmax=hi,
                            interpolation="nearest")
        axes[1, col].set_title(f"40x40 px zoom at the palm ({lo:.0f}-{hi:.0f} mm):\nquantisation steps")
        axes[0, col].add_patch(matplotlib.patches.Rectangle((cx - 20, cy - 20), 40, 40, fill=False, ec="red"))
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Depth sensor model: exact render vs Kinect v1 model vs a real NYU frame (black = no depth; "
                 "projector shadows fall right of near surfaces)")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def main() -> None:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=positive_int, default=20, help="synthetic kinect frames (different seeds)")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--rendered", type=non_negative_int, default=32,
                    help="also measure this many frames of the project's hand (render.dataset); 0 = skip")
    ap.add_argument("--figure", type=Path, default=DOCS_FIGURE, help=f"picture to write (default {DOCS_FIGURE})")
    ap.add_argument("--repeats", type=positive_int, default=200, help="timing repeats (median reported)")
    args = ap.parse_args()
    check_outputs(args.figure)

    rng = np.random.default_rng(args.seed)
    exact = synthetic_hand()
    clean = apply_sensor(exact, NYU_KINECT, (0, 0), "clean", rng).astype(np.int64)
    kinect = [apply_sensor(exact, NYU_KINECT, (0, 0), "kinect", rng).astype(np.int64) for _ in range(args.frames)]
    rows = []
    if NYU_FRAME.exists():
        real = load_nyu_depth(NYU_FRAME)
        rows.append(("real NYU frame 1 (Kinect v1)", [hand_stats(real)]))
    else:
        real = None
        print(f"{NYU_FRAME}: absent, real column skipped")
    rows.append(("synthetic, clean", [hand_stats(clean)]))
    rows.append((f"synthetic, kinect ({args.frames} seeds)", [hand_stats(k) for k in kinect]))
    if args.rendered:
        try:
            windows = rendered_hands(args.rendered, args.seed)
        except (ImportError, AttributeError, TypeError, RuntimeError, OSError) as err:  # renderer API moved
            print(f"rendered hands skipped: {err}")
        else:
            rows.append((f"rendered hand, kinect ({args.rendered} prior poses)",
                         [hand_stats(apply_sensor(d, NYU_KINECT, o, "kinect", rng).astype(np.int64))
                          for d, o in windows]))

    keys = [("near_mm", "near mm", 0), ("far_mm", "far mm", 0), ("pixels", "pixels", 0),
            ("distinct", "distinct values", 1), ("distinct_per_100mm", "distinct / 100 mm", 1),
            ("median_step_mm", "median step mm", 1), ("residual_std_mm", "residual std mm", 2),
            ("hole_pct", "holes % of silhouette", 2)]
    print(f"| hand statistic | {' | '.join(name for name, _ in rows)} |")
    print("|---|" + "---|" * len(rows))
    for key, label, digits in keys:
        cells = []
        for _, stats in rows:
            vals = np.array([s[key] for s in stats])
            cells.append(f"{vals.mean():.{digits}f}" + (f" ± {vals.std():.{digits}f}" if len(vals) > 1 else ""))
        print(f"| {label} | {' | '.join(cells)} |")
    before_wall = np.where(exact > 0, exact, np.float32(1.05))
    if real is not None:
        gaps_real = edge_gaps(real, NYU_NO_DEPTH, NYU_KINECT.fx)
        gaps_syn = [edge_gaps(apply_sensor(before_wall, NYU_KINECT, (0, 0), "kinect", rng), 0, NYU_KINECT.fx)
                    for _ in range(args.frames)]
        print("\n| depth steps > 50 mm along rows | real NYU frame 1 | "
              f"synthetic hand before a wall at 1.05 m, kinect ({args.frames} seeds) |\n|---|---|---|")
        for key, label in [("right", "share with no-depth gap, nearer surface on the left"),
                           ("left", "share with no-depth gap, nearer surface on the right"),
                           ("ratio", "median gap width / b fx (1/z_near - 1/z_far), gaps right of the nearer")]:
            vals = np.array([g[key] for g in gaps_syn])
            print(f"| {label} | {gaps_real[key]:.2f} | {vals.mean():.2f} ± {vals.std():.2f} |")

    print(f"\nmodel: disparity step {KINECT_V1.disparity_step_px:.3f} px -> depth step "
          f"{1000 * KINECT_V1.depth_step_m(0.8):.2f} mm at 800 mm; parameters {KINECT_V1}")

    hand = hand_mask(clean)
    (vs, us) = _bbox(hand, 0)
    cu, cv = (us.start + us.stop) // 2, (vs.start + vs.stop) // 2
    window = exact[cv - 75:cv + 75, cu - 75:cu + 75]
    _tiles.cache_clear()
    t0 = time.perf_counter()
    tiles = _tiles(KINECT_V1)
    build_ms = 1000 * (time.perf_counter() - t0)
    tile_mb = sum(a.nbytes for a in vars(tiles).values()) / 2**20
    print(f"\ntiming (median of {args.repeats}; {_cpu_name()}, {os.cpu_count()} cores, numpy {np.__version__}); "
          f"one-time noise tiles per process: {build_ms:.0f} ms, {tile_mb:.1f} MiB")
    print("| input | clean ms | kinect ms |\n|---|---|---|")
    flat = np.full((NYU_KINECT.height, NYU_KINECT.width), 0.8, np.float32)
    for label, img, origin in [("150x150 window inside the hand", window, (cu - 75, cv - 75)),
                               ("640x480 frame, the hand (work limited to its bounding box)", exact, (0, 0)),
                               ("640x480 frame, every pixel valid (a wall)", flat, (0, 0))]:
        t_clean = _time_ms(lambda: apply_sensor(img, NYU_KINECT, origin, "clean", rng), args.repeats)
        t_kin = _time_ms(lambda: apply_sensor(img, NYU_KINECT, origin, "kinect", rng), args.repeats)
        print(f"| {label} | {t_clean:.3f} | {t_kin:.3f} |")

    if real is not None and args.figure:
        walled = apply_sensor(before_wall, NYU_KINECT, (0, 0), "kinect", rng).astype(np.int64)
        write_figure(args.figure, clean, kinect[0], walled, np.where(real >= NYU_NO_DEPTH, 0, real))
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
