"""inspect-shards: passes good data, names every broken shard or capture, draws pictures."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from render.atomic import write_json
from render.shards import MANIFEST, ShardWriter, iter_shard
from training.inspect import flexion_angles, main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "real_samples"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small real render-hands output (two shards)."""
    render_cli = pytest.importorskip("render.cli", reason="render-hands not available")
    out = tmp_path_factory.mktemp("render") / "ds"
    if render_cli.main(["--n", "6", "--out", str(out), "--workers", "1", "--shard-size", "3",
                        "--sensor", "kinect", "--quiet"]) not in (0, None):
        pytest.skip("render-hands could not render here")
    return out


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    target = tmp_path / "ds"
    shutil.copytree(dataset, target)
    return target


def _rewrite(root: Path, shard: str, edit) -> None:
    """Rewrite one shard with edit(key, files) applied, keeping the manifest consistent."""
    samples = list(iter_shard(root / shard))
    with ShardWriter(root, int(shard.split("-")[1].split(".")[0])) as w:
        for key, files in samples:
            edit(key, files)
            w.add(key, files)
        record = w.close()
    manifest = json.loads((root / MANIFEST).read_text())
    for r in manifest["shards"]:
        if r["name"] == shard:
            r.update(record.to_dict())
    write_json(root / MANIFEST, manifest)


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = main([*map(str, args), "--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_good_dataset_passes_with_statistics_and_pictures(dataset, tmp_path, capsys):
    rc, out, err = _run(capsys, dataset, "--out", tmp_path / "pics")
    assert rc == 0, err
    assert "6 frames, OK" in out and "hand distance" in out and "flexion index_pip" in out
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert names == ["contact_sheet_synthetic_ds.png", "histograms.png", "network_inputs.png"]


def test_checksum_mismatch_is_named(copy, tmp_path, capsys):
    data = bytearray((copy / "shard-000001.tar").read_bytes())
    data[600] ^= 0xFF
    (copy / "shard-000001.tar").write_bytes(bytes(data))
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1 and "shard-000001.tar: sha256 differs" in err


def test_eight_bit_png_is_named(copy, tmp_path, capsys):
    def to_8bit(key, files):
        if key.endswith("4"):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((20, 20), np.uint8)).save(buf, format="PNG")
            files["depth.png"] = buf.getvalue()

    _rewrite(copy, "shard-000001.tar", to_8bit)
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1
    assert "shard-000001.tar:000000004.depth.png: expected a 16-bit" in err
    assert "sha256" not in err  # the manifest was kept consistent: only the real fault shows


def test_joints_outside_image_and_bad_label_shape(copy, tmp_path, capsys):
    def move(key, files):
        label = json.loads(files["json"])
        if key.endswith("0"):
            label["joints_uvd"][3][0] += 1000.0
        if key.endswith("1"):
            label["nyu14_uvd"] = label["nyu14_uvd"][:13]
        files["json"] = json.dumps(label).encode()

    _rewrite(copy, "shard-000000.tar", move)
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1
    assert "shard-000000.tar:000000000: 1 joints outside the 640x480 image" in err
    assert "shard-000000.tar:000000001: nyu14_uvd has shape (13, 3)" in err


def test_labels_of_the_wrong_type_are_named(copy, tmp_path, capsys):
    def mistype(key, files):
        label = json.loads(files["json"])
        if key.endswith("0"):
            label["nyu14_uvd"] = "x"
        if key.endswith("1"):
            label["intrinsics"] = "nyu"
        files["json"] = json.dumps([1, 2, 3] if key.endswith("2") else label).encode()

    _rewrite(copy, "shard-000000.tar", mistype)
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1 and "Traceback" not in err
    assert "shard-000000.tar:000000000.json: malformed label (ValueError: could not convert" in err
    assert "shard-000000.tar:000000001.json: malformed label (ValueError: " in err
    assert "shard-000000.tar:000000002.json: not a JSON object" in err


def test_unwritable_picture_folder_is_one_line_before_the_checks(dataset, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    rc, out, err = _run(capsys, dataset, "--out", tmp_path / "file" / "pictures")
    assert rc == 2 and out == ""   # refused before reading every sample
    assert err.strip().splitlines() == [f"inspect-shards: error: {tmp_path / 'file' / 'pictures'}: cannot write "
                                        f"({tmp_path / 'file'} is not a folder)"]


def test_default_picture_folder_unwritable_still_checks(dataset, tmp_path, capsys, monkeypatch):
    """No --out, and a working directory one may not write: the checks run, the pictures are skipped."""
    blocker = tmp_path / "cwd"
    blocker.mkdir()
    monkeypatch.chdir(blocker)
    from render import atomic

    def refuse(path, folder=False):
        raise atomic.WriteError(f"{path}: cannot write (Read-only file system)")

    monkeypatch.setattr("training.inspect.check_writable", refuse)
    rc, out, err = _run(capsys, dataset)
    assert rc == 0 and "OK" in out and "pictures:" not in out
    assert err.strip().splitlines() == [f"inspect-shards: no pictures: inspect-{dataset.name}: cannot write "
                                        f"(Read-only file system); give --out"]
    assert not list(blocker.iterdir())


def test_counts_missing_and_truncated_shards(copy, tmp_path, capsys):
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["count"] += 1
    write_json(copy / MANIFEST, manifest)
    data = (copy / "shard-000001.tar").read_bytes()
    (copy / "shard-000001.tar").write_bytes(data[: len(data) // 3])
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1 and "manifest.json: count 7 but its shards hold 6" in err
    assert "shard-000001.tar: unreadable tar after 1 of its 3 samples" in err
    assert "samples but the manifest says" not in err and "samples found" not in err   # consequences, not repeated
    (copy / "shard-000000.tar").unlink()
    rc, _, err = _run(capsys, copy, "--out", tmp_path / "p")
    assert rc == 1 and "shard-000000.tar: missing" in err


def test_not_a_dataset_or_capture(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, tmp_path / "empty")
    assert rc == 2 and "empty: no manifest.json or capture.json" in err


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")
def test_real_captures_pass_and_sit_beside_synthetic(dataset, tmp_path, capsys):
    rc, out, err = _run(capsys, dataset, SAMPLES, "--out", tmp_path / "pics")
    assert rc == 0, err
    assert "detected centre to labelled palm centre" in out
    pics = {p.name for p in (tmp_path / "pics").iterdir()}
    assert {"contact_sheet_real_nyu.png", "contact_sheet_real_seq_a.png", "network_inputs.png"} <= pics


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")
def test_broken_captures_are_named(tmp_path, capsys):
    seq = SAMPLES / "realsense_sr305" / "seq_a"
    bad = tmp_path / "seq"
    shutil.copytree(seq, bad)
    data = (bad / "50.png").read_bytes()
    (bad / "50.png").write_bytes(data[: len(data) // 2])
    meta = json.loads((bad / "capture.json").read_text())
    rc, _, err = _run(capsys, bad, "--out", tmp_path / "p")
    assert rc == 1 and "50.png: cannot decode" in err and err.count("inspect-shards:") == 1
    meta["depth_scale_mm"] = 1.0
    (bad / "capture.json").write_text(json.dumps(meta))
    (bad / "50.png").unlink()
    rc, _, err = _run(capsys, bad, "--out", tmp_path / "p")
    assert rc == 1 and "30.png: depths implausible" in err and err.count("inspect-shards:") == 7
    # A capture none of whose frames decodes is one problem per frame, and the captures beside it
    # are still reported.
    both = tmp_path / "both"
    shutil.copytree(SAMPLES / "bighand", both / "bighand")
    shutil.copytree(SAMPLES / "nyu", both / "nyu")
    for png in (both / "bighand").glob("*.png"):
        png.write_bytes(png.read_bytes()[:200])
    rc, out, err = _run(capsys, both, "--out", tmp_path / "p2")
    assert rc == 1 and "cannot decode" in err and "Traceback" not in err, err
    assert "nyu" in out and "detected centre to labelled palm centre" in out


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")
def test_pictures_neither_collide_nor_land_in_a_capture(tmp_path, capsys):
    """Two captures of one name get a contact sheet each; --out naming an input folder is refused,
    since its pictures would become frames of the capture."""
    for day in ("day1", "day2"):
        shutil.copytree(SAMPLES / "bighand", tmp_path / day / "seq")
    rc, out, err = _run(capsys, tmp_path / "day1", tmp_path / "day2", "--out", tmp_path / "p")
    assert rc == 0, err
    assert {"contact_sheet_real_seq.png", "contact_sheet_real_seq_2.png"} <= {p.name for p in (tmp_path / "p").iterdir()}
    before = sorted((tmp_path / "day1" / "seq").iterdir())
    rc, _, err = _run(capsys, tmp_path / "day1" / "seq", "--out", tmp_path / "day1" / "seq")
    assert rc == 2 and err.count("\n") == 1 and "is an input folder" in err
    assert sorted((tmp_path / "day1" / "seq").iterdir()) == before


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")
def test_a_frame_whose_hand_merges_with_the_body_is_no_unit_problem(tmp_path, capsys):
    """One frame of eight with a surface at the hand's depth joined to it: its detection is
    implausible, the capture's unit is not, and the line says so instead of pointing at the unit."""
    from PIL import Image

    seq = tmp_path / "seq"
    shutil.copytree(SAMPLES / "realsense_sr305" / "seq_a", seq)
    depth = np.asarray(Image.open(seq / "50.png")).copy()
    near = int(np.percentile(depth[depth > 0], 2))
    body = depth[200:]
    body[(body == 0) | (body > near + 400)] = near + 80   # a body just behind the hand's nearest point
    Image.fromarray(depth).save(seq / "50.png")
    rc, _, err = _run(capsys, seq, "--out", tmp_path / "p")
    assert rc == 1 and err.count("inspect-shards:") == 1, err
    assert f"{seq / '50.png'}: the detected hand is implausible (palm width" in err
    assert "while most frames' are not: the detector probably merged it with the arm, body or table" in err


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (shared real samples)")
def test_metres_and_a_rig_facing_away_are_named(tmp_path, capsys):
    """Depth stored in metres with depth_scale_mm 1 finds no hand anywhere: the unit is named. A
    view whose extrinsics put the hand behind its camera, which training refuses, is named too."""
    from PIL import Image

    src = SAMPLES / "realsense_sr305" / "seq_a"
    metres = tmp_path / "metres"
    metres.mkdir()
    meta = json.loads((src / "capture.json").read_text())
    for png in sorted(src.glob("*.png"))[:2]:
        np.save(metres / f"{png.stem}.npy", np.asarray(Image.open(png), np.float32) * meta["depth_scale_mm"] / 1000)
    (metres / "capture.json").write_text(json.dumps(dict(meta, depth_scale_mm=1.0)))
    rc, _, err = _run(capsys, metres, "--out", tmp_path / "p")
    assert rc == 1 and f"{metres}: no hand found in any frame; " in err
    assert "measured depths have a median of" in err and "check depth_scale_mm in" in err

    rig = tmp_path / "rig"
    shutil.copytree(src, rig)
    shutil.copytree(src, rig / "side", ignore=shutil.ignore_patterns("*.json"))
    meta["views"] = [{"name": "side", "folder": "side", "intrinsics": meta["intrinsics"],
                      "extrinsics_mm": np.diag([-1.0, 1.0, -1.0, 1.0]).tolist()}]   # turned to face away
    (rig / "capture.json").write_text(json.dumps(meta))
    rc, _, err = _run(capsys, rig, "--out", tmp_path / "p")
    assert rc == 1 and err.count("inspect-shards:") == 1 and "the hand lies behind the side camera" in err, err


def test_flexion_of_straight_and_bent_finger():
    xyz = np.zeros((21, 3))
    for f in range(5):
        base = 1 + 4 * f
        xyz[base:base + 4] = [[f * 20.0, -30.0 * (k + 1), 0] for k in range(4)]
    assert np.allclose(flexion_angles(xyz)[[4, 5]], 0, atol=1e-6)  # index PIP, DIP straight
    xyz[8] = xyz[7] + [0, 0, -30.0]  # index tip bent 90 deg at the DIP
    assert flexion_angles(xyz)[5] == pytest.approx(90.0)


def test_malformed_manifest_record_is_one_problem(copy, tmp_path, capsys):
    """A shard record whose count is not a count (read_manifest checks every record for every reader)."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][1]["count"] = "lots"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = _run(capsys, copy, "--out", tmp_path / "pics")
    assert rc == 1 and "Traceback" not in err
    assert f"inspect-shards: {copy / 'manifest.json'}: malformed manifest (ValueError: expected a count, got 'lots')" in err


def test_a_shard_name_outside_the_dataset_folder_is_refused(copy, tmp_path, capsys):
    """A manifest can name only files in its own folder: not /etc/hostname, not ../x.tar."""
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in ("/etc/hostname", "../shard-000001.tar"):
        manifest["shards"][1]["name"] = name
        (copy / "manifest.json").write_text(json.dumps(manifest))
        rc, out, err = _run(capsys, copy, "--out", tmp_path / "pics")
        assert rc == 1 and "Traceback" not in err
        assert (f"{copy / 'manifest.json'}: malformed manifest (ValueError: expected a shard's file name in the "
                f"dataset folder, got {name!r})") in err


def test_a_shard_listed_twice_is_found_by_its_keys(copy, tmp_path, capsys):
    """Sample i is key i in manifest order: a repeated shard (or a gap from slices of different
    runs) breaks that, even where every shard's own checksum holds."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"].insert(1, dict(manifest["shards"][0]))
    manifest["count"] += manifest["shards"][0]["count"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = _run(capsys, copy, "--out", tmp_path / "pics")
    assert rc == 1
    due = manifest["shards"][0]["count"]
    assert f"{copy / manifest['shards'][1]['name']}: sample 000000000 where {due:09d} is due" in err


def test_a_manifest_path_is_its_folder_and_unmerged_slices_are_named(copy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, copy / "manifest.json")
    assert rc == 0 and f"== {copy} (synthetic): 6 frames, OK" in out
    assert (tmp_path / "inspect-ds" / "histograms.png").is_file()   # the default folder is named for DIR
    (copy / "manifest.json").rename(copy / "manifest.slice-00000-of-00002.json")
    rc, out, err = _run(capsys, copy, "--out", tmp_path / "pics")
    assert rc == 2 and err == (f"inspect-shards: error: {copy}: slices of a dataset not merged yet (render-hands merge "
                               f"{copy} [SLICE_DIR ...] writes its manifest.json)\n")
