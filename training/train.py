"""The training loop of train-mapping, one function to read top to bottom.

A run folder holds:
    config.json      the resolved configuration (every setting, defaults included)
    checkpoint.pt    the latest checkpoint: networks, optimizers, schedules, RNG state, step
                     (written to a temporary name, then renamed; loaded with weights_only=True)
    metrics.jsonl    one JSON object per log interval and per evaluation
    tb/              TensorBoard events
    summary.json     written when the run ends
Running the same command again resumes from checkpoint.pt and continues exactly as an
uninterrupted run would: the data stream is a function of the step (training.data), and the
optimizer, schedule and RNG states are restored. Only settings that do not change the
mathematics (steps, logging and checkpoint intervals, device, autocast, compile, prefetch) may
differ on resume; anything else is refused.

Several GPUs or machines: start it under torchrun; each rank trains on its own slice of the data
(training.data) inside DistributedDataParallel, rank 0 writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from render.atomic import check_writable, write_atomically, write_json
from training.config import PATH_SETTINGS, ConfigError, TrainConfig, lr_multiplier
from training.curves import read_metrics
from training.data import DataError, Parts, batch_size_of, batches, crop_frames, eval_frames, open_sources, train_loader
from training.evaluate import evaluate_uvd
from training.methods import Method, build, method_class

CHECKPOINT_FORMAT = "train-mapping-checkpoint"
CHECKPOINT_VERSION = 1
# Settings that may change when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = ("steps", "log_every", "eval_every", "checkpoint_every", "device", "amp", "channels_last",
                     "compile", "prefetch", "real_cache_mb")


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why and where."""


# --- checkpoints -------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint as saved by `save_checkpoint`; never runs code from the file."""
    path = Path(path)
    try:
        open(path, "rb").close()
    except FileNotFoundError:
        raise TrainingError(f"{path}: checkpoint does not exist") from None
    except OSError as err:
        raise TrainingError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        with warnings.catch_warnings():  # a pickle of another protocol: torch warns, then refuses it below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for damaged files (a cut one: OSError)
        raise TrainingError(f"{path}: not a readable checkpoint ({_unreadable(err)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a train-mapping checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(state.get("config"), dict):
        raise TrainingError(f"{path}: not a readable checkpoint (damaged: step {step!r}, or no configuration)")
    return state


def _unreadable(err: Exception) -> str:
    """Why torch.load refused a file, in words. Not torch's own message for a refused pickle: it
    advises loading with weights_only=False, which would run code from the file."""
    if isinstance(err, pickle.UnpicklingError):
        return "not written by train-mapping: it holds objects other than tensors, or is damaged"
    if isinstance(err, RuntimeError):  # torch's archive reader: its first sentence says what is wrong
        return str(err).split(". ")[0]
    return "damaged, or not a file torch.save wrote"   # the unpickler's bare KeyError, EOFError...


def _changed(then: dict, now: dict) -> str:
    return ", ".join(f"{k} frames {then.get(k)} then, {now[k]} now" for k in now if then.get(k) != now[k])


def save_checkpoint(path: Path, state: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:   # a file object: failures are OSErrors, not torch's RuntimeError
            torch.save(state, fh)

    write_atomically(path, write)


def _check_resume(config: TrainConfig, saved: dict, path: Path) -> None:
    current = config.to_dict()
    # The cosine schedule anneals to the last step: there the number of steps shapes every rate.
    free = [k for k in RESUMABLE_CHANGES if not (k == "steps" and config.lr_schedule == "cosine")]

    def same(key: str, old) -> bool:
        # Data paths as folders: a run saved before --config paths were stored resolved kept them as given.
        if key in PATH_SETTINGS:
            return _as_folders(current.get(key)) == _as_folders(old)
        return current.get(key) == old

    differ = [k for k, v in saved.items() if k not in free and not same(k, v)]
    if differ:
        raise TrainingError(f"{path}: the run was started with different settings ({', '.join(differ)}); "
                            f"use a new --out folder or the same settings")


def _as_folders(value: str | list | None) -> str | list | None:
    if isinstance(value, list):
        return [str(Path(v).resolve()) for v in value]
    return str(Path(value).resolve()) if value else value


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run continues from (a new run:
    create the file, which with config.json marks the folder as a run)."""
    if not path.exists():
        path.touch()
        return
    keep = [json.dumps(r) for r in read_metrics(path) if r.get("step", math.inf) <= step]
    write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


# --- devices and processes ---------------------------------------------------------------------
def _wants_cuda(config: TrainConfig) -> bool:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: torch sees no CUDA device")
    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def _distributed(config: TrainConfig) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun, with the backend
    of the device the run trains on (NCCL cannot carry CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if _wants_cuda(config) else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if _wants_cuda(config):
        torch.cuda.set_device(local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if channels_last and v.ndim == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the strides of its parameters (channels_last on CUDA): fused
    kernels walk parameter and state memory in the same order."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    optimizer.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# --- evaluation --------------------------------------------------------------------------------
class RealEvaluation:
    """Mean 3D error (mm) on labelled real frames, cropped around the detected hand as at test time."""

    def __init__(self, config: TrainConfig, capture, frames: list[int], labels_uvd: np.ndarray) -> None:
        self.capture, self.labels_uvd = capture, np.asarray(labels_uvd)
        self.crops = crop_frames(capture, config, frames)

    @torch.no_grad()
    def __call__(self, method: Method, device: torch.device, autocast) -> dict:
        was_training = method.training
        method.eval()
        preds = []
        for chunk in self.crops.images.split(64):
            with autocast():
                preds.append(method.predict_real(chunk.to(device)).float().cpu())
        method.train(was_training)
        normalised = torch.cat(preds).numpy()
        pred_uvd = np.stack([g.to_uvd(p) for g, p in zip(self.crops.geometries, normalised)])
        result = evaluate_uvd(pred_uvd, self.labels_uvd, self.capture.intrinsics)
        return {"eval_mean_error_mm": result.mean_error_mm, "eval_frames": result.frames}


# --- the run -----------------------------------------------------------------------------------
def train(config: TrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Train (or resume) the run in folder `out`; returns the summary."""
    config.validate()
    method_cls = method_class(config.method)
    method_cls.check(config)
    rank, world, local_rank = _distributed(config)
    master = rank == 0
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"

    # Resume if the folder holds a checkpoint of the same run.
    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        _check_resume(config, state["config"], ckpt_path)
        if state["world"] != world:
            raise TrainingError(f"{ckpt_path}: saved by {state['world']} processes, resumed with {world}; "
                                f"the data order depends on it")
    start_step = 0 if state is None else int(state["step"])
    if start_step > config.steps:
        raise TrainingError(f"{ckpt_path}: the run is at step {start_step}, past steps = {config.steps}; "
                            f"use a new --out folder or at least {start_step} steps")
    if start_step >= config.steps and (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())   # already complete
    if master:
        check_writable(out, folder=True)
        others = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())   # not temporaries
        if others and state is None and not ((out / "config.json").exists() and (out / "metrics.jsonl").exists()):
            # Not a run (a run writes config.json and metrics.jsonl first): its files would be mixed with another's.
            raise TrainingError(f"{out}: a folder of other files, not a run; give a new or empty --out")

    # Data: everything is opened and checked before any output is written.
    parts = Parts.of(method_cls)
    with warnings.catch_warnings():
        if not master:
            warnings.simplefilter("ignore")   # every rank opens the same data; rank 0 says what it found
        sources = open_sources(config, parts)
    data_frames = {"synthetic": len(sources.synthetic), "real": [len(c) for c in sources.captures],
                   "pairs": None if sources.pairs is None else sum(len(t) for t in sources.pairs.twins)}
    if state is not None and state.get("frames", data_frames) != data_frames:
        raise TrainingError(f"{ckpt_path}: the data changed since the run began "
                            f"({_changed(state['frames'], data_frames)}); "
                            f"the batches depend on it: use a new --out folder or the data as it was")
    evaluation = None
    if master and (held := eval_frames(config, sources)) is not None:
        try:
            evaluation = RealEvaluation(config, *held)
        except DataError as err:
            which = "--eval" if config.eval else "the labelled frames not trained on; give --eval CAPTURE for others"
            raise DataError(f"evaluation frames ({which}): {err}") from None
    sources.synthetic.verify(rank, world, master and progress)   # last: it reads every shard

    # Device, networks, optimizers, schedules.
    device = _device(config, local_rank)
    cuda = device.type == "cuda"
    if config.compile and not cuda:
        # torch 2.13's inductor CPU backend segfaults in a generated backward kernel of the
        # murauer step (docs/training.md); compilation is for the CUDA path.
        raise TrainingError("--compile is for CUDA; on the CPU train without it")
    use_amp = config.amp == "on" or (config.amp == "auto" and cuda)
    if not cuda and config.workers:
        # The loader's processes need cores too; oversubscribed intra-op threads slow the step down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - config.workers))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext
    # Built before any output is written: it refuses a shard set too small for the workers.
    loader = train_loader(config, sources, parts, rank, world, start_step, pin_memory=cuda)
    torch.manual_seed(config.seed)
    method = build(config)
    critic = method.make_discriminator()
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and cuda)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    method.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(config, s))
    if critic is not None:
        critic.to(device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda)
        # The discriminator steps in the main phase only: its first step is step pretrain_steps.
        critic_sched = torch.optim.lr_scheduler.LambdaLR(
            critic_opt, lambda s: lr_multiplier(config, config.pretrain_steps + s))
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _match_layout(optimizer)
        scheduler.load_state_dict(state["scheduler"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
            critic_opt.load_state_dict(state["critic_optimizer"])
            critic_sched.load_state_dict(state["critic_scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
    # Unused parameters: pre-training leaves the mapping out, feature-mapping freezes the head.
    ids = [local_rank] if cuda else None
    model = DDP(method, device_ids=ids, find_unused_parameters=True) if world > 1 else method
    critic_train = DDP(critic, device_ids=ids) if (critic is not None and world > 1) else critic
    if config.compile:
        # The convolutional networks (nearly all the compute) compiled in place, so state_dict
        # keys are unchanged; two batch shapes (pre-training, main phase), so no dynamic shapes.
        for net in (getattr(method, name, None) for name in ("encoder", "decoder")):
            if net is not None:
                net.compile(dynamic=False)

    def frozen_critic(features: torch.Tensor) -> torch.Tensor:
        """The discriminator as the mapping sees it: gradients reach the features, not its weights."""
        params = {k: v.detach() for k, v in critic.named_parameters()}
        return functional_call(critic, params, (features,))

    def checkpoint(step: int) -> None:
        if not master:
            return
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
            "config": config.to_dict(), "world": world, "frames": data_frames,
            "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "critic": None if critic is None else critic.state_dict(),
            "critic_optimizer": None if critic is None else critic_opt.state_dict(),
            "critic_scheduler": None if critic is None else critic_sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}})

    # Run folder (rank 0): resolved config, metrics, TensorBoard.
    writer = None
    if master:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(out / "metrics.jsonl", start_step)   # first: config.json alone is no run (a user's file)
        write_json(out / "config.json", config.to_dict())   # usable as --config as it stands
        from torch.utils.tensorboard import SummaryWriter
        # Resumed at start_step, whose records metrics.jsonl keeps: TensorBoard drops only the later ones.
        writer = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)
    metrics_file = open(out / "metrics.jsonl", "a") if master else None

    def log(record: dict) -> None:
        if master:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    # The loop.
    samples_per_step = config.batch_size * world
    bar = tqdm(total=config.steps * samples_per_step, initial=start_step * samples_per_step, unit="sample",
               unit_scale=True, desc=f"{config.method}", disable=not (master and progress), dynamic_ncols=True)
    step, sums, count, t_log, frames_log = start_step, {}, 0, time.perf_counter(), 0
    t_start, frames_total = time.perf_counter(), 0
    # A run stopped after its last evaluation (and checkpoint) but before summary.json ends here
    # at once: its evaluation is the last one logged.
    last_eval = {k: v for k, v in _last_record(out / "metrics.jsonl", "eval_mean_error_mm").items()
                 if k.startswith("eval_")} if evaluation is not None else {}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    method.train()
    try:
        stream = batches(loader)
        while step < config.steps:   # not a batch more: a data error in it would fail a finished run
            batch = next(stream)
            pretrain = step < config.pretrain_steps
            frames = batch_size_of(batch) * world
            batch = _to_device(batch, device, channels_last)

            with autocast():
                terms = model(batch, pretrain, None if critic is None else frozen_critic)
            names = [k for k in terms if not k.startswith("critic_")]
            values = torch.stack([terms[k].detach().float() for k in names])
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            if critic is not None and "critic_real" in terms:
                with autocast():
                    d_loss = method.critic_loss(critic_train, terms)
                critic_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                critic_opt.step()
                critic_sched.step()
                names.append("critic")
                values = torch.cat([values, d_loss.detach().float()[None]])
            # One synchronisation per step: every term must be finite before anything is kept.
            vals = values.tolist()
            bad = next((n for n, v in zip(names, vals) if not math.isfinite(v)), None)
            if bad is not None:
                kept = f"last good checkpoint {ckpt_path} (step {load_checkpoint(ckpt_path)['step']})" \
                    if ckpt_path.exists() else "no checkpoint was written yet"
                raise TrainingError(f"step {step}: loss term '{bad}' is {vals[names.index(bad)]}; "
                                    f"stopped, {kept}")
            step += 1
            for n, v in zip(names, vals):
                sums[n] = sums.get(n, 0.0) + v
            count += 1
            frames_log += frames
            frames_total += frames
            bar.update(samples_per_step)

            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                record = {"step": step, "phase": "pretrain" if pretrain else "main",
                          "lr": scheduler.get_last_lr()[0], "samples_per_s": frames_log / (now - t_log),
                          **{f"train/{k}": v / count for k, v in sums.items()}}
                if cuda:
                    record["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                log(record)
                bar.set_postfix(loss=f"{record['train/loss']:.4g}", refresh=False)
                sums, count, t_log, frames_log = {}, 0, now, 0
            if evaluation is not None and (step % config.eval_every == 0 or step == config.steps):
                last_eval = evaluation(method, device, autocast)
                log({"step": step, **last_eval})
                bar.write(f"step {step}: mean 3D error on {last_eval['eval_frames']} labelled real "
                          f"frame(s) {last_eval['eval_mean_error_mm']:.2f} mm")
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint(step)
                if world > 1:
                    dist.barrier()
    finally:
        bar.close()
        if master:
            metrics_file.close()
            writer.close()

    elapsed = time.perf_counter() - t_start
    summary = {"method": config.method, "steps": step, "resumed_from": start_step, "world_size": world,
               "device": str(device), "seconds": elapsed,
               "samples_per_s": frames_total / elapsed if elapsed > 0 else None,
               "final_losses": {k: v for k, v in _last_record(out / "metrics.jsonl", "train/loss").items()
                                if k.startswith("train/")} if master else {},
               **last_eval}
    if cuda:
        summary["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if master:
        write_json(out / "summary.json", summary)
    return summary


def _last_record(path: Path, key: str) -> dict:
    """The last metrics line that has `key`."""
    return next((r for r in reversed(read_metrics(path)) if key in r), {})


__all__ = ["train", "load_checkpoint", "TrainingError", "ConfigError"]
