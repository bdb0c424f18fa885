"""Training data: streaming synthetic shards, real captures, labelled frames and their synthetic twins.

Every batch is composed of up to three kinds of frames (TrainStream.composition):
synthetic frames (with the crop of another view when the shards hold 3 views), labelled real
frames (with a synthetic twin each when a paired shard set is given) and unlabeled real frames
(with the crop of the same view of the rig where the capture has it: capture.json "views"). All
pass through the one preprocessing, training.crop.

Streaming and resuming. `TrainStream` is an IterableDataset that yields whole batches; the
DataLoader's workers (`workers` per rank) decode PNGs and crop in parallel, and hand the batches
back round-robin, so step s of a rank is built by worker s mod W. Each residue class r of steps
(of each rank) owns a *slot* of every source with its own deterministic order:
- synthetic: per epoch the shard list is permuted (same permutation for every slot) and slot k
  of K reads the shards perm[k::K] (K = ranks x workers: data sharded per DDP rank), each shard
  shuffled within itself (render-hands samples are independent draws, so no wider shuffle
  buffer is needed);
- real frames: per epoch a permutation of all frames, drawn per slot.
Augmentation of the p-th item of a slot draws from default_rng([seed, source, slot, p]). So a
batch depends only on (seed, step, ranks, workers), and resuming at step s just counts how many
items each slot consumed before s and skips them without decoding anything.

Pairs. MURAUER's embedding loss needs, for a labelled real frame, a synthetic frame of the same
pose: render-hands with a pose file fitted to the labelled frames (`hand-model fit LABELS --out
P.npz`, then `render-hands --poses P.npz`) cycles through the file, so sample i shows pose
i mod N (N = poses in the file), i.e. labelled frame i mod N.
"""

from __future__ import annotations

import json
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from hand_models.joints import JOINT_NAMES, NYU14_NAMES
from render.camera import uvd_to_xyz, xyz_to_uvd
from render.shards import decode_depth_png, iter_shard, read_manifest, sha256_file
from render.views import VIEWS
from training.captures import Capture, CaptureError, CaptureView, NoHandError, check_labels, load_capture
from training.config import TrainConfig
from training.crop import (Augmentation, AugmentParams, CropConfig, CropGeometry, crop_geometry, crop_hand,
                           crop_shard_sample)
from training.evaluate import EvalInputError, load_uvd
from training.localize import centre_from_labels

SYNTHETIC, LABELED, UNLABELED, ORDER = 1, 2, 3, 4   # stream ids in the random seeds
STREAM_ERROR = "data_error"   # the key of the batch that carries a data error out of the stream


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the problem."""


# --- sources ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSet:
    root: Path
    shards: tuple[tuple[Path, int], ...]   # (path, samples)
    views: int
    manifest: dict

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def verify(self, rank: int = 0, world: int = 1, progress: bool = False) -> None:
        """The shards against the manifest's sha256 (rank r of `world` checks every world-th), before
        training: a flipped bit in a label's json still parses, and would train on a wrong joint."""
        mine = list(zip(self.shards, self.manifest["shards"]))[rank::world]
        for (path, _), record in tqdm(mine, desc=f"checking {self.root.name}", unit="shard", leave=False,
                                      disable=not progress):
            try:
                same = sha256_file(path) == record["sha256"]
            except OSError as err:
                raise DataError(f"{path}: cannot read the shard ({err.strerror or err})") from None
            if not same:
                raise DataError(f"{path}: sha256 differs from the manifest (damaged or replaced; "
                                f"inspect-shards {self.root} lists every problem)")


def open_shards(root: str | Path) -> ShardSet:
    """A render-hands shard folder, checked for presence (ShardSet.verify reads it all)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: shard folder does not exist")
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        raise DataError(str(err)) from None
    shards = [(root / rec["name"], rec["count"]) for rec in manifest.get("shards", [])]   # read_manifest checked them
    for path, _ in shards:
        if not path.is_file():
            raise DataError(f"{path}: listed in the manifest but missing")
    if not shards or not sum(n for _, n in shards):
        raise DataError(f"{root}: the manifest lists no samples")
    return ShardSet(root, tuple(shards), manifest.get("views", 1), manifest)


@dataclass(frozen=True)
class LabeledFrames:
    """The first n frames of a capture with their labels (mirrored like the frames)."""

    capture: Capture
    labels_uvd: np.ndarray          # (n, J, 3)
    joints: str

    def __len__(self) -> int:
        return len(self.labels_uvd)

    def centre(self, i: int) -> np.ndarray:
        return centre_from_labels(self.labels_uvd[i], self.joints, self.capture.intrinsics)


def labeled_frames(capture: Capture, n: int, joints: str, labels_file: str = "") -> LabeledFrames:
    """Labels from `labels_file` (u v d per joint in the original images) or the capture's own."""
    if labels_file:
        try:
            labels = load_uvd(labels_file, len(NYU14_NAMES if joints == "nyu14" else JOINT_NAMES))
        except EvalInputError as err:
            raise DataError(str(err)) from None
        if len(labels) != len(capture):
            raise DataError(f"{labels_file}: {len(labels)} label lines for {len(capture)} frames of {capture.root}")
        try:
            check_labels(labels, capture.intrinsics, labels_file)   # the image's bounds: mirroring keeps them
        except CaptureError as err:
            raise DataError(str(err)) from None
        labels = capture.flip_left(labels)
        label_joints = joints
    else:
        if capture.labels_uvd is None:
            raise DataError(f"{capture.root}: capture has no labels (capture.json 'labels'); labelled frames "
                            f"need them or --real-labels FILE")
        labels, label_joints = capture.labels_uvd, capture.label_joints
    if label_joints != joints:
        raise DataError(f"{capture.root}: labels are {label_joints} joints but training uses {joints}")
    if n > len(labels):
        raise DataError(f"{capture.root}: {n} labelled frames asked for, the capture has {len(labels)}")
    return LabeledFrames(capture, np.asarray(labels[:n], dtype=np.float64), joints)


@dataclass(frozen=True)
class ShardSample:
    """One sample's undecoded files, and where they came from: samples are decoded in loader
    workers, and one that fails to decode must be named there."""

    where: str                # "shard.tar: key"
    files: dict[str, bytes]   # extension -> bytes, as render.shards.iter_shard groups them

    def label(self) -> dict:
        try:
            label = json.loads(self.files["json"])
        except (KeyError, ValueError) as err:
            raise DataError(f"{self.where}: cannot read the sample's json ({type(err).__name__}: {err})") from None
        if not isinstance(label, dict):
            raise DataError(f"{self.where}: the sample's json is not an object")
        return label

    def depth(self, name: str) -> np.ndarray:
        try:
            return decode_depth_png(self.files[name])
        except (KeyError, ValueError, OSError) as err:
            raise DataError(f"{self.where}: cannot decode {name} ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Pairs:
    """Raw synthetic twins grouped by the labelled frame they show: twins[k] = [sample, ...]."""

    twins: tuple[tuple[ShardSample, ...], ...]


def open_pairs(root: str | Path, n_labeled: int) -> Pairs:
    """Read a (small) paired shard set into memory and group it by pose index."""
    shards = open_shards(root)
    shards.verify()
    poses = shards.manifest.get("poses")
    if not isinstance(poses, dict) or "file" not in poses:
        raise DataError(f"{shards.root}: not rendered from a pose file (render-hands --poses FILE), so its "
                        f"samples correspond to no labelled frames")
    from hand_models.poses import load_pose_file

    # Named relative to the shard folder (datasets written before: to render-hands' working folder,
    # tried second); the checksum decides, so another file of the same name never pairs the twins.
    recorded = Path(str(poses["file"]))
    candidates = [recorded] if recorded.is_absolute() else [(shards.root.resolve() / recorded).resolve(), recorded]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise DataError(f"{shards.root}: the pose file its manifest names ({recorded}, relative to the shard folder) "
                        f"is needed to pair samples with labelled frames, and is not there")
    same = [p for p in found if sha256_file(p) == poses.get("sha256")]
    if not same:
        raise DataError(f"{found[0]}: not the pose file {shards.root} was rendered from (its sha256 differs from "
                        f"the manifest's)")
    try:
        n_poses = len(load_pose_file(same[0])[0].hand_pose)
    except ValueError as err:
        raise DataError(f"{shards.root}: the pose file its manifest names is needed to pair samples "
                        f"with labelled frames: {err}") from None
    if n_poses < n_labeled:
        raise DataError(f"{shards.root}: rendered from {n_poses} poses but {n_labeled} labelled frames "
                        f"need a twin each")
    groups: list[list[ShardSample]] = [[] for _ in range(n_labeled)]
    for path, _ in shards.shards:
        for sample in read_shard(path):
            index = sample.label().get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                raise DataError(f"{sample.where}: malformed sample (index {index!r})")
            k = index % n_poses
            if k < n_labeled:
                groups[k].append(sample)
    empty = [k for k, g in enumerate(groups) if not g]
    if empty:
        raise DataError(f"{shards.root}: no twin for labelled frame(s) {empty[:5]} (render at least "
                        f"{n_poses} samples)")
    return Pairs(tuple(tuple(g) for g in groups))


@dataclass(frozen=True)
class Sources:
    synthetic: ShardSet
    captures: tuple[Capture, ...]
    unlabeled: tuple[tuple[Capture, int], ...]   # (capture, frame) for every real frame
    labeled: LabeledFrames | None
    pairs: Pairs | None
    real_view: str | None = None   # the rig view unlabeled frames are paired with, where any capture has it


def open_sources(config: TrainConfig, parts: "Parts") -> Sources:
    """Load and validate everything a run reads, before any work is done."""
    synthetic = open_shards(config.synthetic)
    if parts.views and synthetic.views < 3:
        raise DataError(f"{synthetic.root}: view prediction needs shards rendered with --views 3")
    try:
        captures = [load_capture(p) for p in config.real]
        for capture in captures:
            capture.check_frames()
    except CaptureError as err:
        raise DataError(str(err)) from None
    if (config.n_labeled or config.pairs) and not captures:
        raise DataError("labelled real frames and pairs need --real CAPTURE (its first capture holds the labels)")
    labeled = None
    if config.n_labeled and parts.labeled:
        labeled = labeled_frames(captures[0], config.n_labeled, config.joints, config.real_labels)
    pairs = None
    if config.pairs and labeled is not None and parts.pairs:
        pairs = open_pairs(config.pairs, config.n_labeled)
    elif config.pairs:
        open_shards(config.pairs)   # not read by this method, but a wrong path is still refused
    unlabeled = tuple((c, i) for c in captures for i in range(len(c))) if parts.unlabeled else ()
    name = VIEWS[config.view_target][0]
    real_view = name if parts.views and parts.unlabeled and any(c.view(name) for c in captures) else None
    if parts.views and parts.unlabeled:
        check_views(captures, name)
    return Sources(synthetic, tuple(captures), unlabeled, labeled, pairs, real_view)


@dataclass(frozen=True)
class Parts:
    """Which kinds of frames a method's main phase reads (training.methods.Method attributes)."""

    labeled: bool = False
    unlabeled: bool = False
    pairs: bool = False
    views: bool = False

    @classmethod
    def of(cls, method) -> "Parts":
        return cls(method.uses_labeled, method.uses_unlabeled, method.uses_pairs, method.uses_views)


# --- one item of each kind -------------------------------------------------------------------
def _augmentation(config: TrainConfig) -> Augmentation:
    return Augmentation(config.aug_rotation_deg, config.aug_jitter_mm, tuple(config.aug_scale),
                        config.aug_depth_noise_mm)


def read_shard(path: str | Path) -> list[ShardSample]:
    """Every sample of one shard, undecoded; a damaged tar is a DataError that names it."""
    try:
        return [ShardSample(f"{path}: {key}", files) for key, files in iter_shard(path)]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read the shard ({err})") from None


def _crop_config(config: TrainConfig) -> CropConfig:
    return CropConfig(config.cube_mm, config.crop_size)


def synthetic_item(shard_sample: ShardSample, config: TrainConfig, augment: AugmentParams,
                   with_view: bool) -> dict[str, np.ndarray]:
    # Decode only the PNGs used (render.shards.decode_sample would decode every view).
    sample = shard_sample.label()
    sample["depth"] = shard_sample.depth("depth.png")
    view_depth = shard_sample.depth(f"depth.view{config.view_target}.png") if with_view else None
    try:
        crop = crop_shard_sample(sample, _crop_config(config), augment, config.joints)
        item = {"image": crop.image[None], "pose": crop.labels.reshape(-1),
                "centre_m": (crop.geometry.centre_xyz / 1000.0).astype(np.float32)}
        if with_view:
            view = next(v for v in sample["views"] if int(v["view"]) == config.view_target)
            other = {"intrinsics": sample["intrinsics"], "nyu14_uvd": view["nyu14_uvd"],
                     "joints_uvd": view["joints_uvd"], "depth": view_depth, "crop_origin": view["crop_origin"]}
            item["view"] = crop_shard_sample(other, _crop_config(config), AugmentParams(), config.joints).image[None]
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as err:
        # A label that parses but lacks or mistypes a field (inspect-shards names which).
        raise DataError(f"{shard_sample.where}: malformed sample ({type(err).__name__}: {err})") from None
    return item


def view_centre(capture: Capture, index: int, view: CaptureView, centre_uvd: np.ndarray) -> np.ndarray:
    """Frame `index`'s hand centre carried into `view`'s camera (xyz, mm), where it must lie in front."""
    centre_xyz = view.to_view(uvd_to_xyz(centre_uvd, capture.intrinsics))
    if centre_xyz[2] <= 0:
        raise DataError(f"{view.frames[index]}: the hand lies behind the {view.name} camera; "
                        f"check its extrinsics_mm in {capture.root / 'capture.json'}")
    return centre_xyz


def check_views(captures: list[Capture], name: str) -> None:
    """Before training: a rig whose views include none named `name` is warned about (view prediction
    would silently not learn from it), and one whose extrinsics put the hand behind the camera is
    refused (check_rig), not when the main phase first reads a view."""
    for capture in captures:
        view = capture.view(name)
        if view is None:
            if capture.views:
                warnings.warn(f"{capture.root}: none of its views ({', '.join(v.name for v in capture.views)}) is "
                              f"named {name!r}, the view training predicts, so view prediction does not learn "
                              f"from its frames (rename the view in capture.json, or set view_target)")
            continue
        check_rig(capture, view)


def check_rig(capture: Capture, view: CaptureView,
              centres: Iterable[tuple[int, np.ndarray]] | None = None) -> None:
    """Refuse a view whose extrinsics put the hand behind its camera, or out of its image on every
    one of the given frames (index, hand centre uvd; by default those the depth-unit check looks
    at, Capture.hands_to_check): a hand that leaves the view now and then is a rig, one never in
    it is a mistake, often a translation in metres where extrinsics_mm wants millimetres."""
    if centres is None:
        centres = [(i, location.centre_uvd) for i, location in capture.hands_to_check[0]]
    carried = [view_centre(capture, i, view, centre_uvd) for i, centre_uvd in centres]
    if carried and view.intrinsics.outside(xyz_to_uvd(np.array(carried), view.intrinsics)).all():
        raise DataError(f"{capture.root / 'capture.json'}: view {view.name!r}: its extrinsics_mm put the hand outside "
                        f"that camera's image on every frame checked (carried hand centre "
                        f"{np.round(carried[0]).tolist()} mm); is the translation in metres, not millimetres?")


def real_crop(capture: Capture, index: int, config: TrainConfig, augment: AugmentParams,
              centre_uvd: np.ndarray, labels_uvd: np.ndarray | None = None):
    return crop_hand(capture.depth_mm(index), capture.intrinsics, centre_uvd, labels_uvd,
                     _crop_config(config), augment)


class RealFrameCache:
    """Decoded real frames of one loader worker, kept as the window around the hand that
    augmented crops reach (a full 640x480 PNG decode costs more than the crop itself), and the
    view-prediction targets of frames that have another view (unaugmented, so kept whole).

    A crop whose pixels fall outside the kept window (an extreme jitter draw) decodes the frame
    again, so cached and uncached crops are identical. Least recently used entries are dropped
    beyond `budget_mb`.
    """

    def __init__(self, config: TrainConfig, budget_mb: float) -> None:
        self.config, self.budget = config, budget_mb * 2**20
        self.entries: OrderedDict[tuple, tuple[tuple, int]] = OrderedDict()   # key -> (value, bytes)
        self.used = 0

    def _get(self, key: tuple) -> tuple | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        self.entries.move_to_end(key)
        return hit[0]

    def _put(self, key: tuple, value: tuple, nbytes: int) -> None:
        self.entries[key] = (value, nbytes)
        self.used += nbytes
        while self.used > self.budget and len(self.entries) > 1:
            self.used -= self.entries.popitem(last=False)[1][1]

    def _reach_px(self, capture: Capture, centre_uvd: np.ndarray) -> float:
        """Half-width (pixels) of what a crop with rotation, scale and 5-sigma jitter can sample."""
        c = self.config
        sigma = 5 * c.aug_jitter_mm
        half = c.cube_mm / 2 * max(c.aug_scale)
        cam = capture.intrinsics
        return (half + sigma) * np.sqrt(2) * max(cam.fx, cam.fy) / max(centre_uvd[2] - sigma, 1.0) + 2

    def _window(self, capture: Capture, index: int, centre_uvd: np.ndarray | None) -> tuple:
        """(window, origin, located centre) of frame `index`; located: `centre_uvd` or the detected hand.
        A frame can be both labelled (cropped at its labels) and unlabeled (at the detected hand):
        the two are kept apart, so that no label reaches an unlabeled crop."""
        key = ("frame", capture.root, index, centre_uvd is None)
        entry = self._get(key)
        if entry is None:
            depth = capture.depth_mm(index)
            located = capture.locate(index).centre_uvd if centre_uvd is None else np.asarray(centre_uvd, float)
            r = self._reach_px(capture, located)
            u0, v0 = (max(int(located[k] - r), 0) for k in (0, 1))
            u1, v1 = min(int(located[0] + r) + 1, depth.shape[1]), min(int(located[1] + r) + 1, depth.shape[0])
            window = np.ascontiguousarray(depth[v0:v1, u0:u1])
            entry = (window, (u0, v0), located)
            self._put(key, entry, window.nbytes)
        return entry

    def crop(self, capture: Capture, index: int, augment: AugmentParams, centre_uvd: np.ndarray | None,
             labels_uvd: np.ndarray | None = None):
        """Crop of frame `index` around `centre_uvd` (None: the detected hand, located once)."""
        window, origin, located = self._window(capture, index, centre_uvd)
        centre = located if centre_uvd is None else centre_uvd
        geo = crop_geometry(capture.intrinsics, centre, _crop_config(self.config), augment)
        k = (geo.size - 1) / 2.0 + 1
        corners = geo.virtual_to_frame_uv(geo.centre_uv + np.array([[-k, -k], [-k, k], [k, -k], [k, k]]) * geo.pixel_step)
        lo, hi = corners.min(0) - 1, corners.max(0) + 1
        h, w = window.shape
        inside = lo[0] >= origin[0] and lo[1] >= origin[1] and hi[0] < origin[0] + w and hi[1] < origin[1] + h
        if not inside:
            return real_crop(capture, index, self.config, augment, centre, labels_uvd)
        return crop_hand(window, capture.intrinsics, centre, labels_uvd, _crop_config(self.config), augment, origin)

    def view_crop(self, capture: Capture, index: int, view: CaptureView) -> np.ndarray:
        """The (S, S) crop of `view`'s frame around the detected hand centre carried into that
        camera by the rig's extrinsics: what view prediction should produce for this frame."""
        key = ("view", capture.root, index, view.name)
        hit = self._get(key)
        if hit is None:
            centre_xyz = view_centre(capture, index, view, self._window(capture, index, None)[2])
            image = crop_hand(capture.depth_mm(index, view), view.intrinsics, xyz_to_uvd(centre_xyz, view.intrinsics),
                              None, _crop_config(self.config)).image
            hit = (image,)
            self._put(key, hit, image.nbytes)
        return hit[0]


def unlabeled_item(frames: tuple[tuple[Capture, int], ...], item: int, cache: RealFrameCache,
                   augment: AugmentParams, view_name: str | None) -> dict[str, np.ndarray]:
    """The crop of unlabeled frame `item`, or where no hand can be found in it (real captures
    have such frames) of the next frame that has one: the batch stays a function of the step,
    so runs stay reproducible and resumable. With `view_name` also the view-prediction target
    ("view", zeros and "has_view" 0 where the frame's capture lacks that view) and the crop
    centre the decoder is told ("centre_m"). "half_mm" is the crop's half cube edge after scale
    augmentation, in which AIGN's skeleton is drawn."""
    for j in range(len(frames)):
        capture, i = frames[(item + j) % len(frames)]
        try:
            crop = cache.crop(capture, i, augment, None)
        except NoHandError:
            continue
        out = {"image": crop.image[None], "half_mm": np.float32(crop.geometry.half_mm)}
        if view_name is not None:
            view = capture.view(view_name)
            out["view"] = cache.view_crop(capture, i, view)[None] if view else np.zeros_like(out["image"])
            out["has_view"] = np.array(view is not None, dtype=np.float32)
            out["centre_m"] = (crop.geometry.centre_xyz / 1000.0).astype(np.float32)
        return out
    raise DataError(f"{frames[0][0].root}: no unlabeled frame shows a detectable hand")


# --- per-slot orders -------------------------------------------------------------------------
class ShardOrder:
    """The synthetic items of one slot: epochs of permuted shards, each shuffled within itself."""

    def __init__(self, shards: ShardSet, slot: int, slots: int, seed: int) -> None:
        if len(shards.shards) < slots:
            raise DataError(f"{shards.root}: {len(shards.shards)} shards cannot feed {slots} loader slots "
                            f"(ranks x workers); render with a smaller --shard-size or use fewer workers")
        self.shards, self.slot, self.slots, self.seed = shards, slot, slots, seed

    def _mine(self, epoch: int) -> list[int]:
        perm = np.random.default_rng([self.seed, ORDER, SYNTHETIC, epoch]).permutation(len(self.shards.shards))
        return [int(i) for i in perm[self.slot::self.slots]]

    def items(self, skip: int) -> Iterator[ShardSample]:
        epoch = 0
        while True:
            for shard in self._mine(epoch):
                path, count = self.shards.shards[shard]
                if skip >= count:
                    skip -= count
                    continue
                samples = read_shard(path)
                if len(samples) != count:
                    raise DataError(f"{path}: {len(samples)} samples, the manifest says {count}")
                order = np.random.default_rng([self.seed, ORDER, SYNTHETIC, epoch, shard]).permutation(count)
                for j in order[skip:]:
                    yield samples[j]
                skip = 0
            epoch += 1


def frame_order(n: int, slot: int, source: int, seed: int, skip: int) -> Iterator[int]:
    """Indices 0..n-1 in a fresh permutation per epoch, for one slot, from position `skip` on."""
    epoch, offset = divmod(skip, n)
    while True:
        perm = np.random.default_rng([seed, ORDER, source, slot, epoch]).permutation(n)
        for i in perm[offset:]:
            yield int(i)
        epoch, offset = epoch + 1, 0


# --- the batch stream ------------------------------------------------------------------------
class TrainStream(IterableDataset):
    """Endless composed batches for steps start, start+1, ... of one rank (see module doc)."""

    def __init__(self, config: TrainConfig, sources: Sources, parts: Parts, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        self.config, self.sources, self.parts = config, sources, parts
        self.rank, self.world, self.start_step = rank, world, start_step

    def composition(self, step: int) -> dict[str, int]:
        """Frames of each kind in the batch of `step`; synthetic frames fill what is missing."""
        c = self.config
        if step < c.pretrain_steps:
            return {"synthetic": c.batch_size, "labeled": 0, "unlabeled": 0}
        synthetic, labeled, unlabeled = c.batch_shares(self.sources.labeled is not None, bool(self.sources.unlabeled))
        return {"synthetic": synthetic, "labeled": labeled, "unlabeled": unlabeled}

    def _consumed(self, residue: int, workers: int) -> dict[str, int]:
        """Items each source of residue class `residue` used for the steps before start_step."""
        total = {"synthetic": 0, "labeled": 0, "unlabeled": 0}
        pre = self.config.pretrain_steps
        for lo, hi in ((0, min(pre, self.start_step)), (min(pre, self.start_step), self.start_step)):
            steps = _count_residue(lo, hi, residue, workers)
            for k, v in self.composition(lo).items():
                total[k] += steps * v
        return total

    def __iter__(self) -> Iterator[dict]:
        """The batches; a data error ends them with a batch {STREAM_ERROR: message}, because PyTorch
        re-raises a worker's exception with the worker's traceback pasted into its message."""
        try:
            yield from self._batches()
        except (DataError, CaptureError) as err:
            yield {STREAM_ERROR: str(err)}

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        w, workers = (0, 1) if info is None else (info.id, info.num_workers)
        residue = (self.start_step + w) % workers
        slot, slots = self.rank * workers + residue, self.world * workers
        seed, c, src = self.config.seed, self.config, self.sources
        done = self._consumed(residue, workers)
        synth = ShardOrder(src.synthetic, slot, slots, seed).items(done["synthetic"])
        n_lab = 0 if src.labeled is None else len(src.labeled)
        lab = frame_order(n_lab, slot, LABELED, seed, done["labeled"]) if n_lab else None
        unl = frame_order(len(src.unlabeled), slot, UNLABELED, seed, done["unlabeled"]) if src.unlabeled else None
        pos = dict(done)
        frames_cache = RealFrameCache(c, c.real_cache_mb)
        aug = _augmentation(c)

        def rng(source: int, key: str) -> np.random.Generator:
            pos[key] += 1
            return np.random.default_rng([seed, source, slot, pos[key] - 1])

        step = self.start_step + w
        while True:
            comp = self.composition(step)
            parts: dict[str, list[np.ndarray]] = {}

            def add(name: str, value: np.ndarray) -> None:
                parts.setdefault(name, []).append(value)

            for _ in range(comp["synthetic"]):
                item = synthetic_item(next(synth), c, aug.sample(rng(SYNTHETIC, "synthetic")), self.parts.views)
                for k, v in item.items():
                    add(f"syn_{k}", v)
            for _ in range(comp["labeled"]):
                k = next(lab)
                r = rng(LABELED, "labeled")
                frames, params = src.labeled, aug.sample(r)
                crop = frames_cache.crop(frames.capture, k, params, frames.centre(k), frames.labels_uvd[k])
                add("lab_image", crop.image[None])
                add("lab_pose", crop.labels.reshape(-1))
                if src.pairs is not None:
                    # The twin gets the same rotation, jitter and scale: the embedding loss pulls
                    # the two frames' features together, so they must show the hand the same way.
                    twins = src.pairs.twins[k]
                    twin = synthetic_item(twins[int(r.integers(len(twins)))], c, params, False)
                    add("pair_image", twin["image"])
                    add("pair_pose", twin["pose"])
            for _ in range(comp["unlabeled"]):
                r = rng(UNLABELED, "unlabeled")
                item = unlabeled_item(src.unlabeled, next(unl), frames_cache, aug.sample(r), src.real_view)
                for k, v in item.items():
                    add(f"unl_{k}", v)
            yield {k: torch.from_numpy(np.stack(v)) for k, v in parts.items()}
            step += workers


def _count_residue(lo: int, hi: int, residue: int, m: int) -> int:
    """How many s in [lo, hi) have s mod m == residue."""
    def below(x: int) -> int:
        return (x - residue + m - 1) // m if x > residue else 0
    return max(0, below(hi) - below(lo))


def train_loader(config: TrainConfig, sources: Sources, parts: Parts, rank: int = 0, world: int = 1,
                 start_step: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches for steps start_step, start_step + 1, ... in order, built by `config.workers` processes."""
    stream = TrainStream(config, sources, parts, rank, world, start_step)
    if config.workers:
        ShardOrder(sources.synthetic, 0, world * config.workers, config.seed)  # refuse too few shards now
    extra = {"prefetch_factor": config.prefetch, "persistent_workers": False} if config.workers else {}
    # Its own generator: worker seeds must not draw from (and so change) the global torch RNG.
    return DataLoader(stream, batch_size=None, num_workers=config.workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(config.seed), **extra)


def batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches; a data error met by the stream, in a worker process or not, is raised
    here as the one line that names its file."""
    for batch in loader:
        if STREAM_ERROR in batch:
            raise DataError(batch[STREAM_ERROR])
        yield batch


# --- evaluation and prediction crops ---------------------------------------------------------
@dataclass
class FrameCrops:
    images: torch.Tensor              # (N, 1, S, S)
    geometries: list[CropGeometry]
    frames: list[int]


def detected_centres(capture: Capture, frames: list[int]) -> np.ndarray:
    """(len(frames), 3) detected hand centres. A frame in which no hand is found keeps the centre
    of the nearest earlier frame that has one (the first later one at the start), as a tracker
    keeps its last position: every frame still gets a prediction, and a warning says how many."""
    found: dict[int, np.ndarray] = {}
    for i in frames:
        try:
            found[i] = capture.locate(i).centre_uvd
        except NoHandError:
            continue
    if not found:
        names = ", ".join(capture.frames[i].name for i in frames[:3]) + (", ..." if len(frames) > 3 else "")
        raise DataError(f"{capture.root}: no hand found in {'any of ' if len(frames) > 1 else ''}the "
                        f"{len(frames)} frame{'s' if len(frames) > 1 else ''} to crop ({names})")
    missing = [i for i in frames if i not in found]
    if missing:
        warnings.warn(f"{capture.root}: no hand found in {len(missing)} of {len(frames)} frames "
                      f"({capture.frames[missing[0]].name}, ...); cropped at a neighbour's centre", stacklevel=2)
    located = sorted(found)
    centres = []
    for i in frames:
        k = int(np.searchsorted(located, i, side="right")) - 1
        centres.append(found[located[max(k, 0)]])
    return np.stack(centres)


def crop_frames(capture: Capture, config: TrainConfig, frames: list[int] | None = None,
                centres_uvd: np.ndarray | None = None) -> FrameCrops:
    """Unaugmented crops of real frames around given centres or, by default, the detected hands."""
    frames = list(range(len(capture))) if frames is None else frames
    if centres_uvd is None:
        centres_uvd = detected_centres(capture, frames)
    images, geos = [], []
    for j, i in enumerate(frames):
        crop = real_crop(capture, i, config, AugmentParams(), centres_uvd[j])
        images.append(crop.image[None])
        geos.append(crop.geometry)
    return FrameCrops(torch.from_numpy(np.stack(images)), geos, frames)


def eval_frames(config: TrainConfig, sources: Sources) -> tuple[Capture, list[int], np.ndarray] | None:
    """Labelled frames to evaluate on: --eval CAPTURE, else the labelled frames not trained on."""
    if config.eval:
        try:
            capture = load_capture(config.eval)
            capture.check_frames()
        except CaptureError as err:
            raise DataError(str(err)) from None
        if capture.labels_uvd is None:
            raise DataError(f"{capture.root}: evaluation capture has no labels")
        if capture.label_joints != config.joints:
            raise DataError(f"{capture.root}: labels are {capture.label_joints} joints but training uses {config.joints}")
        if sources.captures and config.n_labeled and capture.root.resolve() == sources.captures[0].root.resolve():
            warnings.warn(f"{capture.root}: --eval is the first --real capture, so its score includes the "
                          f"{config.n_labeled} frame(s) trained on with their labels (leave --eval out to score the others)")
        return capture, list(range(len(capture))), capture.labels_uvd
    if not sources.captures:
        return None
    capture = sources.captures[0]
    if capture.labels_uvd is None and not config.real_labels:
        return None
    if not config.real_labels and capture.label_joints != config.joints:
        warnings.warn(f"{capture.root}: labelled with {capture.label_joints} joints, training {config.joints}: "
                      "not evaluated on it (give --eval CAPTURE)")
        return None
    frames = labeled_frames(capture, len(capture), config.joints, config.real_labels)   # bad labels: refused
    held_out = list(range(config.n_labeled, len(capture)))
    return (capture, held_out, frames.labels_uvd[held_out]) if held_out else None


def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
    """Frames in a composed batch (a synthetic twin counts as a frame)."""
    return sum(len(v) for k, v in batch.items() if k.endswith("image"))
