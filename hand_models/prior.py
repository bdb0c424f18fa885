"""Anatomically valid random hand poses: limits, DIP-PIP coupling, grasp synergies, shapes,
collision rejection and camera-facing global orientations.

Each finger joint rotates by an axis-angle vector written in an anatomical basis built from the
model's rest joints: flexion (curling towards the palm, positive), abduction (about the palm
normal) and twist (about the bone). Limits bound these three components. The basis is computed
from the joints, so the same prior serves the open hand and official MANO files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .joints import JOINT_INDEX, MANO_JOINT_NAMES
from .model import HandModel

D = np.pi / 180.0
_FINGERS = ("index", "middle", "ring", "pinky")
# Per MANO joint 1..15: (flexion, abduction, twist) limits in degrees.
_LIMITS_DEG = {
    "mcp": ((-25, 90), (-22, 22), (-12, 12)),
    "pip": ((-5, 110), (-8, 8), (-8, 8)),
    "dip": ((-10, 90), (-8, 8), (-8, 8)),
    "thumb_cmc": ((-35, 60), (-40, 45), (-40, 40)),
    "thumb_mcp": ((-20, 70), (-18, 18), (-18, 18)),
    "thumb_ip": ((-20, 90), (-8, 8), (-8, 8)),
}
# Grasp synergies: (MCP flexion, PIP flexion, spread) per finger index..pinky in degrees, and thumb
# (CMC flexion, CMC abduction, MCP flexion, IP flexion); DIP follows PIP through the coupling.
SYNERGIES: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float, float]]] = {
    "flat":     (((0, 0, 0),) * 4, (0, 0, 0, 0)),
    "spread":   (((-5, 0, 15), (-5, 0, 3), (-5, 0, -10), (-5, 0, -18)), (-20, -25, 0, 0)),
    "relaxed":  (((25, 35, 3), (30, 40, 0), (35, 45, -3), (40, 50, -6)), (10, 10, 15, 15)),
    "fist":     (((85, 100, 0), (85, 100, 0), (85, 100, 0), (85, 100, 0)), (20, 30, 40, 40)),
    "point":    (((0, 5, 0), (85, 100, 0), (85, 100, 0), (85, 100, 0)), (20, 30, 40, 40)),
    "victory":  (((0, 0, 12), (0, 0, -8), (85, 100, 0), (85, 100, 0)), (30, 0, 40, 40)),
    "pinch":    (((45, 45, 0), (20, 20, 0), (15, 15, 0), (10, 10, 0)), (35, 30, 20, 30)),
    "tripod":   (((45, 50, 0), (45, 50, 0), (20, 20, 0), (20, 25, 0)), (40, 30, 25, 25)),
    "cylinder": (((55, 60, 0), (55, 60, 0), (55, 60, 0), (55, 60, 0)), (0, -15, 40, 40)),
    "claw":     (((-10, 80, 5), (-10, 80, 0), (-10, 80, -5), (-10, 80, -10)), (10, 0, 20, 40)),
    "thumbs_up": (((85, 100, 0), (85, 100, 0), (85, 100, 0), (85, 100, 0)), (-20, -20, -10, -5)),
    "ok":       (((55, 55, 0), (5, 5, 0), (5, 5, -5), (5, 5, -10)), (35, 30, 20, 30)),
}
_SYNERGY_WEIGHTS = {"flat": 1.0, "spread": 1.0, "relaxed": 2.0, "fist": 1.0, "point": 1.0,
                    "victory": 0.7, "pinch": 1.0, "tripod": 0.7, "cylinder": 1.0, "claw": 0.5,
                    "thumbs_up": 0.5, "ok": 0.7}


def _kind(name: str) -> str:
    return name if name.startswith("thumb") else name.split("_")[1]


@dataclass
class PoseBatch:
    """Poses as MANO parameters: hand_pose (n, 15, 3) axis-angle, betas (n, K), global_orient
    (n, 3) axis-angle taking the model frame into OpenCV camera axes (x right, y down, z forward)."""
    hand_pose: np.ndarray
    betas: np.ndarray
    global_orient: np.ndarray

    def __len__(self) -> int:
        return len(self.hand_pose)

    def __getitem__(self, index) -> "PoseBatch":
        return PoseBatch(self.hand_pose[index], self.betas[index], self.global_orient[index])

    @staticmethod
    def concat(batches: list["PoseBatch"]) -> "PoseBatch":
        return PoseBatch(*(np.concatenate([getattr(b, f) for b in batches]) for f in
                           ("hand_pose", "betas", "global_orient")))


def _rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    k = v / np.maximum(angle, 1e-12)
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    a = angle[..., None]
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


class PosePrior:
    """Samples valid poses for one hand model; `anatomical`/`from_anatomical` convert to and from
    the limited (flexion, abduction, twist) components."""

    def __init__(self, model: HandModel, shape_sd: float = 1.0, shape_clip: float = 2.5,
                 collision_tolerance_m: float = 0.004, palm_facing: float = 0.75,
                 forearm_towards_camera_deg: float = 20.0,
                 synergy_noise_deg: float = 12.0) -> None:
        self.model = model
        self.shape_sd, self.shape_clip = shape_sd, shape_clip
        self.collision_tolerance_m = collision_tolerance_m
        self.palm_facing = palm_facing
        self.max_fingers_away = np.sin(np.radians(forearm_towards_camera_deg))
        self.synergy_noise = synergy_noise_deg * D
        joints = model.rest_joints().double().numpy()
        self.bases = self._anatomical_bases(joints)  # (15, 3, 3): columns flexion, abduction, twist
        self.limits = np.array([_LIMITS_DEG[_kind(n)] for n in MANO_JOINT_NAMES[1:]]) * D  # (15, 3, 2)
        self.palm_frame = self._palm_frame(joints)  # rows: fingers, towards pinky, palm normal
        self._synergy_names = list(SYNERGIES)
        w = np.array([_SYNERGY_WEIGHTS[n] for n in self._synergy_names])
        self._synergy_p = w / w.sum()
        self._sphere_weights, self._sphere_reach, self._sphere_pairs = self._spheres()

    # --- frames -------------------------------------------------------------------------
    @staticmethod
    def _palm_frame(j: np.ndarray) -> np.ndarray:
        f = j[JOINT_INDEX["middle_mcp"]] - j[JOINT_INDEX["wrist"]]
        f /= np.linalg.norm(f)
        n = np.cross(j[JOINT_INDEX["index_mcp"]] - j[JOINT_INDEX["pinky_mcp"]], f)
        n -= f * (n @ f)
        n /= np.linalg.norm(n)
        return np.stack([f, np.cross(n, f), n])

    def _anatomical_bases(self, j: np.ndarray) -> np.ndarray:
        frame = self._palm_frame(j)
        palm_centre = j[JOINT_INDEX["wrist"]] + 0.6 * (j[JOINT_INDEX["middle_mcp"]] - j[JOINT_INDEX["wrist"]])
        bases = []
        for name in MANO_JOINT_NAMES[1:]:
            finger, _ = name.split("_")
            chain = [f"{finger}_{k}" for k in (("cmc", "mcp", "ip", "tip") if finger == "thumb" else ("mcp", "pip", "dip", "tip"))]
            here = j[JOINT_INDEX[name]]
            twist = j[JOINT_INDEX[chain[chain.index(name) + 1]]] - here
            twist /= np.linalg.norm(twist)
            # Flexion brings the bone towards the palm side (thumb: towards the palm centre).
            towards = palm_centre - here if finger == "thumb" else frame[2]
            towards = towards - twist * (towards @ twist)
            towards /= np.linalg.norm(towards)
            flexion = np.cross(twist, towards)
            abduction = np.cross(twist, flexion)
            bases.append(np.stack([flexion, abduction, twist], 1))
        return np.array(bases)

    def anatomical(self, hand_pose: np.ndarray) -> np.ndarray:
        """(n, 15, 3) axis-angle -> (n, 15, 3) (flexion, abduction, twist) in radians."""
        return np.einsum("jab,nja->njb", self.bases, hand_pose)

    def from_anatomical(self, angles: np.ndarray) -> np.ndarray:
        return np.einsum("jab,njb->nja", self.bases, angles)

    def within_limits(self, hand_pose: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
        a = self.anatomical(hand_pose)
        return np.all((a >= self.limits[..., 0] - tolerance) & (a <= self.limits[..., 1] + tolerance), axis=(1, 2))

    def clip(self, angles: np.ndarray) -> np.ndarray:
        return np.clip(angles, self.limits[..., 0], self.limits[..., 1])

    # --- sampling -------------------------------------------------------------------------
    def _synergy_angles(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Mixtures of two grasp synergies plus independent noise, DIP coupled to PIP."""
        protos = np.zeros((len(self._synergy_names), 15, 3))
        for k, name in enumerate(self._synergy_names):
            fingers, thumb = SYNERGIES[name]
            for f, (mcp, pip, spread) in zip(_FINGERS, fingers):
                protos[k, MANO_JOINT_NAMES.index(f"{f}_mcp") - 1] = (mcp, spread, 0)
                protos[k, MANO_JOINT_NAMES.index(f"{f}_pip") - 1] = (pip, 0, 0)
            cmc_f, cmc_a, mcp_f, ip_f = thumb
            protos[k, MANO_JOINT_NAMES.index("thumb_cmc") - 1] = (cmc_f, cmc_a, 0)
            protos[k, MANO_JOINT_NAMES.index("thumb_mcp") - 1] = (mcp_f, 0, 0)
            protos[k, MANO_JOINT_NAMES.index("thumb_ip") - 1] = (ip_f, 0, 0)
        protos *= D
        a = rng.choice(len(protos), n, p=self._synergy_p)
        b = rng.choice(len(protos), n, p=self._synergy_p)
        t = rng.beta(0.7, 0.7, n)[:, None, None]
        angles = (1 - t) * protos[a] + t * protos[b]
        angles = angles + rng.normal(0.0, 1.0, angles.shape) * self.synergy_noise * [1.0, 0.5, 0.4]
        for f in _FINGERS:  # DIP flexion ~ 2/3 PIP flexion (tendon coupling)
            pip, dip = MANO_JOINT_NAMES.index(f"{f}_pip") - 1, MANO_JOINT_NAMES.index(f"{f}_dip") - 1
            angles[:, dip, 0] = 2.0 / 3.0 * angles[:, pip, 0] + rng.normal(0, 6 * D, n)
        return self.clip(angles)

    def _orientations(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Model -> camera rotations: palm towards the camera (with tilts up to 80 degrees) for
        `palm_facing` of the samples, any direction for the rest; fingers roughly up, rolled
        within +-150 degrees of up. A third-person camera sees the forearm go back towards the
        body: orientations whose forearm points more than `forearm_towards_camera_deg` towards
        the camera are drawn again (an egocentric camera would want this off)."""
        # Camera frame: fingers up (-y), palm normal towards the camera (-z).
        target = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
        base = target.T @ self.palm_frame  # maps model vectors to camera vectors
        out = np.empty((n, 3, 3))
        todo = np.arange(n)
        while todo.size:
            m = todo.size
            facing = rng.random(m) < self.palm_facing
            tilt = np.where(facing, np.arccos(1 - rng.random(m) * (1 - np.cos(80 * D))),
                            np.arccos(1 - 2 * rng.random(m)))
            azim = rng.uniform(0, 2 * np.pi, m)
            axis = np.stack([np.cos(azim), np.sin(azim), np.zeros(m)], 1)
            roll = rng.normal(0, 45 * D, m).clip(-150 * D, 150 * D)
            R = (_rotvec_to_matrix(axis * tilt[:, None])
                 @ _rotvec_to_matrix(np.array([0, 0, 1.0]) * roll[:, None]) @ base)
            fingers_away = (R @ self.palm_frame[0])[:, 2]
            ok = fingers_away <= self.max_fingers_away
            out[todo[ok]] = R[ok]
            todo = todo[~ok]
        return matrix_to_rotvec(out)

    def sample(self, n: int, rng: np.random.Generator) -> PoseBatch:
        """n poses that pass the collision test (rejection sampling)."""
        out, have = [], 0
        while have < n:
            m = int((n - have) * 1.25) + 8
            angles = self._synergy_angles(m, rng)
            betas = (rng.normal(0.0, self.shape_sd, (m, self.model.num_betas))
                     .clip(-self.shape_clip, self.shape_clip))
            batch = PoseBatch(self.from_anatomical(angles).astype(np.float32), betas.astype(np.float32),
                              self._orientations(m, rng).astype(np.float32))
            keep = self.collision_free(batch)
            out.append(batch[keep])
            have += int(keep.sum())
        return PoseBatch.concat(out)[:n]

    def perturb(self, batch: PoseBatch, rng: np.random.Generator, angle_sd_deg: float = 5.0,
                orient_sd_deg: float = 10.0) -> PoseBatch:
        """Small variations of given poses (e.g. a fitted pose library), kept within the limits."""
        angles = self.clip(self.anatomical(batch.hand_pose) + rng.normal(0, angle_sd_deg * D, batch.hand_pose.shape))
        noise = _rotvec_to_matrix(rng.normal(0, orient_sd_deg * D, (len(batch), 3)))
        orient = matrix_to_rotvec(noise @ _rotvec_to_matrix(batch.global_orient.astype(np.float64)))
        return PoseBatch(self.from_anatomical(angles).astype(np.float32), batch.betas.copy(),
                         orient.astype(np.float32))

    # --- collisions -------------------------------------------------------------------------
    def collision_free(self, batch: PoseBatch) -> np.ndarray:
        """False where spheres along two different fingers (or thumb and palm) overlap by more
        than the tolerance. Radii are fixed proxies: 9 mm fingers, 10 mm thumb, 14 mm palm."""
        with torch.no_grad():
            j = self.model.keypoints(torch.from_numpy(batch.hand_pose), torch.from_numpy(batch.betas)).joints
        centres = torch.einsum("sj,njc->nsc", self._sphere_weights, j)
        a, b = self._sphere_pairs
        depth = self._sphere_reach - (centres[:, a] - centres[:, b]).norm(dim=-1)
        return (depth.max(dim=1).values <= self.collision_tolerance_m).numpy()

    @staticmethod
    def _spheres() -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Sphere centres as fixed blends of the 21 joints, their radii, and the pairs to test."""
        rows, radii, owner = [], [], []

        def sphere(a: str, b: str, t: float, radius: float, k: int) -> None:
            w = np.zeros(21)
            w[JOINT_INDEX[a]] += 1 - t
            w[JOINT_INDEX[b]] += t
            rows.append(w)
            radii.append(radius)
            owner.append(k)

        sphere("thumb_mcp", "thumb_mcp", 0.0, 0.010, 0)
        for a, b in (("thumb_mcp", "thumb_ip"), ("thumb_ip", "thumb_tip")):
            for t in (0.25, 0.5, 0.75, 1.0):
                sphere(a, b, t, 0.010, 0)
        for k, f in enumerate(_FINGERS, start=1):
            for a, b in zip(("mcp", "pip", "dip"), ("pip", "dip", "tip")):
                for t in (0.25, 0.5, 0.75, 1.0):
                    sphere(f"{f}_{a}", f"{f}_{b}", t, 0.009, k)
        for f in _FINGERS:  # palm: spheres from the wrist towards each MCP
            for t in (0.35, 0.7):
                sphere("wrist", f"{f}_mcp", t, 0.014, 5)
        owner = np.array(owner)
        # Fingers against each other; the thumb also against the palm (fingertips may touch it).
        pair = (owner[:, None] != owner[None, :]) & ((owner[:, None] < 5) & (owner[None, :] < 5) |
                                                     (owner[:, None] == 0) | (owner[None, :] == 0))
        a, b = np.nonzero(np.triu(pair))
        r = np.array(radii)
        return (torch.tensor(np.array(rows), dtype=torch.float32), torch.tensor(r[a] + r[b], dtype=torch.float32),
                (torch.from_numpy(a), torch.from_numpy(b)))
