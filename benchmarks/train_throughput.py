"""Training throughput of train-mapping: samples/s per method, data-loader-only samples/s, and on
CUDA the GPU utilisation and peak memory.

    python benchmarks/train_throughput.py [--preset auto|cpu-small|paper] [--steps 30] [--workers N]

Data: a 3-view Kinect-sensor shard set and the twins of the labelled NYU frame (rendered from its
fitted pose), made once under --data with render-hands; real frames from ../shared/real_samples.
Every method runs its main phase (the heavier one: all kinds of frames) for --steps steps after
a warm-up; the loader is measured alone with the same composition. Writes the "train throughput"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BENCHMARKS_MD, check_outputs, command_line, machine, write_section  # noqa: E402
from render.arguments import OneLineParser, positive_int  # noqa: E402

from training.config import TrainConfig, preset  # noqa: E402
from training.data import Parts, batch_size_of, batches, open_sources, train_loader  # noqa: E402
from training.methods import REGISTRY, method_class  # noqa: E402
from training.curves import read_metrics  # noqa: E402
from training.train import train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "real_samples"


def make_data(root: Path, n: int) -> dict[str, str]:
    """Synthetic shards and NYU-frame twins under `root`, the script's own: render-hands reuses
    finished shards of the same settings and code, and replaces any others (--overwrite)."""
    root.mkdir(parents=True, exist_ok=True)
    render = [sys.executable, "-m", "render.cli", "--sensor", "kinect", "--quiet", "--overwrite"]
    poses = root / "nyu_pose.npz"
    for step in (render + ["--n", str(n), "--shard-size", "64", "--views", "3", "--out", str(root / "synth")],
                 None if poses.exists() else [sys.executable, "-m", "hand_models.cli", "fit", str(REAL / "nyu/labels_uvd.txt"),
                                              "--out", str(poses), "--steps", "200"],
                 render + ["--n", "16", "--shard-size", "16", "--poses", str(poses), "--out", str(root / "pairs")]):
        if step is not None and subprocess.run(step, stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"train_throughput.py: error: making the data in {root} failed (its message above)")
    return {"synthetic": str(root / "synth"), "pairs": str(root / "pairs")}


class GpuSampler:
    """Mean GPU utilisation (%) over a block, sampled every 0.2 s (None where it cannot be read)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # pynvml absent: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:
                return None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> "GpuSampler":
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def run_config(base: TrainConfig, data: dict[str, str], method: str, steps: int, warmup: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "method": method, "synthetic": data["synthetic"], "pairs": data["pairs"],
        "real": [str(REAL / "nyu"), str(REAL / "realsense_sr305/seq_a"), str(REAL / "bighand")], "n_labeled": 1,
        # One pre-training step (feature-mapping freezes a pre-trained head), within the warm-up: every
        # measured step is a main-phase step.
        "pretrain_steps": 1, "steps": warmup + steps, "log_every": warmup, "eval_every": 10**9,
        "checkpoint_every": 10**9}, base).validate()


def train_rate(config: TrainConfig, warmup: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    try:
        with GpuSampler() as gpu:
            summary = train(config, out, progress=False)
        records = read_metrics(out / "metrics.jsonl")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    measured = [r for r in records if "samples_per_s" in r and r["step"] > warmup]
    return {"samples_per_s": float(np.mean([r["samples_per_s"] for r in measured])),
            "gpu_util": gpu.mean, "gpu_peak_gb": summary.get("gpu_peak_memory_gb")}


def loader_rate(config: TrainConfig, count: int) -> float:
    parts = Parts.of(method_class(config.method))
    loader = batches(train_loader(config, open_sources(config, parts), parts, pin_memory=torch.cuda.is_available()))
    next(loader)  # workers started
    t, frames = time.perf_counter(), 0
    for _ in range(count):
        frames += batch_size_of(next(loader))
    return frames / (time.perf_counter() - t)


def main() -> None:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["auto", "cpu-small", "paper"], default="auto",
                   help="auto: paper on CUDA, cpu-small on CPU")
    p.add_argument("--steps", type=positive_int, default=30, help="measured training steps per method")
    p.add_argument("--warmup", type=positive_int, default=5)
    p.add_argument("--loader-batches", type=positive_int, default=60)
    p.add_argument("--workers", type=positive_int, default=None, help="loader workers (default: cores - 1, at least 1)")
    p.add_argument("--methods", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "train-throughput-data")
    p.add_argument("--n", type=positive_int, default=512, help="synthetic samples to render into --data")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args()
    if args.data.exists() and not args.data.is_dir():
        sys.exit(f"train_throughput.py: error: {args.data}: exists and is not a folder")
    if not args.no_write:
        check_outputs(BENCHMARKS_MD)

    cuda = torch.cuda.is_available()
    name = args.preset if args.preset != "auto" else ("paper" if cuda else "cpu-small")
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    data = make_data(args.data, args.n)
    base = TrainConfig.from_dict({"workers": workers, "compile": args.compile}, preset(name))

    rows = []
    for method in args.methods:
        config = run_config(base, data, method, args.steps, args.warmup)
        train_r = train_rate(config, args.warmup)
        load_r = loader_rate(config, args.loader_batches)
        rows.append((method, train_r, load_r))
        print(f"{method}: train {train_r['samples_per_s']:.1f} samples/s, loader {load_r:.1f} samples/s, "
              f"GPU util {train_r['gpu_util']}, peak {train_r['gpu_peak_gb']}", flush=True)
    synth_cfg = TrainConfig.from_dict({"method": "synthetic-only"}, run_config(base, data, "synthetic-only", 1, 1))
    synth_loader = loader_rate(synth_cfg, args.loader_batches)

    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    lines = [
        "## Training throughput (train-mapping)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}. Device: {device}. Preset `{name}` (crop {base.crop_size} px, batch "
        f"{base.batch_size}), {workers} loader worker(s), torch {torch.__version__}"
        f"{', bf16 autocast, channels_last, fused Adam' if cuda else ', float32'}"
        f"{', torch.compile' if args.compile else ''}. Main-phase batches (all kinds of frames the method "
        f"reads); {args.steps} measured steps after {args.warmup} warm-up steps.",
        "",
        f"Command: `{command_line()}`",
        "",
        "| method | train samples/s | loader-only samples/s | loader / train | GPU util % | peak GPU memory GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, t, loader in rows:
        lines.append(f"| {method} | {t['samples_per_s']:.1f} | {loader:.1f} | {loader / t['samples_per_s']:.2f} | "
                     f"{fmt(t['gpu_util'], '.0f')} | {fmt(t['gpu_peak_gb'], '.2f')} |")
    lines += ["", f"Loader-only, synthetic frames only (pre-training batches): {synth_loader:.1f} samples/s.", ""]
    if not cuda:
        lines += ["GPU figures are still open: no GPU has been measured yet. The goals (one H100/H200: loader "
                  ">= 2x training consumption; the full MURAUER schedule, about 19.6 million samples, in "
                  "<= 30 minutes, i.e. >= 11,000 samples/s) are to be checked with `--preset paper` on a GPU "
                  "machine.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"train throughput {name} {'cuda' if cuda else 'cpu'}", text)


if __name__ == "__main__":
    main()
