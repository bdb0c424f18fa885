"""Joint predictions for the frames of a real capture, as uvd text files hand-eval reads.

One line per frame, `u v d` per joint (pixels, pixels, mm) in the capture's own images (left
hands are mirrored back). Frames are cropped around the detected hand, as they would be for a
capture nobody labelled; `frame_centres(capture, "labels")` gives the labelled palm centres instead (the
protocol of papers that use ground-truth centres), and `frame_centres(capture, FILE)` the centres of a
centres file (`u v d` per line, in the capture's own images: one written by `save_frame_centres`, so
a long capture is located once for many models, or a published one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from render.atomic import write_atomically
from training.captures import HAND_DEPTH_MM, Capture
from training.config import ConfigError, TrainConfig
from training.data import DataError, crop_frames, detected_centres
from training.evaluate import EvalResult, evaluate_uvd
from training.localize import centre_from_labels, load_centres, save_centres
from training.methods import Method, build
from training.train import TrainingError, load_checkpoint


def load_model(checkpoint: str | Path, device: torch.device = torch.device("cpu")) -> tuple[Method, TrainConfig]:
    """The trained method of a checkpoint, in eval mode."""
    state = load_checkpoint(checkpoint)
    try:
        config = TrainConfig.from_dict(state["config"], source=str(checkpoint)).validate()
        method = build(config)
    except ConfigError as err:
        raise TrainingError(f"{checkpoint}: its settings are refused ({err})") from None
    try:
        method.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        # torch lists every missing and unexpected key, over many lines: the start says enough
        why = " ".join(str(err).split()) or type(err).__name__
        why = why if len(why) <= 200 else why[:200] + " ..."
        raise TrainingError(f"{checkpoint}: checkpoint does not match its configuration ({why})") from None
    return method.to(device).eval(), config


def frame_centres(capture: Capture, centre: str | Path = "detect") -> np.ndarray:
    """Crop centre of every frame (uvd, in the frames as training reads them): the detected hand,
    the labelled palm centre, or a centres file's. Detection costs more than a small network's
    forward pass, so a caller scoring many models computes it once."""
    if centre == "labels":
        if capture.labels_uvd is None:
            raise DataError(f"{capture.root}: --centre labels needs a labelled capture")
        return centre_from_labels(capture.labels_uvd, capture.label_joints, capture.intrinsics)
    if centre == "detect":
        return detected_centres(capture, list(range(len(capture))))
    try:
        centres = load_centres(centre, frames=len(capture))
    except ValueError as err:
        raise DataError(str(err)) from None
    cam, (near, far) = capture.intrinsics, HAND_DEPTH_MM
    for frame, (u, v, d) in enumerate(centres):
        if cam.outside(np.array([u, v])):
            raise DataError(f"{centre}: frame {frame}: centre {u:g} {v:g} lies outside the {cam.width}x{cam.height} image")
        if not near <= d <= far:
            raise DataError(f"{centre}: frame {frame}: centre depth {d:g} mm is not a hand's distance ({near:.0f}-{far:.0f} "
                            f"mm; a centres file holds u v d in pixels, pixels, mm)")
    return capture.flip_left(centres)


def save_frame_centres(path: str | Path, capture: Capture, centres_uvd: np.ndarray) -> None:
    """A centres file of `frame_centres`' centres, in the capture's own images."""
    save_centres(path, capture.flip_left(centres_uvd))


@torch.no_grad()
def predict_capture(method: Method, config: TrainConfig, capture: Capture, centres_uvd: np.ndarray,
                    device: torch.device = torch.device("cpu"), batch: int = 64) -> np.ndarray:
    """(frames, joints, 3) uvd in the capture's original images, from crops around `centres_uvd`
    (frame_centres)."""
    if len(centres_uvd) != len(capture):
        raise DataError(f"{capture.root}: {len(centres_uvd)} crop centres for {len(capture)} frames")
    crops = crop_frames(capture, config, centres_uvd=centres_uvd)
    out = torch.cat([method.predict_real(x.to(device)).float().cpu() for x in crops.images.split(batch)]).numpy()
    uvd = np.stack([g.to_uvd(p) for g, p in zip(crops.geometries, out)])
    return capture.flip_left(uvd)


def score_capture(capture: Capture, pred_uvd: np.ndarray) -> EvalResult:
    """predict_capture's predictions against the capture's own labels."""
    if capture.labels_uvd is None:
        raise DataError(f"{capture.root}: capture has no labels to score against")
    return evaluate_uvd(capture.flip_left(pred_uvd), capture.labels_uvd, capture.intrinsics)


def write_uvd(path: str | Path, uvd: np.ndarray) -> None:
    """One frame per line, atomically (temporary name, then rename)."""
    lines = [" ".join(f"{x:.4f}" for x in frame.reshape(-1)) for frame in uvd]
    write_atomically(Path(path), lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
