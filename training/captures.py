"""Real depth captures from any sensor: a folder of depth frames described by `capture.json`.

```
capture.json  {"intrinsics": {fx, fy, cx, cy, width, height},   # pixels, of the depth images
               "depth_encoding": "uint16" | "nyu_rgb",          # 16-bit PNG, or NYU's G*256+B RGB PNG
               "depth_scale_mm": 1.0,                            # millimetres per stored unit
               "hand": "right" | "left",
               "labels": "labels_uvd.txt", "label_joints": "nyu14" | "21",   # optional
               "sensor": "...",                                  # optional, free text
               "views": [{"name": "side", "folder": "side",      # optional: other cameras of the rig
                          "intrinsics": {...}, "extrinsics_mm": 4x4}]}
*.png | *.npy  depth frames, in natural name order (2.png before 10.png); .npy arrays are
               (height, width) in the stored unit; depth_encoding may be left out when all are .npy
```

A view is another camera filming the same moments (NYU's rig had three): its folder holds as many
frames as the capture, frame i of each showing the same instant, in the capture's encoding and
unit. `extrinsics_mm` maps the capture camera's coordinates to the view camera's, X_view = T @
[X, 1] (mm, OpenCV axes: x right, y down, z forward). MURAUER's view prediction learns from them
on unlabeled frames: no labels are needed, only the rig's calibration.

Labels are `u v d` per joint (pixels, pixels, mm), one line per frame in frame order.

Left hands are mirrored to right hands, because every model here is trained on right hands: the
image is flipped left-right (column c -> width - 1 - c), label u -> width - 1 - u, and the
principal point cx -> width - 1 - cx, so the mirrored frame is an exact pinhole image of the
mirrored (x -> -x) scene; views likewise, their extrinsics becoming M T M with M = diag(-1, 1,
1, 1). `Capture.intrinsics` are those of the frames as returned; `mirror_uvd` undoes the label
flip (it is its own inverse) to report results in the original images.

Depth units are checked, not trusted: `check_units` locates the hand in a few frames and refuses a
capture whose hand is, in most of them, not at a distance and of a palm size a hand can have (a
wrong `depth_scale_mm` scales both), instead of feeding the trainer a giant or a doll.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from hand_models.joints import JOINT_NAMES, NYU14_NAMES
from render.camera import Intrinsics, is_number
from render.jsonfile import read_json_object
from training.evaluate import load_uvd
from training.crop import AugmentParams, Crop, CropConfig, crop_hand
from training.localize import HandLocation, LocalizeError, centre_from_labels, locate_hand

DEPTH_ENCODINGS = ("uint16", "nyu_rgb")
LABEL_JOINTS: dict[str, tuple[str, ...]] = {"nyu14": NYU14_NAMES, "21": JOINT_NAMES}
CAPTURE_FIELDS = ("intrinsics", "depth_encoding", "depth_scale_mm", "hand", "labels", "label_joints", "sensor", "views")
VIEW_FIELDS = ("name", "folder", "intrinsics", "extrinsics_mm")
LABELS_OUTSIDE_MAX = 1 / 3  # joints of one frame off the image beyond which labels belong to another camera
SENSOR_RANGE_MM = (100.0, 10_000.0)   # where a depth sensor's measured scene lies (median of a frame)
# What a hand in front of a depth camera can look like; outside this the depth unit is wrong.
PLAUSIBLE_NEAR_MM = (100.0, 2500.0)
PLAUSIBLE_PALM_WIDTH_MM = (30.0, 140.0)
PLAUSIBLE_HAND_AREA_MM2 = (3000.0, 30000.0)
HAND_DEPTH_MM = (100.0, 3000.0)   # where a hand's joints and crop centre can lie from a depth sensor
UNIT_CHECK_FRAMES = 3     # frames with a hand that check_units looks at ...
UNIT_CHECK_TRIES = 16     # ... among the first, middle, last and this many spread over the capture


class CaptureError(ValueError):
    """A capture that cannot be used; the message names the file and the problem."""


class NoHandError(CaptureError):
    """A readable frame in which no hand can be found (real captures have such frames)."""


MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])


@dataclass(frozen=True)
class CaptureView:
    """Another camera of the capture's rig: frame i of the view is frame i of the capture."""

    name: str
    intrinsics: Intrinsics          # of the frames as returned (mirrored for left hands)
    extrinsics_mm: np.ndarray       # 4x4, capture camera -> this camera, mm (mirrored for left hands)
    frames: tuple[Path, ...]

    def to_view(self, xyz_mm: np.ndarray) -> np.ndarray:
        """(..., 3) points of the capture camera in this camera's coordinates."""
        t = self.extrinsics_mm
        return np.asarray(xyz_mm, dtype=np.float64) @ t[:3, :3].T + t[:3, 3]


@dataclass(frozen=True)
class Capture:
    root: Path
    intrinsics: Intrinsics          # of the frames as returned (mirrored for left hands)
    depth_encoding: str | None      # None for captures of .npy arrays only
    depth_scale_mm: float
    hand: str                       # as captured; frames and labels are always right-handed
    frames: tuple[Path, ...]
    labels_uvd: np.ndarray | None   # (frames, joints, 3), mirrored like the frames
    label_joints: str | None
    sensor: str = ""
    views: tuple[CaptureView, ...] = ()

    def __getstate__(self) -> dict:
        # Loader workers get the capture pickled; the located frames (hands_to_check) hold
        # full-frame masks they never read.
        return {k: v for k, v in self.__dict__.items() if k != "hands_to_check"}

    @property
    def mirrored(self) -> bool:
        return self.hand == "left"

    def flip_left(self, uvd: np.ndarray) -> np.ndarray:
        """uvd between the capture's own images (files people read and write) and the frames as
        training reads them (where its labels, intrinsics and depth_mm are), either way: a left
        hand's are mirrored, and mirroring is its own inverse."""
        return mirror_uvd(uvd, self.intrinsics.width) if self.mirrored else uvd

    def __len__(self) -> int:
        return len(self.frames)

    def depth_mm(self, index: int, view: CaptureView | None = None) -> np.ndarray:
        """Frame `index` (of `view`, else of the capture's own camera) as float32 millimetres, 0
        where the sensor measured nothing."""
        path, cam = (self.frames[index], self.intrinsics) if view is None else (view.frames[index], view.intrinsics)
        raw = read_depth_file(path, self.depth_encoding)
        _check_size(path, raw.shape, cam)
        depth = raw.astype(np.float32) * np.float32(self.depth_scale_mm)
        return np.ascontiguousarray(depth[:, ::-1]) if self.mirrored else depth

    def check_frames(self) -> None:
        """Every frame of the capture and its views: header, and a PNG to its end (check_depth_header)."""
        for path in self.frames:
            check_depth_header(path, self.depth_encoding, self.intrinsics)
        for view in self.views:
            for path in view.frames:
                check_depth_header(path, self.depth_encoding, view.intrinsics)

    def view(self, name: str) -> CaptureView | None:
        return next((v for v in self.views if v.name == name), None)

    def locate(self, index: int) -> HandLocation:
        """The detected hand of frame `index` (see training.localize)."""
        try:
            return locate_hand(self.depth_mm(index), self.intrinsics)
        except LocalizeError as err:
            raise NoHandError(f"{self.frames[index]}: {err}") from None

    def crop(self, index: int, config: CropConfig = CropConfig(), augment: AugmentParams = AugmentParams(),
             centre_uvd: np.ndarray | None = None) -> Crop:
        """Frame `index` through the shared crop, around `centre_uvd` or, if not given, the
        labelled palm centre of a labelled capture or else the detected hand centre."""
        if centre_uvd is None:
            if self.labels_uvd is not None:
                centre_uvd = centre_from_labels(self.labels_uvd[index], self.label_joints, self.intrinsics)
            else:
                centre_uvd = self.locate(index).centre_uvd
        labels = None if self.labels_uvd is None else self.labels_uvd[index]
        return crop_hand(self.depth_mm(index), self.intrinsics, centre_uvd, labels, config, augment)

    @cached_property
    def hands_to_check(self) -> tuple[tuple[tuple[int, HandLocation], ...], tuple[int, ...], str | None]:
        """Up to UNIT_CHECK_FRAMES frames that show a hand with their locations, tried in this order:
        the first, middle and last frame, then others spread over the capture (a capture may well
        begin or end before the hand is in view); also the frames tried and the first miss. Kept:
        the unit check and the rig check (training.data.check_rig) both look at these frames."""
        spread = np.linspace(0, len(self) - 1, min(len(self), UNIT_CHECK_TRIES)).round().astype(int)
        tried = list(dict.fromkeys([0, len(self) // 2, len(self) - 1, *spread.tolist()]))
        found, first_miss = [], None
        for i in tried:
            try:
                found.append((i, self.locate(i)))
            except NoHandError as err:
                first_miss = first_miss or str(err)   # not the error: its traceback holds whole frames
                continue
            if len(found) == UNIT_CHECK_FRAMES:
                break
        return tuple(found), tuple(tried), first_miss

    def check_units(self) -> None:
        """Refuse the capture if most checked frames' hands (hands_to_check) have an implausible
        distance or size. A wrong unit scales every frame; one hand seen edge-on, say, is a frame."""
        found, tried, first_miss = self.hands_to_check
        if not found:
            raise CaptureError(f"{self.root}: no hand found in any of the {len(tried)} frames checked for "
                               f"depth units ({first_miss}){self.scale_hint(tried)}")
        bad = [(i, loc) for i, loc in found if implausible(loc)]
        if 2 * len(bad) > len(found):
            self.check_location(*bad[0])

    def scale_hint(self, frames: Sequence[int]) -> str:
        """A pointer to depth_scale_mm when the first of `frames` with measurements lies at no depth
        sensor's range (metres stored with depth_scale_mm 1 find no hand-sized object at all)."""
        for i in frames:
            depth = self.depth_mm(i)
            measured = depth[np.isfinite(depth) & (depth > 0)]
            if len(measured):
                median = float(np.median(measured))
                lo, hi = SENSOR_RANGE_MM
                if lo <= median <= hi:
                    return ""
                return (f"; {self.frames[i].name}'s measured depths have a median of {median:.3g} mm with "
                        f"depth_scale_mm={self.depth_scale_mm:g}: check depth_scale_mm in {self.root / 'capture.json'}")
        return ""

    def check_location(self, index: int, loc: HandLocation) -> None:
        """Refuse frame `index` if its detected hand is implausible (see check_units)."""
        bad = implausible(loc)
        if bad:
            raise CaptureError(
                f"{self.frames[index]}: depths implausible for a hand with depth_scale_mm="
                f"{self.depth_scale_mm:g}: {', '.join(bad)}; check depth_scale_mm in {self.root / 'capture.json'}")


def implausible(loc: HandLocation) -> list[str]:
    """What about a detected hand no hand at the right depth unit has: its distance, palm width, area."""
    checks = {"nearest object": (loc.near_mm, PLAUSIBLE_NEAR_MM, "mm"),
              "palm width": (loc.palm_width_mm, PLAUSIBLE_PALM_WIDTH_MM, "mm"),
              "hand area": (loc.hand_area_mm2, PLAUSIBLE_HAND_AREA_MM2, "mm^2")}
    return [f"{name} {value:.0f} {unit} (plausible {lo:.0f}-{hi:.0f})"
            for name, (value, (lo, hi), unit) in checks.items() if not lo <= value <= hi]


def check_labels(labels_uvd: np.ndarray, cam: Intrinsics, path: str | Path) -> None:
    """Refuse labels whose depths no hand has (metres or xyz given for u v d: pixels, pixels, mm)
    or a frame with more of its joints off the image than a hand at the border has (labels of
    another camera or resolution; a fingertip or two beyond the edge is fine)."""
    near, far = HAND_DEPTH_MM
    bad = np.argwhere((labels_uvd[..., 2] < near) | (labels_uvd[..., 2] > far))
    if len(bad):
        frame, joint = bad[0]
        raise CaptureError(f"{path}: frame {frame}, joint {joint}: depth {labels_uvd[frame, joint, 2]:g} mm is not a "
                           f"hand's distance ({near:.0f}-{far:.0f} mm; labels are u v d in pixels, pixels, mm)")
    outside = cam.outside(labels_uvd[..., :2])
    far_out = np.flatnonzero(outside.mean(axis=-1) > LABELS_OUTSIDE_MAX)
    if len(far_out):
        frame = far_out[0]
        joint = np.flatnonzero(outside[frame])[0]
        u, v = labels_uvd[frame, joint, :2]
        raise CaptureError(f"{path}: frame {frame}: {outside[frame].sum()} of its {outside.shape[-1]} label joints lie "
                           f"outside the {cam.width}x{cam.height} image (joint {joint} at u {u:g} v {v:g}): labels "
                           f"of another camera or resolution?")


def mirror_uvd(uvd: np.ndarray, width: int) -> np.ndarray:
    """Flip uvd labels left-right in an image `width` pixels wide (its own inverse)."""
    out = np.array(uvd, dtype=np.float64, copy=True)
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def mirror_intrinsics(cam: Intrinsics) -> Intrinsics:
    """Intrinsics of the left-right flipped image: cx -> width - 1 - cx."""
    return Intrinsics(cam.fx, cam.fy, (cam.width - 1) - cam.cx, cam.cy, cam.width, cam.height)


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A .npy array, never a pickle; other files are refused as such (numpy would blame pickled
    data and suggest loading it unsafely)."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError("not a .npy array file")
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def read_depth_file(path: Path, encoding: str | None) -> np.ndarray:
    """Stored depth units as a 2D array; refuses truncated files and wrong bit depths."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = _load_npy(path)
        except (OSError, ValueError) as err:
            raise CaptureError(f"{path}: cannot read depth array ({err})") from None
        _check_array(path, arr.shape, arr.dtype)
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if (arr < 0).any():
            raise CaptureError(f"{path}: negative depth values")
        return arr
    try:
        with Image.open(path) as im:
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise CaptureError(f"{path}: cannot decode image ({err})") from None
    _check_mode(path, mode, encoding)
    if encoding == "nyu_rgb":
        return arr[..., 1].astype(np.uint16) * 256 + arr[..., 2]
    return arr.astype(np.uint16)


def _check_array(path: Path, shape: tuple, dtype: np.dtype) -> None:
    if len(shape) != 2 or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise CaptureError(f"{path}: depth array must be 2D numbers, got {dtype} {shape}")


def _check_size(path: Path, shape: tuple, cam: Intrinsics) -> None:
    if tuple(shape) != (cam.height, cam.width):
        raise CaptureError(f"{path}: image is {shape[1]}x{shape[0]} but capture.json says {cam.width}x{cam.height}")


def _check_mode(path: Path, mode: str, encoding: str | None) -> None:
    if encoding == "nyu_rgb" and mode != "RGB":
        raise CaptureError(f"{path}: nyu_rgb depth must be an 8-bit RGB PNG, got mode {mode}")
    if encoding != "nyu_rgb" and mode not in ("I;16", "I;16B", "I;16L"):
        raise CaptureError(f"{path}: uint16 depth must be a 16-bit single-channel PNG, got mode {mode}")


def check_depth_header(path: Path, encoding: str | None, cam: Intrinsics) -> None:
    """Format, bit depth and size of a depth file from its header, and a PNG's chunk checksums
    to its end (0.2 ms a frame, where decoding costs 2 to 5): enough to refuse bad files, a cut
    one included, before hours of training reach them."""
    try:
        if path.suffix.lower() == ".npy":
            arr = _load_npy(path, mmap_mode="r")
            shape, dtype, mode = arr.shape, arr.dtype, None
        else:
            with Image.open(path) as im:
                shape, dtype, mode = im.size[::-1], None, im.mode
                im.verify()
    except (OSError, SyntaxError, ValueError) as err:
        raise CaptureError(f"{path}: cannot read depth ({err})") from None
    if mode is not None:
        _check_mode(path, mode, encoding)
    else:
        _check_array(path, shape, dtype)
    _check_size(path, shape, cam)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _frame_files(folder: Path) -> tuple[Path, ...]:
    """Depth frames in natural order; hidden files (macOS's ._0.png, editors' temporaries) are none."""
    return tuple(sorted((p for p in folder.iterdir()
                         if p.is_file() and p.suffix.lower() in (".png", ".npy") and not p.name.startswith(".")),
                        key=_natural_key))


def _check_keys(meta: dict, fields: tuple[str, ...], where: object) -> None:
    """Other keys are free metadata (the benchmark records its split and seed), but one that looks
    like a misspelt field the object lacks would silently drop that field: refused."""
    absent = [f for f in fields if f not in meta]
    for key in meta:
        if key not in fields and (near := difflib.get_close_matches(str(key).lower(), absent, n=1, cutoff=0.85)):
            raise CaptureError(f"{where}: unknown key {key!r}; did you mean {near[0]!r}?")


def _rigid(value: object) -> np.ndarray | None:
    """A 4x4 rigid transform (rotation, translation, last row 0 0 0 1) as an array, else None."""
    try:
        t = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if t.shape != (4, 4) or not np.isfinite(t).all() or not np.allclose(t[3], [0, 0, 0, 1]):
        return None
    r = t[:3, :3]
    return t if np.allclose(r @ r.T, np.eye(3), atol=1e-4) and np.linalg.det(r) > 0 else None


def _load_views(root: Path, meta_path: Path, entries: object, n_frames: int, mirrored: bool) -> tuple[CaptureView, ...]:
    if not isinstance(entries, list):
        raise CaptureError(f"{meta_path}: views must be a list of {{name, folder, intrinsics, extrinsics_mm}}")
    views: list[CaptureView] = []
    for k, entry in enumerate(entries):
        where = f"{meta_path}: views[{k}]"
        if not isinstance(entry, dict):
            raise CaptureError(f"{where} must be an object")
        _check_keys(entry, VIEW_FIELDS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name or any(v.name == name for v in views):
            raise CaptureError(f"{where}: name must be a non-empty string, unique among the views, got {name!r}")
        folder = root / str(entry.get("folder", ""))
        if "folder" not in entry or not folder.is_dir() or folder.resolve() == root.resolve():
            raise CaptureError(f"{where}: folder must name a subfolder of {root} holding the view's frames, "
                               f"got {entry.get('folder')!r}")
        try:
            cam = Intrinsics.from_dict(entry.get("intrinsics") or {})
        except ValueError as err:
            raise CaptureError(f"{where}: {err}") from None
        extrinsics = _rigid(entry.get("extrinsics_mm"))
        if extrinsics is None:
            raise CaptureError(f"{where}: extrinsics_mm must be a 4x4 rigid transform [[R, t], [0, 0, 0, 1]] "
                               f"(R a rotation, t in mm)")
        frames = _frame_files(folder)
        if len(frames) != n_frames:
            raise CaptureError(f"{folder}: {len(frames)} frames, the capture has {n_frames} (one per instant)")
        if mirrored:
            cam, extrinsics = mirror_intrinsics(cam), MIRROR_X @ extrinsics @ MIRROR_X
        views.append(CaptureView(name, cam, extrinsics, frames))
    return tuple(views)


def load_capture(root: str | Path, check_units: bool = True) -> Capture:
    """Read and validate a capture folder; `check_units=False` skips the depth-unit check."""
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"{root}: not a folder")
    meta_path = root / "capture.json"
    if not meta_path.is_file():
        raise CaptureError(f"{root}: no capture.json (a capture is depth frames plus capture.json)")
    try:
        meta = read_json_object(meta_path, "capture.json")
    except ValueError as err:
        raise CaptureError(str(err)) from None
    _check_keys(meta, CAPTURE_FIELDS, meta_path)
    try:
        cam = Intrinsics.from_dict(meta.get("intrinsics") or {})
    except ValueError as err:
        raise CaptureError(f"{meta_path}: {err}") from None
    scale = meta.get("depth_scale_mm")
    if not is_number(scale) or scale <= 0:
        raise CaptureError(f"{meta_path}: depth_scale_mm must be a positive number, got {scale!r}")
    hand = meta.get("hand")
    if hand not in ("right", "left"):
        raise CaptureError(f"{meta_path}: hand must be 'right' or 'left', got {hand!r}")

    frames = _frame_files(root)
    if not frames:
        raise CaptureError(f"{root}: no depth frames (*.png or *.npy)")
    encoding = meta.get("depth_encoding")
    needs_encoding = any(p.suffix.lower() == ".png" for p in frames)
    if encoding not in DEPTH_ENCODINGS and (needs_encoding or encoding is not None):
        raise CaptureError(f"{meta_path}: depth_encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got {encoding!r}")

    labels, label_joints = None, None
    if meta.get("labels") is not None:
        label_joints = meta.get("label_joints")
        if not isinstance(label_joints, str) or label_joints not in LABEL_JOINTS:
            raise CaptureError(f"{meta_path}: label_joints must be one of {', '.join(LABEL_JOINTS)}, got {label_joints!r}")
        labels_path = root / str(meta["labels"])
        try:
            labels = load_uvd(labels_path, len(LABEL_JOINTS[label_joints]))
        except ValueError as err:
            raise CaptureError(str(err)) from None
        if len(labels) != len(frames):
            raise CaptureError(f"{labels_path}: {len(labels)} label lines for {len(frames)} frames")
        check_labels(labels, cam, labels_path)

    views = _load_views(root, meta_path, meta["views"], len(frames), hand == "left") if "views" in meta else ()
    if hand == "left":
        cam = mirror_intrinsics(cam)
        labels = None if labels is None else mirror_uvd(labels, cam.width)
    capture = Capture(root=root, intrinsics=cam, depth_encoding=encoding, depth_scale_mm=float(scale),
                      hand=hand, frames=frames, labels_uvd=labels, label_joints=label_joints,
                      sensor=str(meta.get("sensor", "")), views=views)
    if check_units:
        capture.check_units()
    return capture
