"""Training methods: which networks each one has, which frames it needs and the losses it adds up.

A method is an nn.Module whose `forward(batch, pretrain, critic)` returns its loss terms for
one composed batch (training.data), so the loop in training.train (and DistributedDataParallel
around it) is the same for all. Adding a method: subclass `Method`, declare what it needs
(class attributes), implement `losses`, decorate with `@register("name")`.

Conventions shared by every method (MURAUER's): pose and embedding terms are squared errors
summed over coordinates and averaged over the batch; the view term is an L1 error summed over
pixels and averaged over the batch; during pre-training every method learns pose (and, where it
has a view decoder, view prediction) from synthetic frames only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from training.config import ConfigError, TrainConfig
from training.networks import Discriminator, Encoder, Mapping, PoseHead, ViewDecoder

REGISTRY: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def add(cls: type["Method"]) -> type["Method"]:
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return add


def method_class(name: str) -> type["Method"]:
    if name not in REGISTRY:
        raise ConfigError(f"method must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def build(config: TrainConfig) -> "Method":
    cls = method_class(config.method)
    cls.check(config)
    return cls(config)


def num_joints(config: TrainConfig) -> int:
    return 14 if config.joints == "nyu14" else 21


def sq_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared error summed over all but the batch dimension, averaged over the batch."""
    return (a.float() - b.float()).pow(2).flatten(1).sum(1).mean()


def l1_sum(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute error summed over all but the batch dimension, averaged over the batch (over the
    frames where `mask` is 1, when given)."""
    per_frame = (a.float() - b.float()).abs().flatten(1).sum(1)
    if mask is None:
        return per_frame.mean()
    mask = mask.float()
    return (per_frame * mask).sum() / mask.sum().clamp(min=1.0)


class Method(nn.Module):
    name = ""
    # What the main phase reads (training.data composes batches from these).
    uses_labeled = False        # labelled real frames ("lab_image", "lab_pose")
    uses_unlabeled = False      # unlabeled real frames ("unl_image")
    uses_pairs = False          # synthetic twins of the labelled frames ("pair_image", "pair_pose")
    uses_views = False          # the crop of another view: synthetic ("syn_view", "syn_centre_m") and,
                                # where captures have that view, unlabeled real ("unl_view", "unl_has_view")
    needs_labeled = False       # refuse to run without labelled real frames
    needs_pairs = False         # refuse to run without pairs
    has_discriminator = False   # training.train then trains `make_discriminator()` alongside

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = PoseHead(config, num_joints(config))

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        # The main phase's batch, as training.data composes it from the frames this method reads.
        reads = (cls.uses_labeled and config.n_labeled > 0, cls.uses_unlabeled and bool(config.real))
        synthetic, labeled, unlabeled = config.batch_shares(*reads)
        for name, read, share, fraction in (("labelled", reads[0], labeled, config.paired_fraction),
                                            ("unlabeled", reads[1], unlabeled, config.unlabeled_fraction)):
            if read and share == 0 and fraction > 0:
                raise ConfigError(f"batch_size {config.batch_size} x fraction {fraction:g} rounds to no {name} frame per batch")
        if synthetic < 1:
            raise ConfigError(f"batch_size {config.batch_size} with fractions {config.paired_fraction:g} (labelled) and "
                              f"{config.unlabeled_fraction:g} (unlabeled) leaves no synthetic frame once rounded "
                              f"({labeled} + {unlabeled})")
        if cls.needs_labeled and config.n_labeled <= 0:
            raise ConfigError(f"method {cls.name} needs labelled real frames: give --real CAPTURE --n-labeled N")
        if cls.needs_pairs and not config.pairs:
            raise ConfigError(f"method {cls.name} needs corresponding real/synthetic pairs: give --pairs DIR")

    def make_discriminator(self) -> nn.Module | None:
        return None

    def critic_loss(self, critic: nn.Module, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The discriminator's loss for this step, from the detached "critic_real" and
        "critic_synth" tensors `forward` returned (override for e.g. a history buffer)."""
        return critic_loss(critic, terms["critic_real"], terms["critic_synth"])

    # --- inference -----------------------------------------------------------------------------
    def real_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of real frames as the pose head sees them."""
        return self.encoder(images)

    def predict_real(self, images: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) normalised joint positions (training.crop) of real crops."""
        out = self.head(self.real_features(images))
        return out.view(len(images), -1, 3)

    # --- training ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], pretrain: bool,
                critic: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Loss terms, weighted, under their names; "loss" is their sum. Keys starting with
        "critic_" are detached features for the discriminator step."""
        terms = self.pretrain_losses(batch) if pretrain else self.losses(batch, critic)
        terms["loss"] = sum(v for k, v in terms.items() if not k.startswith("critic_"))
        return terms

    def encode(self, batch: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
        """One encoder pass over the images of several parts of the batch, split back by part."""
        present = [k for k in keys if k in batch]
        feats = self.encoder(torch.cat([batch[k] for k in present]))
        return dict(zip(present, feats.split([len(batch[k]) for k in present])))

    def synthetic_terms(self, f: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pose on the synthetic frames (twins included, when encoded: one mean over all) and
        view prediction from the synthetic frames."""
        feats, pose = f["syn_image"], batch["syn_pose"]
        if "pair_image" in f:
            feats, pose = torch.cat([feats, f["pair_image"]]), torch.cat([pose, batch["pair_pose"]])
        terms = {"pose_synth": sq_sum(self.head(feats), pose)}
        if self.uses_views and "syn_view" in batch:
            view = self.decoder(f["syn_image"], batch["syn_centre_m"])
            terms["view"] = self.config.w_view * l1_sum(view, batch["syn_view"])
        return terms

    def pretrain_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.synthetic_terms({"syn_image": self.encoder(batch["syn_image"])}, batch)

    def losses(self, batch: dict[str, torch.Tensor], critic: nn.Module | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@register("synthetic-only")
class SyntheticOnly(Method):
    """Pose estimator trained on synthetic frames alone: the lower bound."""

    def losses(self, batch, critic):
        return self.pretrain_losses(batch)


@register("supervised")
class Supervised(Method):
    """Synthetic plus the labelled real frames through the same network, no mapping."""

    uses_labeled = needs_labeled = True

    def losses(self, batch, critic):
        f = self.encode(batch, ["syn_image", "lab_image"])
        terms = self.synthetic_terms(f, batch)
        if "lab_image" in f:
            terms["pose_real"] = self.config.w_pose_real * sq_sum(self.head(f["lab_image"]), batch["lab_pose"])
        return terms


@register("murauer")
class Murauer(Method):
    """Shared encoder, residual mapping of real features into the synthetic feature space, pose
    head, view prediction (from synthetic features, and from mapped real features of unlabeled
    frames whose capture has the view), least-squares GAN on features, and the embedding loss on
    real/synthetic pairs when they exist (Poier et al. 2019)."""

    uses_labeled = uses_unlabeled = uses_pairs = uses_views = True
    has_discriminator = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.mapping = Mapping(config)
        self.decoder = ViewDecoder(config)

    def make_discriminator(self) -> nn.Module:
        return Discriminator(self.config)

    def real_features(self, images):
        return self.mapping(self.encoder(images))

    def losses(self, batch, critic):
        c = self.config
        f = self.encode(batch, ["syn_image", "pair_image", "lab_image", "unl_image"])
        syn = f["syn_image"]
        terms = self.synthetic_terms(f, batch)
        mapped = {k: self.mapping(f[k]) for k in ("lab_image", "unl_image") if k in f}
        if "lab_image" in mapped:
            terms["pose_real"] = c.w_pose_real * sq_sum(self.head(mapped["lab_image"]), batch["lab_pose"])
            if "pair_image" in f:
                # Only the mapping learns from pairs (the public code's default): the real features
                # enter detached, the synthetic target is detached.
                terms["embedding"] = c.w_embedding * sq_sum(self.mapping(f["lab_image"].detach()),
                                                            f["pair_image"].detach())
        if "unl_view" in batch and "unl_image" in mapped:
            # One shared decoder: real features must be mapped to where it reads synthetic ones.
            view = self.decoder(mapped["unl_image"], batch["unl_centre_m"])
            terms["view_real"] = c.w_view * l1_sum(view, batch["unl_view"], batch["unl_has_view"])
        if mapped and critic is not None:
            real = torch.cat(list(mapped.values()))
            # The mapping wants real features scored as synthetic (target 0).
            terms["adversarial"] = c.w_adversarial * critic(real).float().pow(2).mean()
            terms["critic_real"] = real.detach()
            terms["critic_synth"] = syn.detach()
        return terms


@register("feature-mapping")
class FeatureMapping(Method):
    """Rad et al. 2018: pose head trained on synthetic features, then frozen while a mapping
    learns to carry real features onto those of their synthetic twins."""

    uses_labeled = uses_pairs = needs_labeled = needs_pairs = True

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        super().check(config)
        if config.pretrain_steps <= 0:
            raise ConfigError("method feature-mapping freezes the pose head that synthetic pre-training trains: "
                              "pretrain_steps must be positive")

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.mapping = Mapping(config)

    def real_features(self, images):
        return self.mapping(self.encoder(images))

    def frozen_head(self, feats: torch.Tensor) -> torch.Tensor:
        params = {k: v.detach() for k, v in self.head.named_parameters()}
        return functional_call(self.head, params, (feats,))

    def losses(self, batch, critic):
        c = self.config
        f = self.encode(batch, ["syn_image", "pair_image", "lab_image"])
        syn = torch.cat([f["syn_image"], f["pair_image"]]) if "pair_image" in f else f["syn_image"]
        pose = torch.cat([batch["syn_pose"], batch["pair_pose"]]) if "pair_image" in f else batch["syn_pose"]
        terms = {"pose_synth": sq_sum(self.frozen_head(syn), pose)}
        if "lab_image" in f:
            mapped = self.mapping(f["lab_image"])
            terms["pose_real"] = c.w_pose_real * sq_sum(self.frozen_head(mapped), batch["lab_pose"])
            terms["embedding"] = c.w_embedding * sq_sum(mapped, f["pair_image"].detach())
        return terms


def critic_loss(critic: nn.Module, real: torch.Tensor, synth: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the feature discriminator: real 1, synthetic 0 (one forward pass,
    as DistributedDataParallel wants)."""
    scores = critic(torch.cat([real, synth])).float()
    return (scores[:len(real)] - 1).pow(2).mean() + scores[len(real):].pow(2).mean()


# Methods defined in modules of their own register themselves on import.
from training import aign, simgan  # noqa: E402,F401  (registration side effect)
