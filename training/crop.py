"""The one preprocessing every depth frame goes through before a network sees it.

Synthetic shards and real captures both pass through `crop_hand`, so the only difference the
network sees between them is the domain gap itself. It follows the standard metric-cube crop of
the depth hand pose literature (DeepPrior, MURAUER):

- a cube of `cube_mm` (default 300 mm) around the hand centre is projected into the image at the
  centre's depth and resampled (nearest neighbour: interpolating depth invents surfaces across
  silhouette edges) to `size` x `size` pixels;
- depth outside the cube, and pixels without a measurement, go to the far plane;
- depth is normalised to [-1, 1] by (d - centre_z) / (cube / 2);
- labels become (xyz - centre) / (cube / 2) in camera coordinates (OpenCV: x right, y down,
  z forward), and `CropGeometry.to_xyz` / `to_uvd` invert that exactly, back to millimetres and
  full-frame uvd, for evaluation.

Augmentation (in-plane rotation, centre jitter, cube scale, depth noise) changes the crop
geometry, so image and labels move together: a rotated crop is a crop of a *virtual* image
rotated about the centre pixel, and labels are expressed in that virtual image. Depth noise is
zero-mean per pixel and leaves the labels unchanged.

Inputs may be full frames or a window of one: synthetic shards store the window of the full
frame whose top-left pixel sits at `origin` (the shard's `crop_origin`), with intrinsics of the
full frame. Pixels of the crop that fall outside the window read as "no measurement".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hand_models.joints import NYU14_NAMES
from render.camera import Intrinsics, uvd_to_xyz, xyz_to_uvd


@dataclass(frozen=True)
class CropConfig:
    cube_mm: float = 300.0
    size: int = 128

    def __post_init__(self) -> None:
        if not (self.cube_mm > 0 and self.size > 0):
            raise ValueError(f"cube_mm and size must be positive, got {self.cube_mm}, {self.size}")


@dataclass(frozen=True)
class AugmentParams:
    """One sampled augmentation; the identity by default."""

    rotation_rad: float = 0.0
    jitter_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    depth_noise_mm: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class Augmentation:
    """Ranges to sample augmentations from (defaults: MURAUER's; cube scale as DeepPrior++)."""

    rotation_deg: float = 60.0             # uniform in [-r, r]
    jitter_mm: float = 5.0                 # normal sigma per axis
    scale_range: tuple[float, float] = (0.9, 1.1)  # uniform cube scale
    depth_noise_mm: float = 5.0            # normal sigma per pixel

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        return AugmentParams(
            rotation_rad=float(np.deg2rad(rng.uniform(-self.rotation_deg, self.rotation_deg))),
            jitter_mm=tuple(float(j) for j in rng.normal(0.0, self.jitter_mm, size=3)),
            scale=float(rng.uniform(*self.scale_range)),
            depth_noise_mm=self.depth_noise_mm,
            noise_seed=int(rng.integers(2**63 - 1)),
        )


@dataclass(frozen=True)
class CropGeometry:
    """Everything needed to map between full-frame uvd, crop pixels and normalised targets."""

    cam: Intrinsics                   # of the full frame
    centre_xyz: np.ndarray            # mm, camera coordinates (after jitter)
    half_mm: float                    # half the cube edge (after scale)
    size: int
    rotation_rad: float = 0.0
    centre_uv: np.ndarray = field(init=False, repr=False)
    pixel_step: np.ndarray = field(init=False, repr=False)  # frame pixels per crop pixel (u, v)

    def __post_init__(self) -> None:
        c = np.asarray(self.centre_xyz, dtype=np.float64)
        if not (np.all(np.isfinite(c)) and c[2] > 0):
            raise ValueError(f"crop centre must lie in front of the camera, got {c}")
        object.__setattr__(self, "centre_xyz", c)
        object.__setattr__(self, "centre_uv", xyz_to_uvd(c, self.cam)[:2])
        step = 2.0 * self.half_mm / (c[2] * self.size) * np.array([self.cam.fx, self.cam.fy])
        object.__setattr__(self, "pixel_step", step)

    def _rot(self, sign: float) -> np.ndarray:
        cs, sn = np.cos(sign * self.rotation_rad), np.sin(sign * self.rotation_rad)
        return np.array([[cs, -sn], [sn, cs]])

    def frame_to_virtual_uv(self, uv: np.ndarray) -> np.ndarray:
        """Full-frame pixels -> pixels of the virtual image rotated about the crop centre."""
        return (np.asarray(uv, float) - self.centre_uv) @ self._rot(-1.0).T + self.centre_uv

    def virtual_to_frame_uv(self, uv: np.ndarray) -> np.ndarray:
        return (np.asarray(uv, float) - self.centre_uv) @ self._rot(1.0).T + self.centre_uv

    def frame_to_crop_px(self, uvd: np.ndarray) -> np.ndarray:
        """Full-frame uvd -> (x, y) crop pixel coordinates (pixel centres at integers)."""
        v = self.frame_to_virtual_uv(np.asarray(uvd, float)[..., :2])
        return (v - self.centre_uv) / self.pixel_step + (self.size - 1) / 2.0

    def normalise_uvd(self, uvd: np.ndarray) -> np.ndarray:
        """Full-frame uvd (mm depth) -> network targets (xyz - centre) / half, virtual image."""
        uvd = np.asarray(uvd, dtype=np.float64)
        virtual = np.concatenate([self.frame_to_virtual_uv(uvd[..., :2]), uvd[..., 2:3]], axis=-1)
        return (uvd_to_xyz(virtual, self.cam) - self.centre_xyz) / self.half_mm

    def to_uvd(self, normalised: np.ndarray) -> np.ndarray:
        """Network output -> full-frame uvd (exact inverse of normalise_uvd)."""
        virtual = xyz_to_uvd(np.asarray(normalised, np.float64) * self.half_mm + self.centre_xyz, self.cam)
        return np.concatenate([self.virtual_to_frame_uv(virtual[..., :2]), virtual[..., 2:3]], axis=-1)

    def to_xyz(self, normalised: np.ndarray) -> np.ndarray:
        """Network output -> millimetres in the camera frame of the original image."""
        return uvd_to_xyz(self.to_uvd(normalised), self.cam)


@dataclass
class Crop:
    image: np.ndarray            # (size, size) float32 in [-1, 1]; 1 = far plane
    labels: np.ndarray | None    # (joints, 3) float32 normalised targets, or None
    geometry: CropGeometry


def _sample_nearest(depth: np.ndarray, geo: "CropGeometry", origin: tuple[int, int]) -> np.ndarray:
    """Depth (float32, flat, 0 = none) at the stored pixel nearest to each crop pixel's centre."""
    h, w = depth.shape
    size = geo.size
    if geo.rotation_rad == 0.0:
        # Axis-aligned: rows and columns separate, so index with two short vectors.
        k = np.arange(size) - (size - 1) / 2.0
        col = np.floor(geo.centre_uv[0] - origin[0] + 0.5 + geo.pixel_step[0] * k).astype(np.int64)
        row = np.floor(geo.centre_uv[1] - origin[1] + 0.5 + geo.pixel_step[1] * k).astype(np.int64)
        ok_c, ok_r = (col >= 0) & (col < w), (row >= 0) & (row < h)
        d = depth[np.clip(row, 0, h - 1)[:, None], np.clip(col, 0, w - 1)[None, :]].astype(np.float32)
        d *= ok_r[:, None] & ok_c[None, :]
        return d.ravel()
    # Rotated: u = c_u + m00 * x + m01 * y (and v alike), built by broadcasting two 1-D terms.
    m = geo._rot(1.0) * geo.pixel_step[None, :]
    k = np.arange(size) - (size - 1) / 2.0
    c = geo.centre_uv - np.asarray(origin, dtype=np.float64) + 0.5  # +0.5: floor rounds to nearest
    col = np.floor((m[0, 0] * k)[None, :] + (m[0, 1] * k + c[0])[:, None]).astype(np.int32).ravel()
    row = np.floor((m[1, 0] * k)[None, :] + (m[1, 1] * k + c[1])[:, None]).astype(np.int32).ravel()
    ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = np.where(ok, row * w + col, 0)
    return np.where(ok, depth.ravel().take(flat), 0).astype(np.float32)


def crop_geometry(cam: Intrinsics, centre_uvd: np.ndarray, config: CropConfig = CropConfig(),
                  augment: AugmentParams = AugmentParams()) -> CropGeometry:
    centre_xyz = uvd_to_xyz(np.asarray(centre_uvd, dtype=np.float64), cam) + np.asarray(augment.jitter_mm)
    return CropGeometry(cam=cam, centre_xyz=centre_xyz, half_mm=config.cube_mm / 2.0 * augment.scale,
                        size=config.size, rotation_rad=augment.rotation_rad)


def crop_hand(depth_mm: np.ndarray, cam: Intrinsics, centre_uvd: np.ndarray,
              labels_uvd: np.ndarray | None = None, config: CropConfig = CropConfig(),
              augment: AugmentParams = AugmentParams(), origin: tuple[int, int] = (0, 0)) -> Crop:
    """Crop, normalise and (optionally) augment one frame and its labels.

    depth_mm: (H, W) depth in mm, 0 = no measurement; a full frame or a window of one whose
    top-left pixel is full-frame pixel `origin` = (u0, v0). cam: full-frame intrinsics.
    centre_uvd: crop centre in full-frame uvd (mm). labels_uvd: (J, 3) full-frame uvd.
    """
    geo = crop_geometry(cam, centre_uvd, config, augment)
    depth = np.asarray(depth_mm)
    if depth.ndim != 2:
        raise ValueError(f"depth must be a 2D array, got shape {depth.shape}")
    d = _sample_nearest(depth, geo, origin)
    cz, half = np.float32(geo.centre_xyz[2]), np.float32(geo.half_mm)
    if augment.depth_noise_mm > 0:
        # Only pixels inside the cube can show noise; drawing for them alone is 2-4x cheaper.
        in_cube = np.flatnonzero((d > 0) & (np.abs(d - cz) <= half))
        noise = np.random.default_rng(augment.noise_seed).standard_normal(in_cube.size, dtype=np.float32)
        d[in_cube] += np.float32(augment.depth_noise_mm) * noise
    norm = (d - cz) / half
    image = np.where((d > 0) & (np.abs(norm) <= 1.0), norm, np.float32(1.0)).reshape(config.size, config.size)
    labels = None
    if labels_uvd is not None:
        labels = geo.normalise_uvd(labels_uvd).astype(np.float32)
    return Crop(image=image, labels=labels, geometry=geo)


def crop_shard_sample(sample: dict, config: CropConfig = CropConfig(),
                      augment: AugmentParams = AugmentParams(), joints: str = "nyu14") -> Crop:
    """Crop a decoded render-hands sample (render.shards.decode_sample) around its palm centre.

    joints: which labels to normalise, "nyu14" (nyu14_uvd) or "21" (joints_uvd); the centre is
    the NYU-14 palm centre either way, the point real labelled frames are cropped around.
    """
    if joints not in ("nyu14", "21"):
        raise ValueError(f"joints must be 'nyu14' or '21', got {joints!r}")
    cam = Intrinsics.from_dict(sample["intrinsics"])
    nyu14 = np.asarray(sample["nyu14_uvd"], dtype=np.float64)
    labels = nyu14 if joints == "nyu14" else np.asarray(sample["joints_uvd"], dtype=np.float64)
    centre = nyu14[NYU14_NAMES.index("palm_center")]
    return crop_hand(sample["depth"], cam, centre, labels, config, augment,
                     origin=tuple(sample["crop_origin"]))
