"""Loss curves of a run folder (metrics.jsonl) as a PNG, for people who would rather look than read."""

from __future__ import annotations

import json
from pathlib import Path

from render.camera import is_number
from render.jsonfile import read_json_object
from training.figures import save_figure

PANELS = ("pose (summed squared error, normalised units)", "the method's other terms (weighted)",
          "adversarial terms (weighted) and discriminator")


def panel(term: str) -> int:
    """Which of PANELS a logged loss term belongs to, for every method's terms."""
    if term in ("pose_synth", "pose_real"):
        return 0
    return 2 if any(k in term for k in ("adversarial", "critic", "realism")) else 1


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl that parse as objects with a step (a crash can leave the last
    line torn)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and is_number(record.get("step")):
            records.append(record)
    return records


def plot_run(run: str | Path, path: str | Path, title: str | None = None) -> None:
    """Write the curves of run folder `run` to `path` (temporary name, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, path = Path(run), Path(path)
    # Numeric values only: a hand-edited file can hold anything.
    records = [{k: v for k, v in r.items() if is_number(v)} for r in read_metrics(run / "metrics.jsonl")]
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval_mean_error_mm" in r and "eval_frames" in r]
    if not train:
        raise ValueError(f"{run / 'metrics.jsonl'}: no training records to plot")
    config = read_json_object(run / "config.json", "run config")
    pretrain = config.get("pretrain_steps")
    fig, axes = plt.subplots(1, len(PANELS) + 1, figsize=(4.2 * (len(PANELS) + 1), 3.8))
    terms = sorted({k[len("train/"):] for r in train for k in r if k.startswith("train/")} - {"loss"})
    for term in terms:
        pts = [(r["step"], r[f"train/{term}"]) for r in train if f"train/{term}" in r]
        axes[panel(term)].plot(*zip(*pts), label=term)
    for ax, label in zip(axes, PANELS):
        ax.set_title(label, fontsize=9)
        ax.set_yscale("log")
    ax = axes[-1]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_mean_error_mm"] for r in evals], "o-", color="k",
                label=f"{evals[-1]['eval_frames']} labelled real frame(s)")
    ax.set_title("mean 3D joint error on real frames (mm)", fontsize=9)
    for ax in axes:
        if is_number(pretrain) and 0 < pretrain < train[-1]["step"]:
            ax.axvline(pretrain, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or f"{config.get('method', 'run')}: {run.name} (dashed: end of synthetic pre-training)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
