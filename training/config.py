"""What a training run is: one flat, JSON-serialisable record of every setting.

Defaults are MURAUER's (Poier et al., WACV 2019, and its public code): Adam, lr 3.3e-4, weight
decay 1e-3, batch 64 made of one third each synthetic frames, labelled real frames with their
synthetic twins and unlabeled real frames; loss weights 1.0 (real pose), 0.2 (embedding pairs),
1e-4 (view prediction), 1e-5 (adversarial); 150 "epochs" of synthetic pre-training, then 120
epochs of the full loss, an epoch being one pass over NYU's 72,757 training frames (1,137 steps);
the learning-rate multiplier of epoch e = 1, 2, ... of a phase is 0.33^max(0, 2 - e//2) for
e < 4 and exp(-0.04 e) after (the public code's warm-up and decay: 0.109 for one epoch, 0.33 for
two, then exp(-0.04 e)); augmentation by in-plane rotation
(+-60 deg), centre jitter (sigma 5 mm) and depth noise (sigma 5 mm).

The "cpu-small" preset keeps every code path but shrinks crops and networks so that a few steps
run in seconds on a laptop CPU (tests, CI).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from render.camera import is_number
from render.jsonfile import read_json_object


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


PATH_SETTINGS = ("synthetic", "real", "real_labels", "pairs", "eval")   # data folders and files


@dataclass
class TrainConfig:
    # --- what to learn from ----------------------------------------------------------------
    method: str = "murauer"          # a name registered in training.methods
    synthetic: str = ""                # render-hands shard folder (required)
    real: list[str] = field(default_factory=list)   # capture folders: unlabeled real frames
    real_labels: str = ""              # uvd label file for the first --real capture (else its own labels)
    n_labeled: int = 0                 # labelled real frames used for training: the first n
    pairs: str = ""                    # shards rendered from the poses fitted to those labelled frames
    eval: str = ""                     # labelled capture to evaluate on (default: held-out labelled frames)
    seed: int = 0

    # --- preprocessing (training.crop) --------------------------------------------------------
    crop_size: int = 128
    cube_mm: float = 300.0
    joints: str = "nyu14"
    aug_rotation_deg: float = 60.0
    aug_jitter_mm: float = 5.0
    aug_depth_noise_mm: float = 5.0
    aug_scale: tuple[float, float] = (1.0, 1.0)   # MURAUER does not scale the cube
    view_target: int = 2               # predict render-hands view 2 (side, NYU's camera 3)

    # --- networks (training.networks) --------------------------------------------------------
    stem_channels: int = 32
    stage_channels: tuple[int, ...] = (64, 128, 256, 256)
    blocks_per_stage: int = 5
    embedding: int = 1024
    head_hidden: int = 1024
    mapping_blocks: int = 2
    decoder_channels: tuple[int, ...] = (512, 256, 128, 64)
    discriminator_blocks: int = 2

    # --- batch composition ---------------------------------------------------------------------
    batch_size: int = 64
    paired_fraction: float = 0.33      # labelled real frames (with their synthetic twins)
    unlabeled_fraction: float = 0.33   # unlabeled real frames; the rest are synthetic

    # --- losses --------------------------------------------------------------------------------
    w_pose_real: float = 1.0
    w_embedding: float = 0.2
    w_view: float = 1e-4
    w_adversarial: float = 1e-5
    # SimGAN (training.simgan): the refiner's realism and self-regularisation terms (crops in
    # [-1, 1]; at self-regularisation 1.0 the refiner moved finger surfaces 10-15 mm in depth on a
    # dev set, so labels no longer held), and the discriminator's history in batches (public
    # implementations keep about 100)
    w_realism: float = 1.0
    w_self_reg: float = 5.0
    history_batches: int = 50
    # AIGN (training.aign): rendered hand where nothing was observed (a mean over all pixels, and
    # the hand covers about a tenth), rendered against observed depth, observed points to the
    # model's surface, and the pose discriminator (predictions should score as synthetic poses)
    w_silhouette: float = 10.0
    w_surface: float = 1.0
    w_data: float = 1.0
    w_pose_adversarial: float = 0.1

    # --- optimisation and schedule -------------------------------------------------------------
    lr: float = 3.3e-4
    weight_decay: float = 1e-3
    lr_schedule: str = "murauer"       # "murauer" (per-epoch warm-up + decay), "cosine" or "constant"
    epoch_steps: int = 1137            # steps per schedule epoch (NYU: 72,757 frames / 64)
    pretrain_steps: int = 150 * 1137   # synthetic-only pre-training
    steps: int = 150 * 1137 + 120 * 1137   # total, pre-training included

    # --- bookkeeping ---------------------------------------------------------------------------
    log_every: int = 50
    eval_every: int = 2000
    checkpoint_every: int = 2000
    workers: int = 8                   # DataLoader worker processes per rank
    prefetch: int = 4                  # batches each worker prepares ahead
    real_cache_mb: float = 512.0       # per worker: decoded real frames kept (windows around the hand)
    device: str = "auto"               # auto | cuda | cpu
    amp: str = "auto"                  # bf16 autocast: auto (on for CUDA) | on | off
    channels_last: str = "auto"        # channels_last tensors: auto (on for CUDA) | on | off
    compile: bool = False              # torch.compile the training step's module

    def batch_shares(self, labeled: bool, unlabeled: bool) -> tuple[int, int, int]:
        """Synthetic, labelled and unlabeled frames of a main-phase batch, for a run that reads
        labelled and/or unlabeled real frames; synthetic frames fill what the others leave."""
        lab = round(self.batch_size * self.paired_fraction) if labeled else 0
        unl = round(self.batch_size * self.unlabeled_fraction) if unlabeled else 0
        return self.batch_size - lab - unl, lab, unl

    def validate(self) -> "TrainConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(bool(self.synthetic), "synthetic: a render-hands shard folder is required")
        need(self.crop_size % 32 == 0 and self.crop_size >= 32,
             f"crop_size must be a multiple of 32 (the encoder halves it five times), got {self.crop_size}")
        levels = math.log2(self.crop_size / 8)
        need(levels == int(levels) and len(self.decoder_channels) == int(levels),
             f"decoder_channels needs log2(crop_size / 8) = {levels:g} entries for crop_size {self.crop_size}, "
             f"got {len(self.decoder_channels)}")
        need(len(self.stage_channels) == 4, "stage_channels must have 4 entries (one per stride-2 stage)")
        for key in ("stage_channels", "decoder_channels"):
            values = getattr(self, key)
            need(all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values),
                 f"{key} must be positive integers, got {list(values)}")
        need(self.joints in ("nyu14", "21"), f"joints must be nyu14 or 21, got {self.joints!r}")
        need(self.view_target in (1, 2), f"view_target must be 1 (top) or 2 (side), got {self.view_target}")
        need(self.n_labeled >= 0, f"n_labeled must be >= 0, got {self.n_labeled}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(0 <= self.paired_fraction and 0 <= self.unlabeled_fraction
             and self.paired_fraction + self.unlabeled_fraction < 1, "batch fractions must leave room for synthetic frames")
        need(self.history_batches >= 1, f"history_batches must be >= 1, got {self.history_batches}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        need(self.lr_schedule in ("murauer", "cosine", "constant"),
             f"lr_schedule must be murauer, cosine or constant, got {self.lr_schedule!r}")
        need(self.steps > 0 and 0 <= self.pretrain_steps, "steps must be > 0 and pretrain_steps >= 0")
        need(min(self.epoch_steps, self.log_every, self.eval_every, self.checkpoint_every) > 0,
             "epoch_steps, log_every, eval_every and checkpoint_every must be positive")
        need(self.device in ("auto", "cuda", "cpu"), f"device must be auto, cuda or cpu, got {self.device!r}")
        need(self.amp in ("auto", "on", "off"), f"amp must be auto, on or off, got {self.amp!r}")
        need(self.channels_last in ("auto", "on", "off"),
             f"channels_last must be auto, on or off, got {self.channels_last!r}")
        need(self.workers >= 0 and self.prefetch >= 1, "workers must be >= 0 and prefetch >= 1")
        need(not (self.n_labeled or self.pairs) or self.real, "labelled real frames need --real CAPTURE")
        twice = sorted({p for p in self.real if self.real.count(p) > 1})
        need(not twice, f"--real {', '.join(twice)} given twice (its frames would count double)")
        need(not self.pairs or self.n_labeled > 0,
             "pairs are the synthetic twins of labelled frames: give --n-labeled N with --pairs")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be 0 or more, got {self.weight_decay}")
        need(math.isfinite(self.cube_mm) and self.cube_mm > 0, f"cube_mm must be positive, got {self.cube_mm}")
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("w_")}
        bad = [f"{k} = {v}" for k, v in weights.items() if not (math.isfinite(v) and v >= 0)]
        need(not bad, f"loss weights must be 0 or more: {', '.join(bad)}")
        need(len(self.aug_scale) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in self.aug_scale)
             and 0 < self.aug_scale[0] <= self.aug_scale[1],
             f"aug_scale must be [low, high] with 0 < low <= high, got {list(self.aug_scale)}")
        return self

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict, base: "TrainConfig | None" = None, source: str = "config") -> "TrainConfig":
        """`base` (default: the defaults) with the keys of `data` replaced; unknown keys refused."""
        base = base or cls()
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        values = dataclasses.asdict(base)
        for key, value in data.items():
            default = values[key]
            if isinstance(default, tuple) or key == "real":
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
                value = list(value) if key == "real" else tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                if not is_number(value):
                    raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
                if isinstance(default, int) and not float(value).is_integer():
                    raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
                value = type(default)(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
            values[key] = value
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Settings from a JSON file; its relative data paths are relative to the file, as a
        reader of the file would take them (made absolute, as the command line's are)."""
        try:
            data = read_json_object(path, "config")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        here = Path(path).resolve().parent
        for key in PATH_SETTINGS:
            value = data.get(key)
            if key == "real" and isinstance(value, list):
                data[key] = [str((here / v).resolve()) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str) and value:
                data[key] = str((here / value).resolve())
        return cls.from_dict(data, base, source=str(path))


PRESETS: dict[str, dict] = {
    "paper": {},
    # Every code path, small enough that a step takes well under a second on one CPU core.
    "cpu-small": {
        "crop_size": 64, "stem_channels": 8, "stage_channels": (16, 32, 32, 32), "blocks_per_stage": 1,
        "embedding": 128, "head_hidden": 128, "decoder_channels": (32, 16, 8), "batch_size": 24,
        "epoch_steps": 20, "pretrain_steps": 20, "steps": 60, "log_every": 5, "eval_every": 20,
        "checkpoint_every": 20, "workers": 0, "lr": 1e-3,
    },
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return TrainConfig.from_dict(PRESETS[name], source=f"preset {name}")


def lr_multiplier(config: TrainConfig, step: int) -> float:
    """Learning-rate factor at `step`; the schedule restarts when the main phase begins.

    "cosine" anneals each phase to zero, so a short run ends on a settled model rather than on
    wherever the last full-rate step left it (the small benchmark runs, 1,000-step phases)."""
    if config.lr_schedule == "constant":
        return 1.0
    main = step >= config.pretrain_steps
    phase_start = config.pretrain_steps if main else 0
    if config.lr_schedule == "cosine":
        length = max(config.steps - config.pretrain_steps if main else config.pretrain_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - phase_start) / length, 1.0)))
    # The public code steps its scheduler at the start of every epoch, counting from 1: the first
    # epoch of a phase runs at the factor of epoch 1.
    epoch = (step - phase_start) // config.epoch_steps + 1
    return 0.33 ** max(0, 2 - epoch // 2) if epoch < 4 else math.exp(-0.04 * epoch)
