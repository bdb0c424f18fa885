"""The sim-to-real target domain: labelled full depth frames that differ from the source as real ones do.

A STAND-IN for real data (no large labelled real depth set can be downloaded here). The source
domain is render-hands' clean sensor, prior poses and default shapes; a target frame differs in
each way docs/sim2real.md lists:

* poses: NYU test labels fitted by hand_models.fitting (global orientation and position included),
  never seen by the source's pose prior; NYU's test sequence is split into disjoint blocks of
  consecutive frames for the test, training and unlabeled pools;
* hands: shapes 2 to 3.5 standard deviations out in size and in two further shape directions
  (finger lengths, palm width, thickness), larger and smaller than the source's;
* sensor: the Kinect v1 model as four devices whose parameters are drawn (per seed) around the
  NYU calibration, plus holes stamped into the hand with the shapes and rates measured on the
  real captures;
* scene: the whole arm (forearm and upper arm, joining the body or leaving the frame), a torso 10
  to 40 cm behind the hand, sometimes a table and a wall
  (render.scene), rendered as full 640x480 frames so that localisation and cropping are exercised;
* a rig: the unlabeled frames are also filmed by a second Kinect at the side (NYU's camera 3), fixed
  for the whole split as a real rig is, so that view prediction can learn from unlabeled frames.

Frame i of a split depends only on (seed, split, i) and the fitted poses: per-frame generators
`np.random.default_rng([seed, SPLIT_CODES[split], i])` for the frame and `[seed, code, i, 1]` for
its rig views (so adding a view leaves the frame itself unchanged).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from hand_models.fitting import fit
from hand_models.joints import NYU14_NAMES
from hand_models.model import HandModel
from hand_models.prior import PoseBatch, PosePrior
from render import scene as scene_mod
from render.camera import NYU_KINECT, Intrinsics, uvd_to_xyz, xyz_to_uvd
from render.renderer import DepthRenderer, Window
from render.sensor import KINECT_V1, KinectV1, kinect_v1
from render.views import VIEWS, transform, view_extrinsics
from training.captures import (PLAUSIBLE_HAND_AREA_MM2, PLAUSIBLE_NEAR_MM, PLAUSIBLE_PALM_WIDTH_MM,
                               load_capture)
from training.evaluate import load_uvd
from training.localize import LocalizeError, locate_hand

SPLITS = ("test", "train", "unlabeled")
SPLIT_CODES = {"test": 1, "train": 2, "unlabeled": 3}
SPLIT_FRACTIONS = {"test": 0.2, "train": 0.4, "unlabeled": 0.4}
NYU_BLOCK = 50              # consecutive NYU frames that stay in one split (neighbours are near-duplicates)
PALM = NYU14_NAMES.index("palm_center")
SHAPE_SD_RANGE = (2.0, 3.5)  # target shapes: this many source standard deviations out
EXTRA_SHAPE_DIRECTIONS = 2   # besides size, this many other shape directions are pushed out


class TargetError(ValueError):
    """Missing or unusable input for the target domain; the message names the file."""


# --- poses ------------------------------------------------------------------------------------
def split_nyu(n_frames: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint NYU frame indices per split: blocks of NYU_BLOCK consecutive frames are dealt out
    by a seeded shuffle; within a split the frames are in a seeded random order."""
    rng = np.random.default_rng([seed, 0, 0])
    blocks = rng.permutation(-(-n_frames // NYU_BLOCK))
    bounds = np.cumsum([0] + [SPLIT_FRACTIONS[s] for s in SPLITS])
    out = {}
    for k, split in enumerate(SPLITS):
        mine = blocks[int(round(bounds[k] * len(blocks))):int(round(bounds[k + 1] * len(blocks)))]
        frames = np.concatenate([np.arange(b * NYU_BLOCK, min((b + 1) * NYU_BLOCK, n_frames)) for b in mine])
        out[split] = np.random.default_rng([seed, 0, k + 1]).permutation(frames)
    return out


def load_nyu_labels(path: Path) -> np.ndarray:
    try:
        return load_uvd(path, len(NYU14_NAMES))
    except ValueError as err:
        raise TargetError(str(err)) from None


@dataclass
class FittedPoses:
    """NYU frames fitted by the mean-shape hand: the pose and the palm centre it put them at."""

    nyu_index: np.ndarray   # (N,) NYU test frame
    poses: PoseBatch        # betas are zero (pose-only fit)
    palm_m: np.ndarray      # (N, 3) fitted palm centre, camera metres
    residual_mm: np.ndarray  # (N,) mean joint residual of the fit

    @staticmethod
    def concat(parts: list["FittedPoses"]) -> "FittedPoses":
        return FittedPoses(np.concatenate([p.nyu_index for p in parts]), PoseBatch.concat([p.poses for p in parts]),
                           np.concatenate([p.palm_m for p in parts]), np.concatenate([p.residual_mm for p in parts]))


def fit_nyu(model: HandModel, prior: PosePrior, labels_uvd: np.ndarray, frames: np.ndarray,
            steps: int) -> FittedPoses:
    """Pose-only fit of NYU frames (single torch thread, so the result does not depend on the machine's cores)."""
    xyz = uvd_to_xyz(labels_uvd[frames], NYU_KINECT) / 1000.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(model, prior, xyz, joint_set="nyu14", steps=steps)
        with torch.no_grad():
            out = model.keypoints(torch.from_numpy(result.poses.hand_pose), torch.from_numpy(result.poses.betas),
                                  torch.from_numpy(result.poses.global_orient), torch.from_numpy(result.transl).float())
    finally:
        torch.set_num_threads(threads)
    return FittedPoses(np.asarray(frames), result.poses, out.nyu14[:, PALM].double().numpy(),
                       result.residual.mean(1) * 1000.0)


def target_betas(rng: np.random.Generator, num_betas: int) -> np.ndarray:
    """A shape outside the source's N(0, 1) (clipped at 2.5): size 2 to 3.5 sd larger or smaller,
    and EXTRA_SHAPE_DIRECTIONS further directions as far out, the rest N(0, 0.5)."""
    betas = rng.normal(0.0, 0.5, num_betas)
    sign = rng.choice([-1.0, 1.0], size=1 + EXTRA_SHAPE_DIRECTIONS)
    mag = rng.uniform(*SHAPE_SD_RANGE, size=1 + EXTRA_SHAPE_DIRECTIONS)
    dirs = np.concatenate([[0], 1 + rng.choice(num_betas - 1, EXTRA_SHAPE_DIRECTIONS, replace=False)])
    betas[dirs] = sign * mag
    return betas.astype(np.float32)


# --- real-capture hole patterns -----------------------------------------------------------------
def hole_shapes(holes: np.ndarray) -> list[np.ndarray]:
    """Each connected hole as a boolean mask of its bounding box, holding that hole's pixels only
    (another hole may reach into the box)."""
    labels, _ = ndi.label(holes)
    return [labels[box] == j for j, box in enumerate(ndi.find_objects(labels), 1)]


@dataclass
class HolePatterns:
    """Holes inside hand silhouettes of real captures: their shapes and how much of a hand they cover."""

    shapes: list[np.ndarray]      # bool masks, one per connected hole
    fractions: np.ndarray         # per real frame: hole pixels / filled silhouette pixels
    sources: list[str]

    @classmethod
    def measure(cls, captures: list[Path]) -> "HolePatterns":
        shapes, fractions, sources = [], [], []
        for root in captures:
            try:
                capture = load_capture(root)
            except ValueError as err:
                raise TargetError(str(err)) from None
            for i in range(len(capture)):
                depth = capture.depth_mm(i)
                try:
                    mask = locate_hand(depth, capture.intrinsics).mask
                except LocalizeError as err:
                    raise TargetError(f"{capture.frames[i]}: no hand found to measure holes on ({err})") from None
                filled = ndi.binary_fill_holes(mask)
                holes = filled & ~mask & (depth <= 0)
                shapes += hole_shapes(holes)
                fractions.append(holes.sum() / max(filled.sum(), 1))
                sources.append(str(capture.frames[i]))
        if not shapes:
            shapes = [np.ones((1, 1), bool)]
        return cls(shapes, np.asarray(fractions), sources)

    def summary(self) -> dict:
        sizes = np.array([s.sum() for s in self.shapes])
        return {"frames": self.sources, "holes": len(self.shapes),
                "hole_pixels_median": float(np.median(sizes)), "hole_pixels_max": int(sizes.max()),
                "hole_fraction_per_frame": [round(float(f), 6) for f in self.fractions]}

    def stamp(self, depth: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Remove depth in real hole shapes at a real frame's hole rate, centred on pixels of `region`."""
        fraction = float(self.fractions[rng.integers(len(self.fractions))])
        rows, cols = np.nonzero(region)
        budget = fraction * len(rows)
        out = depth.copy()
        removed = 0
        while removed < budget and len(rows):
            shape = self.shapes[rng.integers(len(self.shapes))]
            k = rng.integers(len(rows))
            r0, c0 = rows[k] - shape.shape[0] // 2, cols[k] - shape.shape[1] // 2
            rr, cc = np.nonzero(shape)
            rr, cc = rr + r0, cc + c0
            ok = (rr >= 0) & (rr < depth.shape[0]) & (cc >= 0) & (cc < depth.shape[1])
            out[rr[ok], cc[ok]] = 0
            removed += int(shape.sum())
        return out


# --- frames -----------------------------------------------------------------------------------
SENSOR_UNITS = 4  # Kinect devices of the target domain, each with its own parameters


def sensor_units(seed: int) -> list[KinectV1]:
    """Kinect v1 parameter sets drawn around the NYU calibration (docs/sensor.md), one per device.

    A handful of devices rather than parameters per frame: the model's noise tiles are built once
    per parameter set (render.sensor caches four), and real datasets come from a few cameras."""
    rng = np.random.default_rng([seed, 0, 99])
    return [dataclasses.replace(
        KINECT_V1,
        shift_sigma_px=float(rng.uniform(0.4, 0.8)),
        edge_drop_prob=float(rng.uniform(0.05, 0.35)),
        correlated_noise_px=float(rng.uniform(0.06, 0.14)),
        grazing_start_deg=float(rng.uniform(65.0, 76.0)),
        hole_seed_rate=float(KINECT_V1.hole_seed_rate * rng.uniform(0.5, 5.0)),
        shadow_fill_px=float(rng.uniform(1.0, 2.0))) for _ in range(SENSOR_UNITS)]


RIG_VIEW = "side"   # the second camera of the unlabeled split's rig


def rig_extrinsics(fitted: FittedPoses) -> np.ndarray:
    """4x4 (metres) from the front camera to the rig's side camera: render.views' side orbit about
    the split's median palm position, one fixed pose for every frame as a real rig has (the
    synthetic source orbits each sample's own palm instead)."""
    names = [name for name, _, _ in VIEWS]
    return view_extrinsics(np.median(fitted.palm_m, axis=0), len(VIEWS))[names.index(RIG_VIEW)]


@dataclass
class TargetFrame:
    depth_mm: np.ndarray     # (H, W) uint16
    nyu14_uvd: np.ndarray    # (14, 3) labels of the rendered hand
    pose: PoseBatch          # one pose, the target's shape
    transl_m: np.ndarray     # (3,) model translation that places the hand (camera metres)
    views: list[np.ndarray] = dataclasses.field(default_factory=list)   # (H, W) uint16 per rig view


CHECK_TRIES = 20


def plausible(depth_mm: np.ndarray, cam: Intrinsics) -> bool:
    """Would training.captures' unit check accept the hand training.localize finds in this frame?"""
    try:
        loc = locate_hand(depth_mm, cam)
    except LocalizeError:
        return False
    return all(lo <= value <= hi for value, (lo, hi) in (
        (loc.near_mm, PLAUSIBLE_NEAR_MM), (loc.palm_width_mm, PLAUSIBLE_PALM_WIDTH_MM),
        (loc.hand_area_mm2, PLAUSIBLE_HAND_AREA_MM2)))


def in_front(verts: np.ndarray, faces: np.ndarray, near: float, far: float) -> tuple[np.ndarray, np.ndarray]:
    """The faces lying wholly between `near` and `far` metres, and their vertices. The scene is
    built for the front camera; a rig camera at the side can have a wall or table reach past it,
    closer than any depth sensor measures."""
    z = verts[:, 2]
    kept = faces[((z > near) & (z < far))[faces].all(1)]
    used, inverse = np.unique(kept, return_inverse=True)
    return verts[used], inverse.reshape(kept.shape)


class TargetSynthesizer:
    """Renders target frames (full frames, one GL context per instance, so one per process).

    Frame i of a split draws everything from `np.random.default_rng([seed, SPLIT_CODES[split], i])`
    (its rig views from `[seed, SPLIT_CODES[split], i, 1]`), so it does not depend on which chunk or
    process renders it."""

    def __init__(self, model: HandModel, holes: HolePatterns, seed: int, cam: Intrinsics = NYU_KINECT) -> None:
        self.model, self.holes, self.seed, self.cam = model, holes, seed, cam
        self.prior = PosePrior(model)
        self.units = sensor_units(seed)
        self.faces = np.asarray(model.faces, dtype=np.int64)
        self.renderer = DepthRenderer(atlas_width=1024, atlas_height=512, znear=0.1, zfar=5.0)

    def close(self) -> None:
        self.renderer.close()

    def frames(self, split: str, start: int, stop: int, fitted: FittedPoses,
               checked: frozenset[int] = frozenset(), rig: tuple[np.ndarray, ...] = ()) -> list[TargetFrame]:
        """Frames start..stop-1, each also seen by the cameras whose extrinsics (metres) `rig`
        gives; those in `checked` are redrawn (same generator, next draws) until the hand that
        training.localize finds passes training.captures' unit check, which load_capture applies
        to a capture's first, middle and last frame."""
        rngs = [np.random.default_rng([self.seed, SPLIT_CODES[split], i]) for i in range(start, stop)]
        poses, palms = [], []
        for i, rng in zip(range(start, stop), rngs):
            k = i % len(fitted.poses)
            pose, palm = fitted.poses[k:k + 1], fitted.palm_m[k].copy()
            if i >= len(fitted.poses):  # a pool smaller than the split: vary the pose on later passes
                pose = self.prior.perturb(pose, rng)
                palm = palm + rng.normal(0.0, 0.02, 3)
            poses.append(PoseBatch(pose.hand_pose, target_betas(rng, self.model.num_betas)[None],
                                   pose.global_orient))
            palms.append(palm)
        batch = PoseBatch.concat(poses)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                out = self.model(torch.from_numpy(batch.hand_pose), torch.from_numpy(batch.betas),
                                 torch.from_numpy(batch.global_orient))
        finally:
            torch.set_num_threads(threads)
        verts, joints, nyu14 = (t.double().numpy() for t in (out.vertices, out.joints, out.nyu14))
        frames = []
        for j, rng in enumerate(rngs):
            args = (batch[j:j + 1], palms[j], verts[j], joints[j], nyu14[j])
            frame, scene = self._frame(rng, *args)
            for _ in range(CHECK_TRIES if start + j in checked else 0):
                if plausible(frame.depth_mm, self.cam):
                    break
                frame, scene = self._frame(rng, *args)
            # The rig films the accepted frame; each camera is its own Kinect unit (noise, holes).
            view_rng = np.random.default_rng([self.seed, SPLIT_CODES[split], start + j, 1])
            frame.views = [self._shoot(view_rng, *scene, ext)[0] for ext in rig]
            frames.append(frame)
        return frames

    def _frame(self, rng: np.random.Generator, pose: PoseBatch, palm: np.ndarray, verts: np.ndarray,
               joints: np.ndarray, nyu14: np.ndarray) -> tuple[TargetFrame, tuple]:
        """The front camera's frame, and the scene (the `_shoot` arguments) for the rig's cameras."""
        # The fit placed the mean-shape hand; the target hand keeps its palm centre there.
        shift = palm - nyu14[PALM]
        verts, joints, nyu14 = verts + shift, joints + shift, nyu14 + shift
        params = scene_mod.SceneParams.sample(rng)
        depth, uvd = self._shoot(rng, verts, joints, nyu14, palm, params, np.eye(4))
        frame = TargetFrame(depth, uvd, pose, shift)
        return frame, (verts, joints, nyu14, palm, params)

    def _shoot(self, rng: np.random.Generator, verts: np.ndarray, joints: np.ndarray, nyu14: np.ndarray,
               palm: np.ndarray, params: "scene_mod.SceneParams", extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth (sensor model and real-capture holes) and NYU-14 uvd of the hand and its scene
        (front-camera metres) seen by the camera `extrinsics` leads to."""
        verts_s, faces = scene_mod.merge([(verts, self.faces)] + scene_mod.scene_meshes(joints, palm, params))
        mesh = in_front(transform(verts_s, extrinsics), faces, scene_mod.MIN_DEPTH_M, self.renderer.zfar - 0.1)
        exact = self.renderer.render([mesh], [Window.full(self.cam)], self.cam)[0]
        unit = self.units[int(rng.integers(len(self.units)))]
        depth = kinect_v1(exact, self.cam, (0, 0), rng, unit)
        uvd = xyz_to_uvd(transform(nyu14, extrinsics) * 1000.0, self.cam)
        return self.holes.stamp(depth, self._hand_region(depth, uvd), rng), uvd

    def _hand_region(self, depth: np.ndarray, uvd: np.ndarray) -> np.ndarray:
        """Measured pixels near the labelled hand: inside the joints' box (+12 px), within 80 mm of the palm."""
        h, w = depth.shape
        u0, v0 = np.clip(np.floor(uvd[:, :2].min(0)) - 12, 0, [w, h]).astype(int)
        u1, v1 = np.clip(np.ceil(uvd[:, :2].max(0)) + 13, 0, [w, h]).astype(int)
        region = np.zeros(depth.shape, bool)
        box = depth[v0:v1, u0:u1].astype(np.float32)
        region[v0:v1, u0:u1] = (box > 0) & (np.abs(box - uvd[PALM, 2]) < 80.0)
        return region


def rig_views(rig: tuple[np.ndarray, ...]) -> list[dict]:
    """capture.json "views" of the rig cameras (their frames in a subfolder named like the view)."""
    out = []
    for ext in rig:
        t = np.array(ext, dtype=np.float64)
        t[:3, 3] *= 1000.0
        out.append({"name": RIG_VIEW, "folder": RIG_VIEW, "intrinsics": NYU_KINECT.to_dict(),
                    "extrinsics_mm": [[round(float(x), 9) for x in row] for row in t]})
    return out


def finish_capture(tmp: Path, labels_uvd: list[np.ndarray] | None, meta: dict) -> None:
    """Complete the capture folder `tmp` whose frames are written (training.captures format)."""
    capture = {"sensor": meta.get("sensor", ""), "intrinsics": NYU_KINECT.to_dict(), "depth_encoding": "uint16",
               "depth_scale_mm": 1.0, "hand": "right"}
    if labels_uvd is not None:
        lines = [" ".join(f"{x:.3f}" for x in np.asarray(uvd).reshape(-1)) for uvd in labels_uvd]
        (tmp / "labels_uvd.txt").write_text("\n".join(lines) + "\n")
        capture.update(labels="labels_uvd.txt", label_joints="nyu14")
    capture.update({k: v for k, v in meta.items() if k != "sensor"})
    (tmp / "capture.json").write_text(json.dumps(capture, indent=1) + "\n")


LOCATE_TOLERANCE_MM = 40.0


def locate_error_mm(depth_mm: np.ndarray, labels_uvd: np.ndarray, cam: Intrinsics = NYU_KINECT) -> float:
    """3-D distance from training.localize's hand centre to the palm-centre label; inf when no hand is found."""
    try:
        loc = locate_hand(depth_mm, cam)
    except LocalizeError:
        return float("inf")
    return float(np.linalg.norm(uvd_to_xyz(loc.centre_uvd, cam) - uvd_to_xyz(labels_uvd[PALM], cam)))


def summarize_locate(errors: list[float], tolerance_mm: float = LOCATE_TOLERANCE_MM) -> dict:
    """Hit rate: the located centre lies within `tolerance_mm` of the palm centre."""
    e = np.asarray(errors, dtype=np.float64)
    finite = e[np.isfinite(e)]
    return {"frames": int(len(e)), "tolerance_mm": tolerance_mm,
            "hit_rate": float((e < tolerance_mm).mean()) if len(e) else 0.0,
            "not_found": int((~np.isfinite(e)).sum()),
            "median_error_mm": round(float(np.median(finite)), 2) if len(finite) else None}
