"""Where the hand is in a depth frame, so an unlabeled real frame can be cropped like a labelled one.

The hand is taken to be the nearest sizeable object to the camera (the usual assumption of depth
hand pose datasets and of the crop-based methods trained on them):

1. Depth discontinuities split the frame into surface patches; patches smaller than a hand's
   palm (metric area, so it does not depend on distance or sensor) are speckles or flying pixels
   and never seed the search.
2. The patch whose near depth is smallest seeds the hand; every measured pixel within a depth
   band behind it and connected to it joins (holes, value 0, are simply absent).
3. The forearm is dropped: an arm enters either across the frame border or by receding to the
   body beyond the band (its surface goes on past the band's far limit), so the hand is the
   object's far end from those pixels along its surface (geodesic distance); what lies within
   `hand_length_mm` of the farthest point, along the surface and in space, is kept. An object
   doing neither is kept whole. The band is narrower than a hand is long, so that a body 10 to
   20 cm behind the hand, as NYU's subjects stand, stays out of the object; the price is a hand
   reaching more than 120 mm in depth (pointing at or away from the camera), which the band cuts
   and whose own surface beyond it counts as an arm's exit.
4. The centre is the palm, the widest part of a hand: the kept pixel deepest inside the
   silhouette (distance transform, holes filled), at the median surface depth around it pushed
   `surface_offset_mm` along the viewing ray (the camera sees the front of the palm; the
   palm-centre joint lies inside).

Alternatives for frames whose centre is known: `centre_from_labels`, and centres files
(`save_centres` / `load_centres`) so a long capture is located once.
All depths are millimetres; 0 means "no measurement".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from hand_models.joints import JOINT_INDEX, NYU14_NAMES, PALM_CENTRE_FRACTION
from render.atomic import write_atomically
from render.camera import Intrinsics, uvd_to_xyz, xyz_to_uvd
from training.evaluate import load_uvd


class LocalizeError(ValueError):
    """No object that could be a hand was found."""


@dataclass(frozen=True)
class LocalizeConfig:
    """Thresholds of the detector; defaults suit hands 0.2 to 2 m from Kinect/RealSense sensors."""

    band_mm: float = 120.0            # depth band behind the nearest point that may belong to the hand
    min_area_mm2: float = 1500.0      # smaller patches are speckles / flying pixels
    near_area_mm2: float = 300.0      # the object's near depth is where this much of it is nearer
    edge_mm: float = 15.0             # depth step that separates two surfaces ...
    edge_rel: float = 0.02            # ... plus this fraction of the depth (sensor noise grows with depth)
    hand_length_mm: float = 200.0     # kept from the object's far end (wrist to fingertip is ~190 mm)
    surface_offset_mm: float = 15.0   # from the palm's visible surface to the palm centre inside
    border_margin: float = 0.08       # an object this close (fraction of height) to the edge enters there
    work_width: int = 320             # frames are analysed at about this width, for speed


@dataclass(frozen=True)
class HandLocation:
    centre_uvd: np.ndarray   # (3,) u, v in full-frame pixels, d in mm
    mask: np.ndarray         # (H, W) bool, the pixels taken as hand (at full resolution)
    near_mm: float           # near depth of the object (see LocalizeConfig.near_area_mm2)
    forearm_dropped: bool    # part of the object was left out as arm
    palm_width_mm: float     # diameter of the largest disc inside the hand silhouette
    hand_area_mm2: float     # metric area of the pixels taken as hand


def _pixel_points(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, cam: Intrinsics,
                  stride: int) -> np.ndarray:
    """Full-frame xyz (mm) of working-resolution pixels."""
    u, v = cols * stride, rows * stride
    return uvd_to_xyz(np.stack([u, v, depth[rows, cols]], axis=-1), cam)


def _geodesic_mm(obj: np.ndarray, rows: np.ndarray, cols: np.ndarray, pts: np.ndarray,
                 sources: np.ndarray) -> np.ndarray:
    """Shortest 3D path length (mm) over the object's pixel grid from any source pixel."""
    node = np.full(obj.shape, -1, dtype=np.int64)
    node[rows, cols] = np.arange(len(rows))
    src, dst = [], []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = node[max(0, -dr):obj.shape[0] - dr, max(0, -dc):obj.shape[1] - max(dc, 0)]
        b = node[dr:, max(0, dc):obj.shape[1] + min(dc, 0)]
        a, b = a[: b.shape[0], : b.shape[1]], b[: a.shape[0], : a.shape[1]]
        both = (a >= 0) & (b >= 0)
        src.append(a[both])
        dst.append(b[both])
    src, dst = np.concatenate(src), np.concatenate(dst)
    weight = np.linalg.norm(pts[src] - pts[dst], axis=1) + 1e-3
    graph = sparse.coo_matrix((weight, (src, dst)), shape=(len(rows), len(rows))).tocsr()
    dist = csgraph.dijkstra(graph, directed=False, indices=np.flatnonzero(sources), min_only=True)
    return np.where(np.isfinite(dist), dist, 0.0)


# Each pixel and its next neighbour along an axis: (earlier, later) slices of a frame.
_PAIRS = (((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
          ((slice(None), slice(None, -1)), (slice(None), slice(1, None))))


def _depth_steps(d: np.ndarray, thr: np.ndarray) -> list[np.ndarray]:
    """Per axis (_PAIRS), whether the depth step between neighbours exceeds the edge threshold at
    the later pixel's depth: the one test of a depth edge, for the patches and the arm's exit."""
    return [np.abs(d[hi] - d[lo]) > thr[hi] for lo, hi in _PAIRS]


def _goes_on_beyond(obj: np.ndarray, d: np.ndarray, valid: np.ndarray, far: float,
                    steps: list[np.ndarray]) -> np.ndarray:
    """The object's pixels where its surface goes on past depth `far` (a 4-neighbour measured
    beyond it, no depth edge between): where an arm leaves the band on its way to the body. Grown
    by two pixels, so that a frayed silhouette still gives a connected start."""
    beyond = valid & (d > far)
    out = np.zeros_like(obj)
    for (lo, hi), step in zip(_PAIRS, steps):
        out[lo] |= obj[lo] & beyond[hi] & ~step
        out[hi] |= obj[hi] & beyond[lo] & ~step
    return ndimage.binary_dilation(out, iterations=2) & obj


def locate_hand(depth_mm: np.ndarray, cam: Intrinsics, config: LocalizeConfig = LocalizeConfig()
                ) -> HandLocation:
    """Find the hand centre in a full frame of depth in mm (0 = no data)."""
    depth_mm = np.asarray(depth_mm)
    if depth_mm.shape != (cam.height, cam.width):
        raise LocalizeError(f"depth is {depth_mm.shape[1]}x{depth_mm.shape[0]} but the camera is "
                            f"{cam.width}x{cam.height}")
    stride = max(1, int(round(cam.width / config.work_width)))
    d = np.nan_to_num(depth_mm[::stride, ::stride].astype(np.float32), nan=0.0, posinf=0.0)
    valid = d > 0
    if not valid.any():
        raise LocalizeError("no depth measurements in the frame")

    # Surface patches: pixels not separated from a 4-neighbour by a depth step.
    thr = config.edge_mm + config.edge_rel * d
    steps = _depth_steps(d, thr)
    edge = np.zeros_like(valid)
    for (lo, hi), step in zip(_PAIRS, steps):
        jump = valid[lo] & valid[hi] & step
        edge[lo] |= jump
        edge[hi] |= jump
    patches, n = ndimage.label(valid & ~edge)
    if n == 0:
        raise LocalizeError("no smooth surface in the frame (only isolated pixels)")
    # Metric area of each pixel: (stride * z / fx) * (stride * z / fy).
    pix_area = (stride * stride) * d * d / (cam.fx * cam.fy)
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(pix_area, patches, idx)
    big = idx[area >= config.min_area_mm2]
    if big.size == 0:
        raise LocalizeError(f"no object of at least {config.min_area_mm2:.0f} mm^2 in the frame")
    # Near depth of each sizeable patch: where its area, sorted by depth, first reaches
    # near_area_mm2 (a fingertip's worth), so stray pixels and patch size do not move it.
    order = np.lexsort((d.ravel(), patches.ravel()))
    flat_labels = patches.ravel()[order]
    flat_depth = d.ravel()[order]
    flat_area = pix_area.ravel()[order]
    near = np.empty(len(big))
    for k, lab in enumerate(big):
        s, e = np.searchsorted(flat_labels, [lab, lab + 1])
        reached = np.searchsorted(np.cumsum(flat_area[s:e]), config.near_area_mm2)
        near[k] = flat_depth[s + min(reached, e - s - 1)]
    seed = big[np.argmin(near)]
    z0 = float(near.min())

    # The object: measured pixels in the band behind the seed, connected to its near part.
    band = valid & (d >= z0 - config.edge_mm - config.edge_rel * z0) & (d <= z0 + config.band_mm)
    objects, _ = ndimage.label(band, structure=np.ones((3, 3)))
    seed_in_band = (patches == seed) & band
    near_part = seed_in_band & (d <= z0)
    obj_label = np.bincount(objects[near_part if near_part.any() else seed_in_band]).argmax()
    obj = objects == obj_label
    rows, cols = np.nonzero(obj)
    pts = _pixel_points(d, rows, cols, cam, stride)
    w = pix_area[rows, cols]

    # The hand is the end of the object farthest, along its surface, from where the arm comes
    # from: the frame border (an arm reaching in) or where its surface goes on beyond the depth
    # band (an arm receding to the body).
    margin = max(1, int(round(config.border_margin * d.shape[0])))
    h, wdt = d.shape
    sources = ((rows < margin) | (rows >= h - margin) | (cols < margin) | (cols >= wdt - margin)
               | _goes_on_beyond(obj, d, valid, z0 + config.band_mm, steps)[rows, cols])
    if sources.any():
        geo = _geodesic_mm(obj, rows, cols, pts, sources)
        reach = float(np.percentile(geo, 99.5))
        tip = pts[geo >= reach].mean(axis=0)
        # A hand lies within a hand's length of its farthest point, along the surface and in space.
        keep = (geo >= reach - config.hand_length_mm) & (
            np.linalg.norm(pts - tip, axis=1) <= config.hand_length_mm)
    else:
        # A free-floating object (a hand, perhaps with a forearm ending in view): no arm to
        # follow, so the palm, the widest part, is found on the whole object below.
        keep = np.ones(len(rows), dtype=bool)
    dropped = not keep.all()
    hand_small = np.zeros_like(obj)
    hand_small[rows[keep], cols[keep]] = True
    # Palm centre: the hand pixel deepest inside the silhouette, holes filled (fingers are thin,
    # the palm is the widest part), at the median depth of the hand surface around it.
    top, left = rows[keep].min(), cols[keep].min()
    box = ndimage.binary_fill_holes(np.pad(hand_small[top:rows[keep].max() + 1, left:cols[keep].max() + 1], 1))
    inside = ndimage.distance_transform_edt(box)
    r0, c0 = np.unravel_index(np.argmax(inside), inside.shape)
    radius = max(float(inside[r0, c0]), 1.0)
    r0, c0 = r0 + top - 1, c0 + left - 1
    dist2 = (rows - r0) ** 2 + (cols - c0) ** 2
    near_palm = keep & (dist2 <= max(radius ** 2, dist2[keep].min()))  # never empty, even over a filled hole
    palm_uvd = np.array([c0 * stride, r0 * stride, np.median(pts[near_palm, 2])])
    centre_xyz = uvd_to_xyz(palm_uvd, cam)
    centre_xyz = centre_xyz + config.surface_offset_mm * centre_xyz / np.linalg.norm(centre_xyz)
    u = centre_xyz[0] * cam.fx / centre_xyz[2] + cam.cx
    v = centre_xyz[1] * cam.fy / centre_xyz[2] + cam.cy

    mask = np.repeat(np.repeat(hand_small, stride, axis=0), stride, axis=1)[:cam.height, :cam.width]
    mask &= (depth_mm >= z0 - config.edge_mm - config.edge_rel * z0) & (depth_mm <= z0 + config.band_mm)  # full-res edges
    return HandLocation(
        centre_uvd=np.array([u, v, centre_xyz[2]]),
        mask=mask,
        near_mm=z0,
        forearm_dropped=bool(dropped),
        palm_width_mm=float(2 * radius * stride * palm_uvd[2] / cam.fx),
        hand_area_mm2=float(w[keep].sum()),
    )


def centre_from_labels(labels_uvd: np.ndarray, label_joints: str, cam: Intrinsics) -> np.ndarray:
    """Crop centre(s) (..., 3) uvd from labels: NYU's palm centre.

    21-joint labels have no palm-centre joint; it is placed as the hand model places NYU's
    (hand_models.joints.PALM_CENTRE_FRACTION of the way from the wrist to the middle MCP), so real
    and synthetic frames are cropped around the same point whichever labels they carry.
    """
    labels_uvd = np.asarray(labels_uvd, dtype=np.float64)
    if label_joints == "nyu14":
        return labels_uvd[..., NYU14_NAMES.index("palm_center"), :]
    if label_joints == "21":
        wrist, middle = (uvd_to_xyz(labels_uvd[..., JOINT_INDEX[n], :], cam) for n in ("wrist", "middle_mcp"))
        return xyz_to_uvd(wrist + PALM_CENTRE_FRACTION * (middle - wrist), cam)
    raise ValueError(f"unknown label joint set {label_joints!r} (nyu14 or 21)")


def save_centres(path: str | Path, centres_uvd: np.ndarray) -> None:
    """Write centres as `u v d` lines (the format load_centres reads), atomically."""
    write_atomically(path, lambda tmp: np.savetxt(tmp, np.asarray(centres_uvd, dtype=np.float64).reshape(-1, 3),
                                                  fmt="%.3f"))


def load_centres(path: str | Path, frames: int | None = None) -> np.ndarray:
    """Read a centres file: one frame per line, `u v d` (pixels, pixels, mm)."""
    centres = load_uvd(path, num_joints=1)[:, 0, :]
    if frames is not None and len(centres) != frames:
        raise ValueError(f"{path}: {len(centres)} centres for {frames} frames")
    return centres
