"""Synthesis of labelled depth frames: pose, place, render, add sensor artefacts, encode.

Randomness (the reproducibility contract, recorded in the manifest as `rng`):
* poses come in blocks of POSE_BLOCK consecutive sample indices: block b draws its poses with
  np.random.default_rng([seed, b, 0]) (the pose prior's rejection sampler is ~30x cheaper per
  pose in bulk than one at a time);
* everything else of sample i (forearm, placement) uses np.random.default_rng([seed, i, 1]) and
  its sensor artefacts np.random.default_rng([seed, i, 2]).
Meshes are posed and rendered in fixed chunks aligned to the blocks, so the bytes of sample i
depend on (seed, i) and the configuration only: not on --n, --workers, --shard-size or slicing.

Placement: the palm centre is put at a depth drawn uniformly from the configured range (NYU's
captures: ~500 to 1100 mm) and at a pixel drawn uniformly over the part of the frame where the
hand and forearm fit; draws are repeated until they lie fully inside the frame (with a margin) in
every view.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hand_models.joints import NYU14_NAMES
from hand_models.model import HandModel
from hand_models.prior import PoseBatch, PosePrior
from render import forearm as forearm_mod
from render.camera import NYU_KINECT, Intrinsics, xyz_to_uvd
from render.renderer import DepthRenderer, Window, bounding_window, project
from render.sensor import SENSORS as SENSOR_MODELS
from render.sensor import apply_sensor
from render.shards import encode_depth_png, sample_key
from render.views import VIEWS, transform, view_extrinsics

GENERATOR = "render-hands"
GENERATOR_VERSION = "1.0"
CODE_PACKAGES = ("render", "hand_models")  # their source decides every sample
POSE_BLOCK = 256
CHUNK = 64                # samples posed and rendered together (divides POSE_BLOCK)
WINDOW_MARGIN_PX = 3     # background pixels around the hand in each window (sensor edges need 2)
PLACEMENT_TRIES = 200
SENSORS = tuple(SENSOR_MODELS)  # the sensor names render.sensor implements


def code_checksum() -> str:
    """sha256 over the source files of CODE_PACKAGES. A resumed run compares it, so that one dataset
    never mixes shards of two versions of the code (the version string is not bumped for every edit)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(p for pkg in CODE_PACKAGES for p in (root / pkg).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class RenderConfig:
    """Everything that determines the samples of a dataset (the worker count does not)."""

    n: int
    seed: int = 0
    shard_size: int = 1024
    hand_model: str = "open"
    poses: str = "prior"
    views: int = 1
    sensor: str = "clean"
    camera: Intrinsics = NYU_KINECT
    camera_source: str = "nyu"
    forearm: bool = True
    distance_mm: tuple[float, float] = (500.0, 1100.0)

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"--n must be positive, got {self.n}")
        if self.shard_size <= 0:
            raise ValueError(f"--shard-size must be positive, got {self.shard_size}")
        if self.views not in (1, 3):
            raise ValueError(f"--views must be 1 or 3, got {self.views}")
        if self.sensor not in SENSORS:
            raise ValueError(f"--sensor must be one of {', '.join(SENSORS)}, got {self.sensor!r}")
        lo, hi = self.distance_mm
        if not 100 <= lo <= hi <= 5000:
            raise ValueError(f"--distance must satisfy 100 <= MIN <= MAX <= 5000 mm, got {lo} {hi}")

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, self.n)

    def identity(self, model_id: str, model_checksum: str, poses_checksum: str | None) -> dict:
        """What makes two datasets the same: compared when a run resumes or slices merge. Files count
        by content (checksums, the camera's values), not by the path they were named with, so a
        resume may name them from another folder; the hand model's id counts too, as every label
        holds it."""
        spec = asdict(self)
        del spec["camera_source"]
        spec["poses"] = self.poses if self.poses == "prior" else "file"
        spec["hand_model"] = self.hand_model if self.hand_model == "open" else "file"
        spec["camera"] = self.camera.to_dict()
        spec["distance_mm"] = list(self.distance_mm)
        spec["hand_model_id"] = model_id
        spec["hand_model_checksum"] = model_checksum
        spec["poses_checksum"] = poses_checksum
        spec["generator_version"] = GENERATOR_VERSION
        spec["code_checksum"] = code_checksum()
        spec["pose_block"] = POSE_BLOCK
        return spec


@dataclass
class Posed:
    """One sample before rendering: its mesh in view-0 camera coordinates and its labels."""

    index: int
    pose: dict
    vertices: np.ndarray          # (V, 3) metres, hand then forearm
    joints: np.ndarray            # (21, 3) metres
    nyu14: np.ndarray             # (14, 3) metres
    extrinsics: list[np.ndarray]  # per view, view-0 camera -> view camera
    windows: list[Window] = field(default_factory=list)
    forearm: dict | None = None


def _round(a: np.ndarray, digits: int = 3) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


class Synthesizer:
    """Turns sample indices into encoded samples; one per process (it owns a GL context)."""

    def __init__(self, config: RenderConfig, model: HandModel | None = None) -> None:
        self.config = config
        self.model = model if model is not None else HandModel.load(config.hand_model)
        self.prior = PosePrior(self.model)
        self.library: PoseBatch | None = None
        if config.poses != "prior":
            from hand_models.poses import load_pose_file
            self.library, _ = load_pose_file(config.poses, self.model.num_betas)
        self.hand_faces = np.asarray(self.model.faces, dtype=np.int64)
        self.faces = self.hand_faces
        if config.forearm:
            self.faces = np.concatenate([self.hand_faces, forearm_mod.FACES + self._num_hand_verts()])
        lo, hi = config.distance_mm
        self.renderer = DepthRenderer(atlas_height=2048, znear=0.25 * lo / 1000, zfar=2.5 * hi / 1000)
        self._block: tuple[int, PoseBatch] | None = None

    def _num_hand_verts(self) -> int:
        return int(self.model.v_template.shape[0])

    def close(self) -> None:
        self.renderer.close()

    # --- poses -----------------------------------------------------------------------------
    def _block_poses(self, block: int) -> PoseBatch:
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.config.seed, block, 0])
            if self.library is None:
                poses = self.prior.sample(POSE_BLOCK, rng)
            else:
                idx = np.arange(block * POSE_BLOCK, (block + 1) * POSE_BLOCK) % len(self.library)
                poses = self.prior.perturb(self.library[idx], rng)
            self._block = (block, poses)
        return self._block[1]

    def poses(self, start: int, stop: int) -> PoseBatch:
        """Poses of samples start..stop-1 (they may span blocks)."""
        parts = []
        i = start
        while i < stop:
            block = i // POSE_BLOCK
            end = min(stop, (block + 1) * POSE_BLOCK)
            parts.append(self._block_poses(block)[i - block * POSE_BLOCK:end - block * POSE_BLOCK])
            i = end
        return PoseBatch.concat(parts)

    # --- geometry --------------------------------------------------------------------------
    def pose_chunk(self, start: int, stop: int) -> list[Posed]:
        poses = self.poses(start, stop)
        with torch.no_grad():
            out = self.model(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                             torch.from_numpy(poses.global_orient))
        verts = out.vertices.double().numpy()
        joints = out.joints.double().numpy()
        nyu14 = out.nyu14.double().numpy()
        return [self._place(start + k, poses[k:k + 1], verts[k], joints[k], nyu14[k])
                for k in range(stop - start)]

    def _place(self, index: int, pose: PoseBatch, verts: np.ndarray, joints: np.ndarray,
               nyu14: np.ndarray) -> Posed:
        cfg, cam = self.config, self.config.camera
        rng = np.random.default_rng([cfg.seed, index, 1])
        fa = None
        if cfg.forearm:
            fa = forearm_mod.orient(joints, forearm_mod.ForearmParams.sample(rng))
            verts = np.concatenate([verts, forearm_mod.forearm_mesh(joints, fa)])
        pivot = nyu14[NYU14_NAMES.index("palm_center")]
        rel = verts - pivot
        lo, hi = cfg.distance_mm
        m = WINDOW_MARGIN_PX
        for _ in range(PLACEMENT_TRIES):
            z = rng.uniform(lo, hi) / 1000.0
            # Pixel extent of the mesh around its pivot if the pivot were on the optical axis:
            # drawing the pivot pixel only where that extent fits saves most rejected draws.
            du = cam.fx * rel[:, 0] / (z + rel[:, 2])
            dv = cam.fy * rel[:, 1] / (z + rel[:, 2])
            u_lo, u_hi = m - du.min(), cam.width - 1 - m - du.max()
            v_lo, v_hi = m - dv.min(), cam.height - 1 - m - dv.max()
            if u_lo >= u_hi or v_lo >= v_hi:
                continue
            u, v = rng.uniform(u_lo, u_hi), rng.uniform(v_lo, v_hi)
            centre = np.array([(u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy, z])
            extrinsics = view_extrinsics(centre, cfg.views)
            placed = rel + centre
            windows = self._windows(placed, extrinsics)
            if windows is not None:
                break
        else:
            beyond = " (beyond --n, placed with its render chunk)" if index >= cfg.n else ""
            raise RuntimeError(f"{cfg.camera_source}: sample {index}'s hand{beyond} does not fit in the camera's "
                               f"{cam.width}x{cam.height} frame (in a window of at most {self.renderer.atlas[0]}x{self.renderer.atlas[1]} px) "
                               f"at {lo:.0f}..{hi:.0f} mm after {PLACEMENT_TRIES} draws (placement "
                               f"depends only on --seed and the sample, so a rerun fails here again: allow farther "
                               f"distances with --distance, or use a camera that sees more or has a shorter focal length)")
        transl = centre - pivot
        pose_dict = {"hand_pose": _round(pose.hand_pose[0].reshape(-1), 6),
                     "betas": _round(pose.betas[0], 6),
                     "global_orient": _round(pose.global_orient[0], 6),
                     "transl_m": _round(transl, 6)}
        return Posed(index, pose_dict, placed, joints + transl, nyu14 + transl, extrinsics, windows,
                     None if fa is None else fa.to_dict())

    def _windows(self, verts: np.ndarray, extrinsics: list[np.ndarray]) -> list[Window] | None:
        """Per-view windows, or None when the mesh leaves a frame or comes too close."""
        cam = self.config.camera
        lo = self.config.distance_mm[0] / 1000.0
        m = WINDOW_MARGIN_PX
        out = []
        for view, ext in enumerate(extrinsics):
            pts = verts if view == 0 else transform(verts, ext)
            if pts[:, 2].min() < 0.5 * lo:
                return None
            uv = project(pts, cam)
            if (uv[:, 0].min() < m or uv[:, 1].min() < m or uv[:, 0].max() > cam.width - 1 - m
                    or uv[:, 1].max() > cam.height - 1 - m):
                return None
            window = bounding_window(uv, cam, m)
            if window.width > self.renderer.atlas[0] or window.height > self.renderer.atlas[1]:
                return None   # larger than the renderer draws in one pass: a farther draw may fit
            out.append(window)
        return out

    # --- rendering and encoding -----------------------------------------------------------
    def render_chunk(self, posed: list[Posed]) -> list[list[np.ndarray]]:
        """Exact depth windows (metres) of every view of every sample."""
        meshes, windows = [], []
        for p in posed:
            for view, (ext, win) in enumerate(zip(p.extrinsics, p.windows)):
                meshes.append((p.vertices if view == 0 else transform(p.vertices, ext), self.faces))
                windows.append(win)
        depth = self.renderer.render(meshes, windows, self.config.camera)
        nv = self.config.views
        return [depth[k * nv:(k + 1) * nv] for k in range(len(posed))]

    def labels(self, p: Posed, view: int) -> dict:
        cam = self.config.camera
        ext = p.extrinsics[view]
        xyz = transform(p.joints, ext) * 1000.0
        n14 = transform(p.nyu14, ext) * 1000.0
        win = p.windows[view]
        return {
            "view": view,
            "view_name": VIEWS[view][0],
            "extrinsics": _round(ext, 9),
            "crop_origin": [win.u0, win.v0],
            "crop_size": [win.width, win.height],
            "joints_xyz": _round(xyz),
            "joints_uvd": _round(xyz_to_uvd(xyz, cam)),
            "nyu14_xyz": _round(n14),
            "nyu14_uvd": _round(xyz_to_uvd(n14, cam)),
        }

    def encode(self, p: Posed, depth: list[np.ndarray]) -> tuple[str, dict[str, bytes]]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, p.index, 2])
        files: dict[str, bytes] = {}
        views = []
        for view, d in enumerate(depth):
            win = p.windows[view]
            mm = apply_sensor(d, cfg.camera, (win.u0, win.v0), cfg.sensor, rng)
            files["depth.png" if view == 0 else f"depth.view{view}.png"] = encode_depth_png(mm)
            views.append(self.labels(p, view))
        label = views[0]
        label.update({
            "index": p.index,
            "intrinsics": cfg.camera.to_dict(),
            "sensor": cfg.sensor,
            "hand_model": self.model.name,
            "pose": p.pose,
            "forearm": p.forearm,
            "views": views[1:],
        })
        files["json"] = json.dumps(label, separators=(",", ":")).encode()
        return sample_key(p.index), files

    def samples(self, start: int, stop: int):
        """Yield (key, files) for samples start..stop-1.

        Meshes are posed and rendered in chunks of CHUNK samples aligned to multiples of CHUNK,
        always whole (parts outside start..stop, even beyond --n, are computed and dropped), so
        that batched float arithmetic and atlas packing, hence the bytes of every sample, do not
        depend on where a shard or a slice starts or on --n.
        """
        first = start // CHUNK * CHUNK
        for lo in range(first, stop, CHUNK):
            posed = self.pose_chunk(lo, lo + CHUNK)
            for p, d in zip(posed, self.render_chunk(posed)):
                if start <= p.index < stop:
                    yield self.encode(p, d)


def load_camera(spec: str) -> tuple[Intrinsics, str]:
    """"nyu" or a JSON file path -> (intrinsics, source description). Raises ValueError."""
    if spec == "nyu":
        return NYU_KINECT, "nyu"
    return Intrinsics.from_json(Path(spec)), str(Path(spec).resolve())
