"""Pose files: a library of poses (e.g. fitted to real labels) that render-hands samples from.

An .npz with hand_pose (N, 15, 3), betas (N, K), global_orient (N, 3) (all axis-angle / shape
coefficients as in PoseBatch) and optionally transl (N, 3) in metres, OpenCV camera axes, and
residual_mm (N,) from fitting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from render.atomic import write_atomically

from .mano_io import npz_arrays
from .prior import PoseBatch


def save_pose_file(path: str | Path, batch: PoseBatch, **extra: np.ndarray) -> None:
    """Write whole or not at all (render.atomic); WriteError names the file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, hand_pose=batch.hand_pose, betas=batch.betas, global_orient=batch.global_orient, **extra)

    write_atomically(path, write)


def load_pose_file(path: str | Path, num_betas: int | None = None) -> tuple[PoseBatch, dict[str, np.ndarray]]:
    """The poses and any extra arrays (transl, residual_mm, ...). Raises ValueError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read pose file ({err.strerror or err})") from None
    try:
        arrays = npz_arrays(raw)
    except ValueError as err:
        raise ValueError(f"{path}: not a pose .npz ({err})") from None
    for key in ("hand_pose", "betas", "global_orient"):
        if key not in arrays:
            raise ValueError(f"{path}: pose file lacks '{key}'")
        if not np.issubdtype(arrays[key].dtype, np.floating) or not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"{path}: '{key}' must be finite floats")
    n = len(arrays["hand_pose"])
    if n == 0:
        raise ValueError(f"{path}: pose file holds no poses")
    hand_pose = arrays.pop("hand_pose").reshape(n, -1)
    if hand_pose.shape[1] != 45:
        raise ValueError(f"{path}: hand_pose must be (N, 15, 3), got {hand_pose.shape}")
    betas, orient = arrays.pop("betas"), arrays.pop("global_orient")
    if betas.ndim != 2 or len(betas) != n or orient.shape != (n, 3):
        raise ValueError(f"{path}: betas must be (N, K) and global_orient (N, 3) for N = {n} poses")
    if num_betas is not None and betas.shape[1] != num_betas:
        raise ValueError(f"{path}: {betas.shape[1]} shape coefficients, the hand model has {num_betas}")
    batch = PoseBatch(hand_pose.reshape(n, 15, 3).astype(np.float32), betas.astype(np.float32),
                      orient.astype(np.float32))
    return batch, arrays
