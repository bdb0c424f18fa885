"""SimGAN (Shrivastava et al., CVPR 2017): refine synthetic depth crops until a local patch
discriminator cannot tell them from real ones, then learn pose from the refined crops.

Parts, as the paper gives them:
- refiner: a conv, a stack of ResNet blocks and a 1x1 conv to one channel, tanh output. It is
  written as tanh(atanh(x) + r(x)) with r's last layer starting at zero, so the refiner starts as
  the identity and the pose estimator is never trained on noise while the adversary warms up;
- self-regularisation: per-pixel L1 between refined and synthetic crop, which keeps the hand
  where it was, so the synthetic labels stay valid for the refined crop;
- local adversarial loss: a fully convolutional discriminator scores each patch (receptive field
  about a quarter of the crop) as real or refined, least squares per patch, averaged over the
  patches that show something (`content`): most of a crop is far-plane background, identical in
  both domains, and averaging over it kept the discriminator at chance in our runs (loss 0.49 of
  0.5 after 300 steps, against 0.21 of 0.25 with the mask);
- history buffer: half of every discriminator batch of refined crops is drawn from crops the
  refiner made at earlier steps, and half of the fresh crops then replace random buffer entries
  (the buffer lives in the method's state, so a resumed run continues with the same buffer).

Schedule (one run): pre-training learns pose from synthetic crops only (as every method does);
the main phase trains refiner, discriminator and pose estimator together, the estimator on the
crops of the current refiner (detached: the pose loss does not teach the refiner to make pose
easy, only the discriminator and self-regularisation shape it). The identity start makes this a
continuous curriculum from synthetic to refined crops instead of a second run.
Real frames go straight into the estimator at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig
from training.methods import Method, register, sq_sum


# The refiner carries crop values through atanh, so the far plane (1) enters as 1 - PLANE_EPS: close
# enough that refined background stays background for `content` (1e-3) under any small residual,
# and is no cue for the discriminator against real background (exactly 1).
PLANE_EPS = 1e-6


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Refiner(nn.Module):
    """Synthetic crop (B, 1, S, S) in [-1, 1] -> refined crop of the same size, identity at start."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 5, padding=2)
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.out(self.blocks(F.relu(self.stem(x))))
        return torch.tanh(torch.atanh(x.float().clamp(-1 + PLANE_EPS, 1 - PLANE_EPS)) + residual.float()).to(x.dtype)


class PatchDiscriminator(nn.Module):
    """Crop -> (B, S/8, S/8) realism scores, one per local patch (least squares: real 1, refined 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 5, 2, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def content(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) crops -> (B, S/8, S/8) 1 where a discriminator patch covers any surface."""
    return F.max_pool2d((images.float() < 1 - 1e-3).float(), 8)[:, 0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


class HistoryBuffer(nn.Module):
    """Refined crops of earlier steps (Shrivastava et al. 2017, sec. 2.3), kept as module buffers
    so that checkpoints carry them. Under DistributedDataParallel every forward pass copies rank
    0's buffers to the other ranks, so the history holds rank 0's crops: a sample of the same
    refiner's output, since the refiner is the same on every rank."""

    def __init__(self, capacity: int, size: int) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(capacity, 1, size, size, dtype=torch.float16))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def mix(self, fresh: torch.Tensor) -> torch.Tensor:
        """A discriminator batch of len(fresh) crops: half fresh, half from the buffer (all fresh
        while the buffer holds fewer than half a batch); then half the fresh crops go in."""
        n, half = len(fresh), len(fresh) // 2
        filled = int(self.count)
        if filled >= half and half > 0:
            old = self.images[torch.randint(filled, (half,), device=fresh.device)].to(fresh.dtype)
            batch = torch.cat([fresh[:n - half], old])
        else:
            batch = fresh
        new = fresh[torch.randperm(n, device=fresh.device)[:max(half, 1)]].to(self.images.dtype)
        capacity = len(self.images)
        room = min(capacity - filled, len(new))
        if room:
            self.images[filled:filled + room] = new[:room]
            self.count += room
        if room < len(new):
            slots = torch.randperm(capacity, device=fresh.device)[:len(new) - room]
            self.images[slots] = new[room:]
        return batch


@register("simgan")
class SimGAN(Method):
    """Refiner + local patch discriminator with history; pose estimator trained on refined crops."""

    uses_unlabeled = True
    has_discriminator = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        # Sized from the encoder's stem: 32 channels and 10 blocks with the paper's networks (the
        # SimGAN paper's NYU refiner has 64 and 10), 8 and 2 with cpu-small.
        self.refiner = Refiner(config.stem_channels, 2 * config.blocks_per_stage)
        synthetic = config.batch_shares(labeled=False, unlabeled=True)[0]
        self.history = HistoryBuffer(config.history_batches * max(synthetic // 2, 1), config.crop_size)

    def make_discriminator(self) -> nn.Module:
        return PatchDiscriminator(self.config.stem_channels)

    def critic_loss(self, critic: nn.Module, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Least squares per patch (real 1, refined 0), the refined half fresh, half history."""
        real, refined = terms["critic_real"], self.history.mix(terms["critic_synth"])
        images = torch.cat([real, refined])
        scores, mask = critic(images).float(), content(images)
        n = len(real)
        return masked_mean((scores[:n] - 1).pow(2), mask[:n]) + masked_mean(scores[n:].pow(2), mask[n:])

    def losses(self, batch, critic):
        c, syn = self.config, batch["syn_image"]
        refined = self.refiner(syn)
        terms = {"self_reg": c.w_self_reg * (refined.float() - syn.float()).abs().mean()}
        terms["pose_synth"] = sq_sum(self.head(self.encoder(refined.detach())), batch["syn_pose"])
        if critic is not None and "unl_image" in batch:
            terms["realism"] = c.w_realism * masked_mean((critic(refined).float() - 1).pow(2), content(refined.detach()))
            terms["critic_real"] = batch["unl_image"].detach()
            terms["critic_synth"] = refined.detach()
        return terms
