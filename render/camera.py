"""Pinhole depth cameras and the uvd <-> xyz conversions every tool shares.

Convention: xyz in millimetres (or metres, the functions are unit-agnostic) in OpenCV camera
coordinates: x right, y down, z forward. NYU's own files use y up (y = (cy - v) * d / fy); pass
`y_up=True` where such data is read or written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from render.jsonfile import read_json_object


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("cx", "cy"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "Intrinsics":
        missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in data]
        if missing:
            raise ValueError(f"intrinsics lack {', '.join(missing)}")
        try:
            return cls(float(data["fx"]), float(data["fy"]), float(data["cx"]), float(data["cy"]),
                       int(data["width"]), int(data["height"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad intrinsics: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "Intrinsics":
        """Read {fx, fy, cx, cy, width, height}, bare or under an "intrinsics" key."""
        data = read_json_object(path, "camera JSON")
        if isinstance(data.get("intrinsics"), dict):
            data = data["intrinsics"]
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


NYU_KINECT = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0, width=640, height=480)


def xyz_to_uvd(xyz: np.ndarray, cam: Intrinsics, y_up: bool = False) -> np.ndarray:
    """Project (..., 3) camera points to (..., 3) [u, v, d] with d = z."""
    xyz = np.asarray(xyz, dtype=np.float64)
    z = xyz[..., 2]
    y = -xyz[..., 1] if y_up else xyz[..., 1]
    u = xyz[..., 0] * cam.fx / z + cam.cx
    v = y * cam.fy / z + cam.cy
    return np.stack([u, v, z], axis=-1)


def uvd_to_xyz(uvd: np.ndarray, cam: Intrinsics, y_up: bool = False) -> np.ndarray:
    """Back-project (..., 3) [u, v, d] to camera points (inverse of xyz_to_uvd)."""
    uvd = np.asarray(uvd, dtype=np.float64)
    d = uvd[..., 2]
    x = (uvd[..., 0] - cam.cx) * d / cam.fx
    y = (uvd[..., 1] - cam.cy) * d / cam.fy
    return np.stack([x, -y if y_up else y, d], axis=-1)
