"""inspect-shards: check a render-hands dataset or a real capture, summarise it, and draw it.

    inspect-shards PATH [PATH ...] [--out DIR]

PATH is a render-hands output folder (manifest.json), a capture folder (capture.json) or a folder
holding capture folders. Everything is checked before anything is trusted:

- shards: counts and sha256 against the manifest, sample i under key i in manifest order (no
  sample missing or repeated), every depth PNG decodes at 16 bits, label
  shapes, finite positive depths, joints inside the image, xyz agreeing with uvd, windows inside
  the frame; extra views likewise;
- captures: capture.json, every frame decodes, a hand is found in every frame at a plausible
  distance and size (the depth-unit check), labels inside the image.

Each problem is printed as `NAME: problem` and the exit status is 1 if there was any. Pictures
(written atomically into --out): a contact sheet per input with joints (captures: the detected
hand, its centre and the crop square), the 128x128 network inputs of every input side by side
(synthetic next to real when both are given), and histograms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hand_models.joints import JOINT_NAMES, JOINT_PARENTS
from render.arguments import say
from render.atomic import WriteError, check_writable
from render.camera import Intrinsics, uvd_to_xyz, xyz_to_uvd
from render.shards import MANIFEST, decode_depth_png, iter_shard, read_manifest, sample_key, sha256_file
from training.captures import CaptureError, implausible, load_capture, mirror_intrinsics
from training.crop import Crop, crop_hand, crop_shard_sample
from training.data import DataError, check_rig
from training.localize import centre_from_labels
from training.figures import save_figure

PREVIEWS = 16
MAX_PROBLEMS_SHOWN = 20


@dataclass
class Preview:
    name: str
    depth: np.ndarray                 # mm; a window of the full frame at `origin`, or the full frame
    origin: tuple[int, int]
    joints_uvd: np.ndarray | None     # full-frame uvd
    joint_set: str | None             # "21" or "nyu14"
    crop: Crop
    detected_mask: np.ndarray | None = None
    detected_centre: np.ndarray | None = None


@dataclass
class Report:
    kind: str                         # "synthetic" or "real"
    path: Path
    frames: int = 0
    problems: list[str] = field(default_factory=list)
    stats: dict[str, str] = field(default_factory=dict)
    previews: list[Preview] = field(default_factory=list)
    centre_depths: list[float] = field(default_factory=list)
    flexion_deg: list[np.ndarray] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


# ---------------------------------------------------------------------------------- statistics
def flexion_angles(xyz21: np.ndarray) -> np.ndarray:
    """Bend (degrees) at every 21-joint joint that has a parent and a child: 0 = straight."""
    children = {p: j for j, p in enumerate(JOINT_PARENTS) if p > 0}
    joints = sorted(children)
    a = xyz21[joints] - xyz21[[JOINT_PARENTS[j] for j in joints]]
    b = xyz21[[children[j] for j in joints]] - xyz21[joints]
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1)))


FLEXION_JOINTS = tuple(JOINT_NAMES[j] for j in sorted({p for p in JOINT_PARENTS if p > 0}))


def _range(values, fmt: str = "{:.0f}") -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "n/a"
    p = np.percentile(v, [0, 50, 100])
    return f"min {fmt.format(p[0])}, median {fmt.format(p[1])}, max {fmt.format(p[2])}"


# ------------------------------------------------------------------------------------- shards
def _check_labels(where: str, label: dict, cam: Intrinsics, joints: int, depth: np.ndarray | None,
                  report: Report) -> bool:
    ok = True
    for key, n in (("joints_uvd", joints), ("joints_xyz", joints), ("nyu14_uvd", 14)):
        arr = np.asarray(label.get(key, []), dtype=float)
        if arr.shape != (n, 3) or not np.all(np.isfinite(arr)):
            report.problem(f"{where}: {key} has shape {arr.shape}, expected ({n}, 3) finite numbers")
            return False
    uvd = np.asarray(label["joints_uvd"], float)
    xyz = np.asarray(label["joints_xyz"], float)
    nyu = np.asarray(label["nyu14_uvd"], float)
    both = np.concatenate([uvd, nyu])
    if np.any(both[:, 2] <= 0):
        report.problem(f"{where}: joint depth not positive")
        ok = False
    outside = cam.outside(both)
    if outside.any():
        report.problem(f"{where}: {outside.sum()} joints outside the {cam.width}x{cam.height} image")
        ok = False
    if np.abs(xyz_to_uvd(xyz, cam) - uvd).max() > 0.05:
        report.problem(f"{where}: joints_xyz does not project to joints_uvd")
        ok = False
    origin = label.get("crop_origin")
    if depth is not None:
        if not (isinstance(origin, list) and len(origin) == 2):
            report.problem(f"{where}: crop_origin missing or malformed")
            return False
        u0, v0 = origin
        h, w = depth.shape
        if u0 < 0 or v0 < 0 or u0 + w > cam.width or v0 + h > cam.height:
            report.problem(f"{where}: depth window {w}x{h} at {origin} leaves the image")
            ok = False
        if "crop_size" in label and list(label["crop_size"]) != [w, h]:
            report.problem(f"{where}: crop_size {label['crop_size']} but the PNG is {w}x{h}")
            ok = False
        if not (depth > 0).any():
            report.problem(f"{where}: depth window is empty")
            ok = False
    return ok


def inspect_shards(root: Path, progress: bool = True) -> Report:
    report = Report("synthetic", root)
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        report.problem(str(err))
        return report
    try:
        cam = Intrinsics.from_dict(manifest["intrinsics"])
        joints = len(manifest["joint_names"])
        records = manifest["shards"]
        declared = int(manifest["count"])
    except (KeyError, TypeError, ValueError) as err:
        report.problem(f"{root / MANIFEST}: malformed manifest ({err})")
        return report
    if sum(r["count"] for r in records) != declared:
        report.problem(f"{root / MANIFEST}: count {declared} but its shards hold {sum(r['count'] for r in records)}")
    listed = {r["name"] for r in records}
    for extra in sorted(p.name for p in root.glob("*.tar") if p.name not in listed):
        report.problem(f"{root / extra}: shard not in the manifest")
    wanted = set(np.linspace(0, max(declared - 1, 0), min(PREVIEWS, declared)).astype(int).tolist())
    depths, spans, windows, sensors, poses = [], [], [], set(), []
    bar = tqdm(total=declared, desc=f"checking {root.name}", unit="sample", disable=not progress)
    index = 0
    starts = np.cumsum([0] + [r["count"] for r in records])   # sample i is key i, in manifest order
    for record, first in zip(records, starts):
        path = root / record["name"]
        if not path.is_file():
            report.problem(f"{path}: missing")
            continue
        if sha256_file(path) != record["sha256"]:
            report.problem(f"{path}: sha256 differs from the manifest (corrupted or replaced)")
        seen, in_order = 0, True
        try:
            for key, files in iter_shard(path):
                due = int(first) + seen
                seen += 1
                where = f"{record['name']}:{key}"
                if in_order and key != sample_key(due):   # once per shard: one gap shifts every later key
                    report.problem(f"{path}: sample {key} where {sample_key(due)} is due (samples missing, repeated or "
                                   "out of order: shards of different runs?)")
                    in_order = False
                report.frames += 1
                bar.update()
                index += 1
                sample = _check_sample(where, files, cam, joints, report)
                if sample is None:
                    continue
                xyz = np.asarray(sample["joints_xyz"], float)
                report.centre_depths.append(float(np.asarray(sample["nyu14_uvd"])[13, 2]))
                report.flexion_deg.append(flexion_angles(xyz) if joints == 21 else np.zeros(0))
                poses.append(xyz - xyz.mean(axis=0))
                valid = sample["depth"][sample["depth"] > 0]
                depths.append((valid.min(), valid.max()))
                spans.append(float(np.ptp(xyz[:, 2])))
                windows.append(sample["depth"].shape)
                sensors.add(str(sample.get("sensor")))
                if index - 1 in wanted:
                    report.previews.append(Preview(
                        name=where, depth=sample["depth"].astype(np.float32), origin=tuple(sample["crop_origin"]),
                        joints_uvd=np.asarray(sample["joints_uvd"], float), joint_set="21" if joints == 21 else None,
                        crop=crop_shard_sample(sample)))
        except (tarfile.TarError, OSError, EOFError) as err:
            report.problem(f"{path}: unreadable tar after {seen} of its {record['count']} samples ({err})")
        else:   # (the manifest's total against its records is checked above; with them, each shard's)
            if seen != record["count"]:
                report.problem(f"{path}: {seen} samples but the manifest says {record['count']}")
    bar.close()
    if poses:
        d = np.array(depths)
        spread = np.linalg.norm(np.std(np.array(poses), axis=0), axis=1).mean()
        report.stats = {
            "samples": f"{report.frames} in {len(records)} shards",
            "sensor": ", ".join(sorted(sensors)),
            "depth range (mm)": f"{d[:, 0].min():.0f} to {d[:, 1].max():.0f}",
            "hand distance, palm centre (mm)": _range(report.centre_depths),
            "hand depth extent, joints (mm)": _range(spans),
            "window size (px)": f"{min(w[1] for w in windows)}x{min(w[0] for w in windows)} to "
                                f"{max(w[1] for w in windows)}x{max(w[0] for w in windows)}",
            "pose spread (mean per-joint std about the joint centroid, mm)": f"{spread:.1f}",
        }
        if joints == 21:
            flex = np.array(report.flexion_deg)
            for name, col in zip(FLEXION_JOINTS, flex.T):
                report.stats[f"flexion {name} (deg)"] = _range(col)
    return report


def _check_sample(where: str, files: dict[str, bytes], cam: Intrinsics, joints: int, report: Report) -> dict | None:
    missing = [ext for ext in ("depth.png", "json") if ext not in files]
    if missing:
        report.problem(f"{where}: missing {', '.join(missing)}")
        return None
    try:
        label = json.loads(files["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        report.problem(f"{where}.json: not JSON ({err})")
        return None
    if not isinstance(label, dict):
        report.problem(f"{where}.json: not a JSON object")
        return None
    try:
        depth = decode_depth_png(files["depth.png"])
    except (OSError, SyntaxError, ValueError) as err:
        report.problem(f"{where}.depth.png: {err}")
        return None
    try:
        return _check_label_and_views(where, label, files, depth, cam, joints, report)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        report.problem(f"{where}.json: malformed label ({type(err).__name__}: {err})")
        return None


def _check_label_and_views(where: str, label: dict, files: dict[str, bytes], depth: np.ndarray, cam: Intrinsics,
                           joints: int, report: Report) -> dict | None:
    if label.get("intrinsics") is not None and Intrinsics.from_dict(label["intrinsics"]) != cam:
        report.problem(f"{where}: intrinsics differ from the manifest")
        return None
    if not _check_labels(where, label, cam, joints, depth, report):
        return None
    for view in label.get("views", []):
        name = f"depth.view{view.get('view')}.png"
        if name not in files:
            report.problem(f"{where}: missing {name}")
            return None
        try:
            view_depth = decode_depth_png(files[name])
        except (OSError, SyntaxError, ValueError) as err:
            report.problem(f"{where}.{name}: {err}")
            return None
        if not _check_labels(f"{where} view {view.get('view')}", view, cam, joints, view_depth, report):
            return None
    label["depth"] = depth
    return label


# ----------------------------------------------------------------------------------- captures
def inspect_capture(root: Path, progress: bool = True) -> Report:
    report = Report("real", root)
    try:
        cap = load_capture(root, check_units=False)
    except CaptureError as err:
        report.problem(str(err))
        return report
    cam = cap.intrinsics
    if cap.labels_uvd is not None:
        lab = cap.labels_uvd
        outside = cam.outside(lab)
        for i in np.flatnonzero(outside.any(axis=1)):
            report.problem(f"{cap.frames[i]}: {outside[i].sum()} labelled joints outside the image")
    wanted = set(np.linspace(0, len(cap) - 1, min(PREVIEWS, len(cap))).astype(int).tolist())
    near, palm, depth_lo, depth_hi, offsets, odd, centres = [], [], [], [], [], [], []
    for i in tqdm(range(len(cap)), desc=f"checking {root.name}", unit="frame", disable=not progress):
        report.frames += 1
        try:
            depth = cap.depth_mm(i)
            loc = cap.locate(i)
        except CaptureError as err:
            report.problem(str(err))
            continue
        centres.append((i, loc.centre_uvd))   # not loc: its full-frame mask, for every frame
        if implausible(loc):
            odd.append((i, loc))
            continue
        near.append(loc.near_mm)
        palm.append(loc.palm_width_mm)
        report.centre_depths.append(float(loc.centre_uvd[2]))
        hand = depth[loc.mask]
        depth_lo.append(hand.min())
        depth_hi.append(hand.max())
        labels = None if cap.labels_uvd is None else cap.labels_uvd[i]
        if labels is not None:
            label_centre = centre_from_labels(labels, cap.label_joints, cam)
            offsets.append(float(np.linalg.norm(uvd_to_xyz(loc.centre_uvd, cam) - uvd_to_xyz(label_centre, cam))))
        if i in wanted:
            report.previews.append(Preview(
                name=f"{root.name}/{cap.frames[i].name}", depth=depth, origin=(0, 0), joints_uvd=labels,
                joint_set=cap.label_joints, crop=crop_hand(depth, cam, loc.centre_uvd, labels),
                detected_mask=loc.mask, detected_centre=loc.centre_uvd))
    if not near and not odd:
        try:
            hint = cap.scale_hint(list(range(len(cap))))
        except CaptureError:   # frames that do not decode, each reported above
            hint = ""
        if hint:
            report.problem(f"{root}: no hand found in any frame{hint}")
    for view in cap.views:   # training refuses a rig whose hand lies behind a view camera
        try:
            check_rig(cap, view, centres)
        except DataError as err:
            report.problem(str(err))
    for i, loc in odd:
        if len(near) >= len(odd):
            # Most frames' hands are of a hand's size, so the unit is right and these are detections.
            report.problem(f"{cap.frames[i]}: the detected hand is implausible ({', '.join(implausible(loc))}) while "
                           f"most frames' are not: the detector probably merged it with the arm, body or table, "
                           f"or saw it edge-on")
            continue
        try:
            cap.check_location(i, loc)
        except CaptureError as err:
            report.problem(str(err))
    own = mirror_intrinsics(cam) if cap.mirrored else cam   # mirroring is its own inverse
    report.stats = {
        "frames": f"{len(cap)} ({cap.sensor or 'sensor not named'}; {cap.hand} hand"
                  f"{', mirrored to right' if cap.mirrored else ''})",
        "intrinsics": f"fx {own.fx:g} fy {own.fy:g} cx {own.cx:g} cy {own.cy:g}, {own.width}x{own.height}"
                      f"{' (capture.json; the pictures show the mirrored frames)' if cap.mirrored else ''}",
        "depth unit": f"{cap.depth_scale_mm:g} mm ({cap.depth_encoding or 'npy'})",
        "hand depth range (mm)": f"{min(depth_lo):.0f} to {max(depth_hi):.0f}" if depth_lo else "n/a",
        "hand distance, detected centre (mm)": _range(report.centre_depths),
        "palm width (mm)": _range(palm),
        "labels": f"{cap.label_joints}, {len(cap.labels_uvd)} frames" if cap.labels_uvd is not None else "none",
    }
    if offsets:
        report.stats["detected centre to labelled palm centre (mm)"] = _range(offsets, "{:.1f}")
    return report


# ----------------------------------------------------------------------------------- pictures
def _draw_joints(ax, uv: np.ndarray, joint_set: str | None) -> None:
    if joint_set == "21" and len(uv) == 21:
        for j, p in enumerate(JOINT_PARENTS):
            if p >= 0:
                ax.plot(uv[[p, j], 0], uv[[p, j], 1], "-", color="yellow", lw=1)
    ax.plot(uv[:, 0], uv[:, 1], ".", color="red", ms=4)


def contact_sheet(report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt

    n = len(report.previews)
    cols = min(4, n)
    rows = -(-n // cols)
    size = 4.0 if cols > 1 else 6.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, 0.85 * size * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, pv in zip(axes.ravel(), report.previews):
        d = np.where(pv.depth > 0, pv.depth, np.nan)
        u0, v0 = pv.origin
        h, w = pv.depth.shape
        lo, hi = np.nanpercentile(d, [1, 99]) if np.isfinite(d).any() else (0, 1)
        if pv.detected_centre is not None:
            hi = min(hi, pv.detected_centre[2] + 400)
        ax.imshow(d, cmap="gray", vmin=lo, vmax=hi, extent=(u0 - 0.5, u0 + w - 0.5, v0 + h - 0.5, v0 - 0.5))
        if pv.detected_mask is not None:
            overlay = np.zeros((*pv.detected_mask.shape, 4))
            overlay[pv.detected_mask] = (1.0, 0.5, 0.0, 0.45)
            ax.imshow(overlay, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        geo = pv.crop.geometry
        s = geo.size - 0.5
        corners = np.array([[-0.5, -0.5], [s, -0.5], [s, s], [-0.5, s], [-0.5, -0.5]])
        frame = geo.virtual_to_frame_uv((corners - (geo.size - 1) / 2) * geo.pixel_step + geo.centre_uv)
        ax.plot(frame[:, 0], frame[:, 1], "-", color="cyan", lw=1)
        if pv.joints_uvd is not None:
            _draw_joints(ax, pv.joints_uvd, pv.joint_set)
        if pv.detected_centre is not None:
            ax.plot(*pv.detected_centre[:2], "+", color="lime", ms=14, mew=2)
        ax.set_title(pv.name, fontsize=8)
    fig.suptitle(f"{report.path} ({report.kind})\ndepth, joints (red), crop cube (cyan)"
                 + (", detected hand (orange) and centre (green)" if report.kind == "real" else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def network_inputs(reports: list[Report], path: Path, per_row: int = 8) -> None:
    """The 128x128 crops the network sees, one row per input, synthetic rows first."""
    import matplotlib.pyplot as plt

    rows = [r for r in sorted(reports, key=lambda r: r.kind != "synthetic") if r.previews]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.7 * per_row, 1.9 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in zip(rows, axes):
        for ax, pv in zip(row, r.previews[:per_row]):
            ax.imshow(pv.crop.image, cmap="gray", vmin=-1, vmax=1)
            if pv.crop.labels is not None:
                xy = pv.crop.geometry.frame_to_crop_px(pv.joints_uvd)
                ax.plot(xy[:, 0], xy[:, 1], ".", color="red", ms=2)
        row[0].set_title(f"{r.kind}: {r.path.name}", fontsize=8, loc="left")
    fig.suptitle("network inputs (normalised depth, -1 near to +1 far plane)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def histograms(reports: list[Report], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for r in reports:
        label = f"{r.kind}: {r.path.name}"
        if r.centre_depths:
            axes[0].hist(r.centre_depths, bins=30, alpha=0.5, label=label)
        values = np.concatenate([pv.crop.image[pv.crop.image < 1].ravel() for pv in r.previews] or [np.zeros(0)])
        if values.size:
            axes[1].hist(values, bins=60, range=(-1, 1), density=True, alpha=0.5, label=label)
        if r.flexion_deg and r.flexion_deg[0].size:
            axes[2].hist(np.concatenate(r.flexion_deg), bins=45, range=(0, 180), alpha=0.5, label=label)
    axes[0].set_xlabel("hand distance (mm)")
    axes[1].set_xlabel("normalised depth of hand pixels in the crops")
    axes[2].set_xlabel("joint flexion (deg), 21-joint labels")
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def write_pictures(reports: list[Report], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"{out}: cannot write ({err.strerror or err})") from None
    written = []
    for r in reports:
        if r.previews:
            # Named for the folder; two folders of one name (day1/seq_a, day2/seq_a) get a number.
            stem, k = f"contact_sheet_{r.kind}_{r.path.resolve().name}", 1
            p = out / f"{stem}.png"
            while p in written:
                k += 1
                p = out / f"{stem}_{k}.png"
            contact_sheet(r, p)
            written.append(p)
    if any(r.previews for r in reports):
        for name, draw in (("network_inputs.png", network_inputs), ("histograms.png", histograms)):
            draw(reports, out / name)
            written.append(out / name)
    return written


# ---------------------------------------------------------------------------------------- CLI
def find_inputs(path: Path) -> list[tuple[str, Path]]:
    """(kind, folder) for a dataset, a capture, or a folder of captures."""
    if (path / MANIFEST).is_file():
        return [("synthetic", path)]
    if (path / "capture.json").is_file():
        return [("real", path)]
    return [("real", p.parent) for p in sorted(path.rglob("capture.json"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inspect-shards", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="render-hands output, capture folder, or folder of captures")
    p.add_argument("--out", type=Path, help="folder for the pictures (default: ./inspect-NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    # A manifest.json or capture.json stands for its folder.
    args.paths = [p.parent if p.name in (MANIFEST, "capture.json") and p.is_file() else p for p in args.paths]
    inputs = []
    for path in args.paths:
        found = find_inputs(path) if path.is_dir() else []
        if not found:
            sliced = path.is_dir() and any(path.glob("manifest.slice-*-of-*.json"))
            print(f"inspect-shards: error: {path}: " + ("slices of a dataset not merged yet (render-hands merge "
                  f"{path} [SLICE_DIR ...] writes its manifest.json)" if sliced else
                  "no manifest.json or capture.json here"), file=sys.stderr)
            return 2
        inputs += found
    out = args.out or Path(f"inspect-{args.paths[0].resolve().name}")
    inside = next((path for _, path in inputs if path.resolve() == out.resolve()), None)
    if inside is not None:   # its pictures would become frames of a capture
        print(f"inspect-shards: error: {out}: is an input folder ({inside}); give --out another folder", file=sys.stderr)
        return 2
    try:
        check_writable(out, folder=True)   # before the checks, which read every sample
    except WriteError as err:
        if args.out is not None:
            print(f"inspect-shards: error: {err}", file=sys.stderr)
            return 2
        # Only the default folder (in a working directory one may not write): check all the same.
        print(f"inspect-shards: no pictures: {err}; give --out", file=sys.stderr)
        out = None
    reports = [inspect_shards(path, not args.quiet) if kind == "synthetic" else inspect_capture(path, not args.quiet)
               for kind, path in inputs]
    for r in reports:
        say(f"\n== {r.path} ({r.kind}): {r.frames} frames, "
             f"{'OK' if not r.problems else f'{len(r.problems)} problem(s)'}")
        for key, value in r.stats.items():
            say(f"  {key}: {value}")
    try:
        written = write_pictures(reports, out) if out is not None else []
    except WriteError as err:   # the checks above still stand; their problems are listed below
        print(f"inspect-shards: error: {err}", file=sys.stderr)
        written = None
    if written:
        say(f"\npictures: {', '.join(str(w) for w in written)}")
    problems = [msg for r in reports for msg in r.problems]
    for msg in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"inspect-shards: {msg}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"inspect-shards: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)
    return 2 if written is None else 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
