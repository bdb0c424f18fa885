"""AIGN-style training (adversarial inverse graphics, after Tung et al. 2017): learn pose on
unlabeled real frames by asking two things of each prediction.

(i) Render it back. The predicted skeleton becomes a hand made of spheres (a few per bone, radii
from finger to palm size), rendered differentiably into the crop and compared with the observed
depth: the rendered hand must lie where something was observed (silhouette), its surface must
agree with the observed surface where both exist, and observed points near the hand must lie
on it (a truncated data-to-model distance, so forearm, body and table pixels further than
`TRUNCATE_MM` from the model do not pull on it).
(ii) Judge it. A discriminator learns to tell predicted poses from the synthetic training poses
(the collection the renderer drew from), wrist-relative so that the crop offset of a detected
hand does not give predictions away; the estimator learns to make its predictions pass.

Geometry: everything happens in crop space, where labels and depth share units ((mm - centre) /
half cube, training.crop). A crop pixel at column k shows x = (k - (S-1)/2) / (S/2) under the
orthographic approximation of the crop (exact on the optical axis at the crop centre's depth;
the perspective correction, Zc / (Zc + half * z), is below 6 % for a hand within +-45 mm of the
centre at 700 mm, i.e. under 2 pixels at the edge of a 64 px crop). training.crop.CropGeometry
maps crop space back to the capture's pixels and millimetres exactly for evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hand_models.joints import NYU14_NAMES
from training.config import ConfigError, TrainConfig
from training.methods import Method, num_joints, register

# Loss weights are settings (training.config: w_silhouette, w_surface, w_data, w_pose_adversarial).
TRUNCATE_MM = 30.0       # observed points further from the model are someone else's surface
SOFTNESS_PX = 1.0        # silhouette edge width
EDGE_INSET = 2.0         # the soft edge sits this many widths inside the sphere's outline, so a
                         # correct pose pays (almost) nothing for the edge: outside mass ~0.13 px

# NYU-14 skeleton as bones (a, b, radius at a in mm, radius at b in mm). NYU-14 has no finger
# base joints, so each finger runs from its middle knuckle to the palm centre: the cone this
# makes stands in for the palm between the knuckles. Radii are the depth of the observed surface
# in front of each joint (about 10 mm at finger joints, 15 mm at the palm: the palm is thin, so
# its spheres stay small and the palm's width comes from the fan of finger cones).
_I = {n: i for i, n in enumerate(NYU14_NAMES)}
NYU14_BONES: tuple[tuple[int, int, float, float], ...] = tuple(
    (_I[a], _I[b], ra, rb) for a, b, ra, rb in (
        ("pinky_tip", "pinky_pip", 7, 8), ("pinky_pip", "palm_center", 8, 15),
        ("ring_tip", "ring_pip", 8, 9), ("ring_pip", "palm_center", 9, 15),
        ("middle_tip", "middle_pip", 8, 9), ("middle_pip", "palm_center", 9, 15),
        ("index_tip", "index_pip", 8, 9), ("index_pip", "palm_center", 9, 15),
        ("thumb_tip", "thumb_ip", 9, 10), ("thumb_ip", "thumb_mcp", 10, 12), ("thumb_mcp", "palm_center", 12, 15),
        ("wrist_ulnar", "palm_center", 15, 15), ("wrist_radial", "palm_center", 15, 15),
        ("wrist_ulnar", "wrist_radial", 15, 15)))
SPHERES_PER_BONE = 4     # at t = 0, 1/4, 1/2, 3/4 from a to b (b is covered by the next bone)


def skeleton_spheres(joints: torch.Tensor, half_mm: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 14, 3) crop-space NYU-14 joints -> sphere centres (B, K, 3) and radii in crop units,
    (B, K) or, for one `half_mm` for all, (1, K); the palm centre, where the chains end, gets a
    sphere of its own. `half_mm` is each crop's half cube edge (B,): millimetres per crop unit."""
    bones = NYU14_BONES
    t = torch.arange(SPHERES_PER_BONE, dtype=joints.dtype, device=joints.device) / SPHERES_PER_BONE
    a = joints[:, [b[0] for b in bones]]                        # (B, n, 3)
    b = joints[:, [b[1] for b in bones]]
    centres = a[:, :, None] + (b - a)[:, :, None] * t[None, None, :, None]   # (B, n, T, 3)
    ra = torch.tensor([b[2] for b in bones], dtype=joints.dtype, device=joints.device)
    rb = torch.tensor([b[3] for b in bones], dtype=joints.dtype, device=joints.device)
    radii = ra[:, None] + (rb - ra)[:, None] * t[None, :]
    palm = _I["palm_center"]
    centres = torch.cat([centres.flatten(1, 2), joints[:, palm:palm + 1]], dim=1)
    radii = torch.cat([radii.flatten(), radii.new_tensor([max(b[3] for b in bones)])])
    return centres, radii[None] / _per_crop(half_mm, joints)


def _per_crop(half_mm: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Half cube edges as a (B, 1) column (or (1, 1) for one value)."""
    return torch.as_tensor(half_mm, dtype=like.dtype, device=like.device).reshape(-1, 1)


def pixel_grid(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(S*S, 2) crop-space (x, y) of every pixel centre, row-major (x = column, y = row)."""
    k = (torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2) / (size / 2)
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


def render_spheres(centres: torch.Tensor, radii: torch.Tensor, size: int,
                   softness: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable orthographic depth of spheres seen along +z.

    centres (B, K, 3), radii (B, K) or (K,) in crop units. Returns depth (B, S, S): the nearest sphere
    surface, 1 (the far plane) where no sphere covers the pixel; covered (B, S, S) bool; soft
    silhouette (B, S, S) in [0, 1] whose edge is `softness` wide (default one pixel), EDGE_INSET
    widths inside the outline.
    """
    softness = SOFTNESS_PX * 2.0 / size if softness is None else softness
    grid = pixel_grid(size, centres.device, centres.dtype)                  # (P, 2)
    d2 = (grid[None, :, None, :] - centres[:, None, :, :2]).pow(2).sum(-1)  # (B, P, K)
    radii = radii.reshape(-1, radii.shape[-1])[:, None, :]                 # (B or 1, 1, K)
    r2 = radii.pow(2)
    inside = d2 < r2
    surface = centres[:, None, :, 2] - torch.sqrt((r2 - d2).clamp_min(1e-8))
    far = torch.ones((), dtype=centres.dtype, device=centres.device)
    depth = torch.where(inside, surface, far).amin(dim=2).clamp(max=1.0)
    covered = inside.any(dim=2)
    coverage = torch.sigmoid((radii - torch.sqrt(d2 + 1e-8)) / softness - EDGE_INSET)
    silhouette = 1 - torch.exp(torch.log1p(-coverage.clamp(max=1 - 1e-6)).sum(dim=2))
    shape = (len(centres), size, size)
    return depth.view(shape), covered.view(shape), silhouette.view(shape)


def render_terms(joints: torch.Tensor, images: torch.Tensor,
                 half_mm: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """The three inverse-graphics terms for predicted joints (B, J, 3) and observed crops
    (B, 1, S, S) whose half cube edges are `half_mm` (see skeleton_spheres), unweighted."""
    size = images.shape[-1]
    observed = images[:, 0].float()
    centres, radii = skeleton_spheres(joints.float(), half_mm)
    depth, covered, silhouette = render_spheres(centres, radii, size)
    seen = observed < 1 - 1e-4
    both = covered & seen
    silhouette_term = (silhouette * (~seen)).flatten(1).mean(1).mean()
    diff = F.smooth_l1_loss(depth, observed, reduction="none", beta=0.05)
    surface_term = (diff * both).flatten(1).sum(1) / both.flatten(1).sum(1).clamp_min(1)
    # Observed points (x, y, depth) to the nearest sphere surface, truncated.
    grid = pixel_grid(size, images.device)
    points = torch.cat([grid[None].expand(len(images), -1, -1), observed.flatten(1)[..., None]], dim=2)
    dist = (torch.cdist(points, centres) - radii[:, None, :]).abs().amin(dim=2)
    tau = TRUNCATE_MM / _per_crop(half_mm, dist)
    near = seen.flatten(1) & (dist < tau)
    data_term = (dist.pow(2) * near).sum(1) / near.sum(1).clamp_min(1)
    return {"silhouette": silhouette_term, "surface": surface_term.mean(), "data": data_term.mean()}


def wrist_relative(joints: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) -> (B, 3J) relative to the palm centre: what the pose discriminator sees."""
    return (joints - joints[:, _I["palm_center"]:_I["palm_center"] + 1]).flatten(1)


class PoseDiscriminator(nn.Module):
    """Palm-relative pose (B, 3J) -> score; least squares: predicted on real 1, synthetic 0."""

    def __init__(self, joints: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * joints, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.net(pose).squeeze(1)


@register("aign")
class AIGN(Method):
    """Pose from synthetic labels plus render-and-compare and a pose discriminator on unlabeled
    real frames; no real labels are read."""

    uses_unlabeled = True
    has_discriminator = True

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        super().check(config)
        if config.joints != "nyu14":
            raise ConfigError("method aign renders the NYU-14 skeleton: joints must be nyu14")

    def make_discriminator(self) -> nn.Module:
        return PoseDiscriminator(num_joints(self.config), self.config.head_hidden)

    def losses(self, batch, critic):
        c = self.config
        f = self.encode(batch, ["syn_image", "unl_image"])
        terms = self.synthetic_terms(f, batch)
        if "unl_image" in f:
            pred = self.head(f["unl_image"]).view(len(f["unl_image"]), -1, 3)
            rendered = render_terms(pred, batch["unl_image"], batch["unl_half_mm"])
            terms["silhouette"] = c.w_silhouette * rendered["silhouette"]
            terms["surface"] = c.w_surface * rendered["surface"]
            terms["data"] = c.w_data * rendered["data"]
            if critic is not None:
                judged = wrist_relative(pred)
                synthetic = wrist_relative(batch["syn_pose"].view(len(batch["syn_pose"]), -1, 3))
                terms["pose_adversarial"] = c.w_pose_adversarial * critic(judged).float().pow(2).mean()
                terms["critic_real"] = judged.detach()
                terms["critic_synth"] = synthetic.detach()
        return terms
