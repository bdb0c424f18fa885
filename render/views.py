"""The three cameras of an NYU-style capture: front, top and side.

NYU's rig had three Kinects around the hand: camera 1 in front, camera 2 above, camera 3 at the
side. Here views 1 and 2 orbit the front camera (view 0) about a pivot, the palm centre of the
sample, at the pivot's distance from view 0, so every view sees the hand centred and at the same
scale as NYU's cameras roughly did. The orbit angles are fixed; the extrinsics of each sample
differ only through its pivot and are stored with its labels.

Extrinsics are 4x4 matrices T with X_view = T @ [X_view0, 1] (metres, OpenCV axes: x right,
y down, z forward).
"""

from __future__ import annotations

import numpy as np

# (name, rotation axis in view-0 camera axes, angle in degrees)
VIEWS: tuple[tuple[str, tuple[float, float, float], float], ...] = (
    ("front", (1.0, 0.0, 0.0), 0.0),
    ("top", (1.0, 0.0, 0.0), 60.0),    # camera raised above the hand (y up), looking down at it
    ("side", (0.0, 1.0, 0.0), 60.0),   # camera moved to the right (+x), looking across
)


def _rotation(axis: tuple[float, float, float], deg: float) -> np.ndarray:
    axis_v = np.asarray(axis, dtype=np.float64)
    axis_v = axis_v / np.linalg.norm(axis_v)
    a = np.deg2rad(deg)
    k = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def view_extrinsics(pivot: np.ndarray, num_views: int) -> list[np.ndarray]:
    """Extrinsics of views 0..num_views-1 for a hand whose pivot (metres, view 0) is given.

    View k rotates the scene about the pivot by its fixed orbit rotation and keeps the pivot at
    the same distance straight ahead, i.e. X_k = R_k (X_0 - p) + (0, 0, |p|).
    """
    if not 1 <= num_views <= len(VIEWS):
        raise ValueError(f"num_views must be 1..{len(VIEWS)}, got {num_views}")
    pivot = np.asarray(pivot, dtype=np.float64)
    ahead = np.array([0.0, 0.0, np.linalg.norm(pivot)])
    out = [np.eye(4)]
    for _, axis, deg in VIEWS[1:num_views]:
        rot = _rotation(axis, deg)
        t = np.eye(4)
        t[:3, :3] = rot
        t[:3, 3] = ahead - rot @ pivot
        out.append(t)
    return out


def transform(points: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Apply a 4x4 extrinsic matrix to (..., 3) points."""
    return points @ extrinsics[:3, :3].T + extrinsics[:3, 3]
