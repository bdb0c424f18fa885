"""Intrinsics from camera JSON and capture.json: mistyped values are refused, never converted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from render.camera import Intrinsics

GOOD = {"fx": 476.0, "fy": 476.0, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480}


@pytest.mark.parametrize("change, message", [
    ({"fx": "476"}, "intrinsics fx must be a positive number, got '476'"),
    ({"fy": True}, "intrinsics fy must be a positive number, got True"),
    ({"fx": -1}, "intrinsics fx must be a positive number, got -1"),
    ({"cx": None}, "intrinsics cx must be a finite number, got None"),
    ({"cy": float("nan")}, "intrinsics cy must be a finite number, got nan"),
    ({"width": "640"}, "intrinsics width must be a positive integer, got '640'"),
    ({"width": 640.7}, "intrinsics width must be a positive integer, got 640.7"),
    ({"height": False}, "intrinsics height must be a positive integer, got False"),
    ({"height": 10 ** 400}, "intrinsics height must be a positive integer"),
    ({"cx": 5000}, "intrinsics cx must lie on the 640x480 image (-0.5 to 639.5), got 5000"),
    ({"cy": -3.5}, "intrinsics cy must lie on the 640x480 image (-0.5 to 479.5), got -3.5"),
])
def test_mistyped_intrinsics_are_refused(tmp_path, change, message):
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"intrinsics": dict(GOOD, **change)}))
    with pytest.raises(ValueError) as err:
        Intrinsics.from_json(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_a_principal_point_at_the_image_edge_is_accepted():
    """The image spans -0.5 to size - 0.5 in pixel-centre coordinates; mirroring keeps that range."""
    for cx, cy in ((-0.5, -0.5), (639.5, 479.5)):
        assert Intrinsics(**dict(GOOD, cx=cx, cy=cy)).cx == cx


def test_integral_numbers_are_stored_as_float_and_int(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text(json.dumps(dict(GOOD, fx=476, width=640.0)))
    cam = Intrinsics.from_json(path)
    assert cam == Intrinsics(**GOOD)
    assert type(cam.fx) is float and type(cam.width) is int
    with pytest.raises(ValueError, match="intrinsics must be an object"):
        Intrinsics.from_dict([476, 476, 320, 240, 640, 480])


def _capture(root: Path, intrinsics: dict) -> Path:
    root.mkdir()
    (root / "capture.json").write_text(json.dumps({"intrinsics": intrinsics, "depth_encoding": "uint16",
                                                   "depth_scale_mm": 1.0, "hand": "right"}))
    Image.fromarray(np.full((480, 640), 800, np.uint16)).save(root / "0.png")
    return root


def _run(main, argv: list[str], capsys) -> tuple[object, list[str]]:
    """Exit status and stderr lines of a tool's main(), as the shell sees them."""
    try:
        rc = main(argv)
    except SystemExit as exit:
        rc = exit.code
    err = capsys.readouterr().err
    if isinstance(rc, str):  # sys.exit("message") prints the message and exits 1
        rc, err = 1, rc
    return rc, err.strip().splitlines()


@pytest.mark.parametrize("tool", ["render-hands", "hand-eval", "hand-model", "inspect-shards"])
def test_every_tool_refuses_a_boolean_focal_length_in_one_line(tmp_path, capsys, tool):
    bad = dict(GOOD, fx=True)
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps(bad))
    labels = tmp_path / "labels.txt"
    labels.write_text(" ".join(["320 240 700"] * 14) + "\n")
    if tool == "render-hands":
        from render.cli import main
        argv = ["--n", "2", "--out", str(tmp_path / "out"), "--camera", str(cam), "--dry-run"]
    elif tool == "hand-eval":
        from training.evaluate import main
        argv = ["--pred", str(labels), "--gt", str(labels), "--intrinsics", str(cam)]
    elif tool == "hand-model":
        from hand_models.cli import main
        argv = ["fit", str(labels), "--out", str(tmp_path / "poses.npz"), "--camera", str(cam)]
    else:
        from training.inspect import main
        cam = _capture(tmp_path / "cap", bad) / "capture.json"
        argv = [str(cam.parent), "--quiet", "--out", str(tmp_path / "sheets")]
    rc, lines = _run(main, argv, capsys)
    assert rc != 0
    assert len(lines) == 1 and lines[0].endswith(f"{cam}: intrinsics fx must be a positive number, got True")
    assert not (tmp_path / "out").exists() and not (tmp_path / "poses.npz").exists()
