"""Fit hand poses (and optionally shapes) to 3D joint labels: batched inverse kinematics.

The anatomical angles are optimised through a sigmoid onto their limits, so every fitted pose
lies inside the prior's limits by construction. The global rotation uses the continuous 6-D
representation (Zhou et al. 2019), initialised by a Kabsch alignment of the rest pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .joints import JOINT_NAMES, NYU14_NAMES
from .model import HandModel
from .prior import PoseBatch, PosePrior, matrix_to_rotvec

# Joints that move little with finger articulation: used for the initial rigid alignment.
_ANCHORS = {"nyu14": ["wrist_ulnar", "wrist_radial", "palm_center", "index_pip", "middle_pip", "ring_pip", "pinky_pip"],
            "21": ["wrist", "index_mcp", "middle_mcp", "ring_mcp", "pinky_mcp", "thumb_cmc"]}


@dataclass
class FitResult:
    poses: PoseBatch
    transl: np.ndarray  # (N, 3) metres
    residual: np.ndarray  # (N, J) per-joint distance to the targets, metres


def _kabsch(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations R and translations t with dst ~ src @ R.T + t, batched over the first axis."""
    cs, cd = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    u, _, vt = torch.linalg.svd((src - cs).transpose(1, 2) @ (dst - cd))
    d = torch.sign(torch.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = vt.transpose(1, 2) @ fix @ u.transpose(1, 2)
    return R, (cd - cs @ R.transpose(1, 2)).squeeze(1)


def _rot6d(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., :3], x[..., 3:]
    e1 = torch.nn.functional.normalize(a, dim=-1)
    e2 = torch.nn.functional.normalize(b - (e1 * b).sum(-1, keepdim=True) * e1, dim=-1)
    return torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], -1)


def fit(model: HandModel, prior: PosePrior, targets: np.ndarray, joint_set: str = "nyu14",
        fit_shape: bool = False, steps: int = 400, lr: float = 0.05, batch_size: int = 2048,
        progress: bool = False) -> FitResult:
    """targets: (N, J, 3) metres, OpenCV camera axes, J = 14 (NYU14_NAMES) or 21 (JOINT_NAMES)."""
    names = {"nyu14": NYU14_NAMES, "21": JOINT_NAMES}[joint_set]
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 3 or targets.shape[1:] != (len(names), 3):
        raise ValueError(f"targets must be (N, {len(names)}, 3) for the {joint_set} joint set, got {targets.shape}")
    chunks = []
    starts = range(0, len(targets), batch_size)
    # Counted in optimiser steps: one chunk of 2,048 frames takes minutes, and a bar of chunks
    # shows no rate until the first ends.
    with tqdm(total=steps * len(starts), desc=f"fitting {len(targets)} frames", unit="step",
              disable=not progress) as bar:
        for s in starts:
            chunks.append(_fit_chunk(model, prior, torch.from_numpy(targets[s:s + batch_size]), names,
                                     joint_set, fit_shape, steps, lr, bar))
    return FitResult(PoseBatch.concat([c.poses for c in chunks]), np.concatenate([c.transl for c in chunks]),
                     np.concatenate([c.residual for c in chunks]))


def _fit_chunk(model, prior, target, names, joint_set, fit_shape, steps, lr, bar: tqdm) -> FitResult:
    n = len(target)
    lo = torch.tensor(prior.limits[..., 0], dtype=torch.float32)
    hi = torch.tensor(prior.limits[..., 1], dtype=torch.float32)
    bases = torch.tensor(prior.bases, dtype=torch.float32)
    pick = lambda out: out.nyu14 if joint_set == "nyu14" else out.joints  # noqa: E731

    # Start from zero angles (clamped inside the limits) and a rigid alignment of the rest pose.
    start = ((0.0 - lo) / (hi - lo)).clamp(0.05, 0.95)
    raw = torch.logit(start).expand(n, 15, 3).clone().requires_grad_(True)
    betas = torch.zeros(n, model.num_betas, requires_grad=fit_shape)
    with torch.no_grad():
        rest = pick(model.keypoints(torch.zeros(1, 15, 3)))
        wrist = model.rest_joints()[0]
        anchor = [names.index(a) for a in _ANCHORS[joint_set]]
        R, t = _kabsch(rest[:, anchor].expand(n, -1, -1), target[:, anchor])
    rot = R[..., :2].transpose(1, 2).reshape(n, 6).clone().requires_grad_(True)
    # The model rotates about its wrist: transl = t + R @ wrist - wrist.
    transl = (t + wrist @ R.transpose(1, 2) - wrist).clone().requires_grad_(True)
    # Translations are in metres and start close (Kabsch): smaller steps than for angles.
    groups = [{"params": [raw, rot]}, {"params": [transl], "lr": lr * 0.1}] + ([{"params": [betas]}] if fit_shape else [])
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def predict():
        angles = lo + (hi - lo) * torch.sigmoid(raw)
        hand_pose = torch.einsum("jab,njb->nja", bases, angles)
        Rm = _rot6d(rot)
        return angles, hand_pose, Rm

    for step in range(steps):
        angles, hand_pose, Rm = predict()
        out = model.keypoints(hand_pose, betas, None, None)
        joints = pick(out)
        joints = (joints - wrist) @ Rm.transpose(1, 2) + wrist + transl[:, None]
        loss = ((joints - target) ** 2).sum(-1).mean()
        if fit_shape:
            loss = loss + 1e-5 * (betas ** 2).mean()
        opt.zero_grad()
        (loss * n).backward()
        opt.step()
        sched.step()
        bar.update()

    with torch.no_grad():
        angles, hand_pose, Rm = predict()
        joints = (pick(model.keypoints(hand_pose, betas)) - wrist) @ Rm.transpose(1, 2) + wrist + transl[:, None]
        residual = (joints - target).norm(dim=-1).numpy()
        # The model pivots about its shaped wrist, the fit pivoted about the mean-shape wrist.
        shift = model.keypoints(torch.zeros(n, 15, 3), betas).joints[:, 0] - wrist
        transl = transl + torch.einsum("nab,nb->na", Rm, shift) - shift
    orient = matrix_to_rotvec(Rm.detach().numpy())
    poses = PoseBatch(hand_pose.detach().numpy().astype(np.float32), betas.detach().numpy().astype(np.float32),
                      orient.astype(np.float32))
    return FitResult(poses, transl.detach().numpy(), residual)
