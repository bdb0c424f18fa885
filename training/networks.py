"""MURAUER's networks: encoder, residual feature mapping, pose head, view decoder, discriminator.

As the paper's public code and supplement give them (sizes configurable; training.config has
the paper's and a small CPU preset), with one deliberate difference: the public code computes the
second layer of each residual fully connected block from the block *input*, so its mapping and
discriminator are linear plus a skip; `ResidualFC` is the intended non-linear block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig


class Bottleneck(nn.Module):
    """Pre-activation bottleneck residual block (He et al. 2016): BN-ReLU-conv x3 plus a skip."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, cout, 1, bias=False)
        self.project = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = x if self.project is None else self.project(pre)
        h = self.conv1(pre)
        h = self.conv2(F.relu(self.bn2(h)))
        h = self.conv3(F.relu(self.bn3(h)))
        return skip + h


class Encoder(nn.Module):
    """Depth crop (B, 1, S, S) -> embedding (B, E): 5x5 conv, max-pool, 4 stride-2 stages, FC."""

    def __init__(self, c: TrainConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c.stem_channels, 5, padding=2)
        stages, cin = [], c.stem_channels
        for cout in c.stage_channels:
            blocks = [Bottleneck(cin, cout, stride=2)]
            blocks += [Bottleneck(cout, cout) for _ in range(c.blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        side = c.crop_size // 32
        self.fc = nn.Linear(cin * side * side, c.embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.stem(x), 2)
        h = F.relu(self.bn(self.stages(h)))
        return self.fc(h.flatten(1))


class ResidualFC(nn.Module):
    """x + W2 relu(W1 relu(x)): the second layer sees the first layer's activation, not x."""

    def __init__(self, dim: int, zero_last: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if zero_last:  # the block starts as the identity, so mapping starts from pre-trained features
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(F.relu(x))))


class Mapping(nn.Sequential):
    """Real features -> synthetic feature space (applied to real frames only)."""

    def __init__(self, c: TrainConfig) -> None:
        super().__init__(*[ResidualFC(c.embedding, zero_last=True) for _ in range(c.mapping_blocks)])


class PoseHead(nn.Sequential):
    """Embedding -> (B, 3J) normalised joint coordinates: ReLU, FC, ReLU, FC."""

    def __init__(self, c: TrainConfig, num_joints: int) -> None:
        super().__init__(nn.ReLU(), nn.Linear(c.embedding, c.head_hidden), nn.ReLU(),
                         nn.Linear(c.head_hidden, 3 * num_joints))


class ViewDecoder(nn.Module):
    """Embedding + 3-D crop centre -> the crop of another camera (B, 1, S, S) in [-1, 1].

    Transposed convolutions from 1x1 to 4x4, then doubling to S/2 (BN + LeakyReLU(0.2) between),
    one channel at S/2, bilinear x2 to S, tanh.
    """

    def __init__(self, c: TrainConfig) -> None:
        super().__init__()
        ch = c.decoder_channels
        layers: list[nn.Module] = [nn.ConvTranspose2d(c.embedding + 3, ch[0], 4, bias=False),
                                   nn.BatchNorm2d(ch[0]), nn.LeakyReLU(0.2)]
        for cin, cout in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        layers.append(nn.ConvTranspose2d(ch[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, centre_m: torch.Tensor) -> torch.Tensor:
        z = torch.cat([features, centre_m.to(features.dtype)], dim=1)[:, :, None, None]
        return torch.tanh(F.interpolate(self.net(z), scale_factor=2, mode="bilinear", align_corners=False))


class Discriminator(nn.Module):
    """Feature -> score; least-squares targets real 1, synthetic 0."""

    def __init__(self, c: TrainConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualFC(c.embedding) for _ in range(c.discriminator_blocks)])
        self.out = nn.Linear(c.embedding, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.blocks(features))).squeeze(1)
