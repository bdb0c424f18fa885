"""Depth-sensor artefact models: turn exact rendered depth into what a real camera would report.

A network trained on perfect depth learns cues that real sensors never deliver (sub-millimetre
smoothness, every silhouette pixel present), so synthetic frames go through a model of the camera
before they are written. `apply_sensor` is the one entry point; `SENSORS` maps each sensor name to
its model so that more can be added beside Kinect v1.

Window invariance: the renderer may render only a window around the hand. Every random number
here is read from fixed noise tiles at the full-frame pixel (u, v), shifted by offsets that are
one draw from the caller's generator, never drawn in an order that depends on the array's shape.
A window cut from a frame therefore gets the same artefacts as the full frame at the same pixels,
except within 2 pixels of the window border where neighbourhood operations (edges, normals,
shifted sampling) cannot see beyond it, and for projector shadows cast by surfaces beside the
window (left of it with the default `shadow_side`). With the hand fully inside the window and a background margin of 2 px or more, window and
full frame agree exactly. Parameters and their sources: docs/sensor.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from render.camera import Intrinsics

_MAX_MM = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class KinectV1:
    """Structured-light (PrimeSense) depth camera: disparity is measured, depth derived from it."""

    baseline_m: float = 0.075           # IR projector to IR camera (Khoshelham & Elberink 2012)
    native_focal_px: float = 580.0      # IR camera focal length at 640x480 (Khoshelham & Elberink 2012)
    disparity_step_px: float = 1 / 8   # sub-pixel disparity resolution (Konolige & Mihelich; simkinect)
    shift_sigma_px: float = 0.5         # per-pixel random sampling shift (simkinect)
    disparity_noise_px: float = 0.01    # white Gaussian disparity noise; tuned to NYU (docs/sensor.md)
    correlated_noise_px: float = 0.09   # spatially smooth disparity noise (window matching); tuned
    correlation_px: float = 2.0         # Gaussian correlation length of that smooth noise
    edge_jump_m: float = 0.010          # departure from the neighbours' line that counts as a discontinuity
    edge_drop_prob: float = 0.1         # chance that a pixel on a discontinuity is lost; tuned
    grazing_start_deg: float = 72.0     # incidence angle where grazing dropout begins; tuned
    grazing_full_deg: float = 88.0      # incidence angle beyond which depth is always lost; tuned
    hole_seed_rate: float = 2e-5        # per-pixel chance of a small hole (a 5-pixel cross)
    shadow_side: int = 1                # projector shadows fall right (+1) / left (-1) of nearer
                                        # surfaces, 0 = none; +1 measured on NYU (docs/sensor.md)
    shadow_fill_px: float = 1.5         # shadow width the correlation window fills back; tuned

    def depth_step_m(self, z_m: float) -> float:
        """Depth difference between neighbouring disparity levels at depth z."""
        return z_m**2 * self.disparity_step_px / (self.baseline_m * self.native_focal_px)


KINECT_V1 = KinectV1()

# Noise lives in periodic tiles drawn once per parameter set; a frame picks a random offset per
# stream, so the noise at full-frame pixel (u, v) is tile[(v + ov) % T, (u + ou) % T]: a function
# of the pixel and of one rng draw, never of the window. The tiles are padded by a wrapped copy so
# that any window up to _TILE_PAD pixels is a plain slice (no copy). Each stream repeats every
# _TILE_PERIOD pixels within a frame, but the streams' offsets are independent, so the joint pattern
# does not. Memory: 10 MiB per process and parameter set.
_TILE_PERIOD = 512
_TILE_PAD = 640
_TILE_SEED = 20121203  # fixed: the tiles are part of the model; per-frame randomness is the offsets
_MAX_SHIFT_PX = 2      # rounded shifts are clipped so a gather never leaves a 2-pixel margin
_STRIP_PIXELS = 24576  # pixels per strip of rows: temporaries stay under malloc's mmap threshold


@dataclass(frozen=True)
class _Tiles:
    step_u: np.ndarray       # int8, N(0, shift_sigma_px) rounded to whole pixels
    step_v: np.ndarray
    disparity: np.ndarray    # float32, white + smooth disparity noise in disparity steps
    drop: np.ndarray         # uint8, uniform 0..255
    holes: np.ndarray        # bool, hole seeds grown to 5-pixel crosses


@lru_cache(maxsize=4)
def _tiles(p: KinectV1) -> _Tiles:
    rng = np.random.default_rng(_TILE_SEED)
    t = _TILE_PERIOD

    def wrap(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, _TILE_PAD), (0, _TILE_PAD)), mode="wrap")

    shifts = rng.standard_normal((2, t, t), dtype=np.float32) * np.float32(p.shift_sigma_px)
    smooth = ndi.gaussian_filter(rng.standard_normal((t, t), dtype=np.float32), p.correlation_px, mode="wrap")
    noise = (rng.standard_normal((t, t), dtype=np.float32) * np.float32(p.disparity_noise_px)
             + smooth * np.float32(p.correlated_noise_px / smooth.std())) / np.float32(p.disparity_step_px)
    drop = rng.integers(0, 256, (t, t), dtype=np.uint8)
    seeds = rng.random((t, t)) < p.hole_seed_rate
    holes = seeds | np.roll(seeds, 1, 0) | np.roll(seeds, -1, 0) | np.roll(seeds, 1, 1) | np.roll(seeds, -1, 1)
    steps = np.clip(np.rint(shifts), -_MAX_SHIFT_PX, _MAX_SHIFT_PX).astype(np.int8)
    return _Tiles(wrap(steps[0]), wrap(steps[1]), wrap(noise), wrap(drop), wrap(holes))


def _window(tile: np.ndarray, offset: tuple[int, int], u0: int, v0: int, h: int, w: int) -> np.ndarray:
    """The tile's values at full-frame pixels [v0, v0 + h) x [u0, u0 + w)."""
    su = (u0 + offset[0]) % _TILE_PERIOD
    sv = (v0 + offset[1]) % _TILE_PERIOD
    if h <= _TILE_PAD and w <= _TILE_PAD:
        return tile[sv:sv + h, su:su + w]
    rows = (sv + np.arange(h)) % _TILE_PERIOD
    cols = (su + np.arange(w)) % _TILE_PERIOD
    return tile[np.ix_(rows, cols)]


def _to_mm(depth_m: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(depth_m * np.float32(1000.0)), 0, _MAX_MM).astype(np.uint16)


def _clean(depth_m: np.ndarray, cam: Intrinsics, origin: tuple[int, int],
           rng: np.random.Generator) -> np.ndarray:
    return _to_mm(depth_m)


def kinect_v1(depth_m: np.ndarray, cam: Intrinsics, origin: tuple[int, int], rng: np.random.Generator,
              p: KinectV1 = KINECT_V1) -> np.ndarray:
    """The Kinect v1 model with parameters `p`: finite float32 metres in (0 = background), uint16 mm out."""
    offsets = rng.integers(0, _TILE_PERIOD, size=(5, 2))
    out = np.zeros(depth_m.shape, np.uint16)
    valid_rows = np.flatnonzero(depth_m.any(axis=1))
    if valid_rows.size == 0:
        return out
    valid_cols = np.flatnonzero(depth_m.any(axis=0))
    # Work on the bounding box of the depth plus a 2-pixel margin: outside it the result is 0, and
    # inside it every neighbourhood below sees exactly what it would see in the full frame.
    m = _MAX_SHIFT_PX
    r0, r1 = max(valid_rows[0] - m, 0), min(valid_rows[-1] + m + 1, depth_m.shape[0])
    c0, c1 = max(valid_cols[0] - m, 0), min(valid_cols[-1] + m + 1, depth_m.shape[1])
    z = np.ascontiguousarray(depth_m[r0:r1, c0:c1])
    h, w = z.shape
    u0, v0 = origin[0] + c0, origin[1] + r0
    tiles = _tiles(p)
    noise = [_window(tile, (int(off[0]), int(off[1])), u0, v0, h, w) for tile, off in zip(
        (tiles.step_u, tiles.step_v, tiles.disparity, tiles.drop, tiles.holes), offsets)]
    # The window border repeats itself (mode "edge"), so cutting a window invents no edge.
    padded = np.pad(z, 1, mode="edge")
    rx = ((np.arange(u0, u0 + w) - cam.cx) / cam.fx).astype(np.float32)
    ry = ((np.arange(v0, v0 + h) - cam.cy) / cam.fy).astype(np.float32)[:, None]
    # Strips of rows keep every temporary small: large ones come from fresh pages each call and the
    # page faults would cost more than the arithmetic.
    rows = max(1, _STRIP_PIXELS // w)
    crop = out[r0:r1, c0:c1]
    for s in range(0, h, rows):
        e = min(s + rows, h)
        crop[s:e] = _kinect_rows(padded[s:e + 2], z, s, rx, ry[s:e], [n[s:e] for n in noise], cam, p)
    return out


def _minmod(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """The one-sided difference of smaller magnitude, 0 where they disagree in sign."""
    return np.copysign(np.minimum(np.abs(forward), np.abs(backward)), forward) * (forward * backward > 0)


def _kinect_rows(padded: np.ndarray, z_all: np.ndarray, row0: int, rx: np.ndarray, ry: np.ndarray,
                 noise: list[np.ndarray], cam: Intrinsics, p: KinectV1) -> np.ndarray:
    """Kinect artefacts for rows row0.. of the crop; `padded` holds those rows and one more each side."""
    step_u, step_v, disparity_noise, drop, holes = noise
    z = padded[1:-1, 1:-1]
    h, w = z.shape
    valid = z > 0

    # Discontinuities: a background 4-neighbour, or depth that departs from the line through its
    # two neighbours by more than edge_jump_m (a second difference, so that a steep but smooth
    # surface is left to the grazing-angle rule).
    left, right, up, down = padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]
    twice = z + z
    bend = np.maximum(np.abs(left + right - twice), np.abs(up + down - twice))
    lo = np.minimum(np.minimum(left, right), np.minimum(up, down))
    edge = valid & ((lo <= 0) | (bend > np.float32(p.edge_jump_m)))

    # Incidence angle from the exact surface. With the ray r = (rx, ry, 1) and z_u, z_v the depth
    # derivatives per pixel, n ∝ (-z_u fx, -z_v fy, z_u fx rx + z_v fy ry + z) and n·r ∝ z, so
    # cos(incidence) = z / (|n| |r|). The derivatives are the smaller one-sided differences (0
    # where they disagree in sign), so a step beside a pixel does not tilt its normal.
    a = _minmod(right - z, z - left) * np.float32(cam.fx)
    b = _minmod(down - z, z - up) * np.float32(cam.fy)
    nz = a * rx + b * ry + z
    norm2 = (a * a + b * b + nz * nz) * (rx * rx + ry * ry + np.float32(1.0))
    cos_inc = z / np.sqrt(norm2 + np.float32(1e-12))
    cos_start = np.float32(np.cos(np.radians(p.grazing_start_deg)))
    cos_full = np.float32(np.cos(np.radians(p.grazing_full_deg)))
    p_graze = np.clip((cos_start - cos_inc) * np.float32(1 / (cos_start - cos_full)), 0, 1)
    p_keep = (np.float32(1) - p_graze) * np.where(edge, np.float32(1 - p.edge_drop_prob), np.float32(1))
    keep = valid & (drop < p_keep * np.float32(256)) & ~holes

    # Speckle-position jitter (simkinect): on a discontinuity the sample comes from the pixel the
    # shift lands on, which frays silhouettes the way a correlation window does. On smooth surfaces
    # the sensor's ~9x9 correlation window averages the jitter away (simkinect's filterDisp), so
    # there the disparity noise below stands for all per-pixel error.
    width = z_all.shape[1]
    index = (np.arange(row0 * width, (row0 + h) * width, dtype=np.int32).reshape(h, w)
             + step_u + step_v.astype(np.int32) * width)
    sampled = np.where(edge, np.take(z_all.ravel(), index, mode="clip"), z)
    keep &= sampled > 0

    # Disparity noise and quantisation to 1/8 px (Khoshelham & Elberink 2012; simkinect).
    bf = p.baseline_m * p.native_focal_px
    levels = np.rint(np.float32(bf / p.disparity_step_px) / np.where(keep, sampled, 1) + disparity_noise)
    keep &= levels > 0
    depth_mm = np.float32(1000 * bf / p.disparity_step_px) / np.where(keep, levels, 1)

    if p.shadow_side:
        # The projector sits beside the IR camera on the row axis, so a nearer surface hides the
        # pattern from a farther one on one side of it: with disparities in image pixels
        # d = b fx / z, pixel u is shadowed by u' (u' < u for shadows to the right) when
        # d(u') - d(u) >= |u - u'| + fill, i.e. when a running maximum of d(u') + u' over the
        # pixels before u reaches d(u) + u + fill. The exact surface casts the shadow, whether or
        # not its own depth was lost.
        d_img = np.float32(p.baseline_m * cam.fx) / np.where(valid, z, np.inf)
        if p.shadow_side < 0:
            d_img = d_img[:, ::-1]
        key = d_img + np.arange(w, dtype=np.float32)
        reach = np.maximum.accumulate(key, axis=1)
        shadowed = np.zeros_like(keep)
        shadowed[:, 1:] = reach[:, :-1] >= key[:, 1:] + np.float32(p.shadow_fill_px)
        keep &= ~(shadowed if p.shadow_side > 0 else shadowed[:, ::-1])

    return np.rint(np.minimum(depth_mm, _MAX_MM)) * keep


SensorModel = Callable[[np.ndarray, Intrinsics, tuple[int, int], np.random.Generator], np.ndarray]

SENSORS: dict[str, SensorModel] = {
    "clean": _clean,
    "kinect": kinect_v1,
}


def apply_sensor(depth_m: np.ndarray, cam: Intrinsics, origin: tuple[int, int], mode: str,
                 rng: np.random.Generator) -> np.ndarray:
    """Exact depth (metres, 0 = background) -> sensor depth (uint16 mm, 0 = no depth).

    `origin` is (u0, v0), the full-frame pixel of the window's top-left corner; `rng` gives one draw
    per call for "kinect" (none for "clean"), so the caller's stream stays reproducible.
    """
    if mode not in SENSORS:
        raise ValueError(f"unknown sensor mode {mode!r}; allowed: {', '.join(SENSORS)}")
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f"depth must be a 2-D (h, w) array, got shape {depth_m.shape}")
    depth_m = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0).astype(np.float32)
    return SENSORS[mode](depth_m, cam, (int(origin[0]), int(origin[1])), rng)
