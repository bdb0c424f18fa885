"""Pinhole depth cameras and the uvd <-> xyz conversions every tool shares.

Convention: xyz in millimetres (or metres, the functions are unit-agnostic) in OpenCV camera
coordinates: x right, y down, z forward. NYU's own files use y up (y = (cy - v) * d / fy); pass
`y_up=True` where such data is read or written.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from render.jsonfile import read_json_object


def is_number(value: object) -> bool:
    """A real number (numpy's included) that is finite as a float, not a bool: Python counts True
    as 1, a camera file must not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        """Refuse, never convert: "476", true (which float() reads as 1.0) or a width of 640.7 in a
        camera file is a mistake to report, not a number to guess. An integral float size (640.0)
        is the same size. Stores float focal lengths and centre, int size."""
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not (is_number(value) and (value > 0 or name in ("cx", "cy"))):
                kind = "a finite number" if name in ("cx", "cy") else "a positive number"
                raise ValueError(f"intrinsics {name} must be {kind}, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("width", "height"):
            value = getattr(self, name)
            if not (is_number(value) and float(value).is_integer() and value > 0):
                raise ValueError(f"intrinsics {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, size in (("cx", "width"), ("cy", "height")):
            # A camera's principal point lies on its image: pixel centres 0..size-1, edges half a pixel out
            # (a range mirroring, c -> size - 1 - c, keeps).
            if not -0.5 <= getattr(self, name) <= getattr(self, size) - 0.5:
                raise ValueError(f"intrinsics {name} must lie on the {self.width}x{self.height} image "
                                 f"(-0.5 to {getattr(self, size) - 0.5:g}), got {getattr(self, name):g}")

    @classmethod
    def from_dict(cls, data: dict) -> "Intrinsics":
        """Every reader of camera JSON, capture.json and manifests comes here; ValueError if bad."""
        if not isinstance(data, dict):
            raise ValueError(f"intrinsics must be an object {{fx, fy, cx, cy, width, height}}, got {data!r}")
        missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in data]
        if missing:
            raise ValueError(f"intrinsics lack {', '.join(missing)}")
        return cls(data["fx"], data["fy"], data["cx"], data["cy"], data["width"], data["height"])

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

    def outside(self, uv: np.ndarray) -> np.ndarray:
        """Which points (..., 2 or 3: u, v first) lie off the image's pixel centres 0..width-1, 0..height-1."""
        uv = np.asarray(uv)
        return (uv[..., 0] < 0) | (uv[..., 0] > self.width - 1) | (uv[..., 1] < 0) | (uv[..., 1] > self.height - 1)


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
