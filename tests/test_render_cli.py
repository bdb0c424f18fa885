"""render-hands end to end: manifest and shard round trip, determinism across worker counts,
resume after a killed run, slices and merge, refusal of bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hand_models.joints import JOINT_NAMES
from render.cli import main
from render.gl import choose_backend
from render.shards import FORMAT_NAME, FORMAT_VERSION, check_manifest, iter_samples, iter_shard, read_manifest

choose_backend()
BASE = ["--n", "40", "--shard-size", "16", "--seed", "3", "--quiet"]


def _run(out: Path, *extra: str, workers: int = 1) -> int:
    return main(BASE + ["--out", str(out), "--workers", str(workers), *extra])


def _hashes(out: Path) -> list[str]:
    return [s["sha256"] for s in read_manifest(out)["shards"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "data"
    assert _run(out) == 0
    return out


def test_manifest_and_shards_round_trip(reference):
    m = read_manifest(reference)
    assert m["count"] == 40 and [s["count"] for s in m["shards"]] == [16, 16, 8]
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert m["joint_names"] == list(JOINT_NAMES) and m["seed"] == 3
    assert m["intrinsics"] == {"fx": 588.03, "fy": 587.07, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480}
    assert m["hand_model"]["id"] == "open-right-v1" and len(m["hand_model"]["checksum"]) == 64
    assert m["sensor"] == "clean" and m["generator"]["name"] == "render-hands"
    assert "--n 40" in m["command"]
    samples = list(iter_samples(reference, verify=True))
    assert [s["key"] for s in samples] == [f"{i:09d}" for i in range(40)]
    for s in samples:
        assert "." not in s["key"] and s["index"] == int(s["key"])
        assert s["depth"].dtype == np.uint16 and s["depth"].max() > 255  # all 16 bits survive
        assert list(s["depth"].shape) == s["crop_size"][::-1]
        assert len(s["joints_uvd"]) == 21 and len(s["nyu14_uvd"]) == 14
        assert s["views"] == []
    assert not list(reference.glob(".*.tmp-*"))


def test_same_samples_whatever_the_worker_count(reference, tmp_path):
    assert _run(tmp_path / "two", workers=2) == 0
    assert _hashes(tmp_path / "two") == _hashes(reference)


def test_a_sample_does_not_depend_on_n(reference, tmp_path):
    """Sample i's bytes depend on (seed, i) and the configuration: a longer run repeats the shorter
    one's samples exactly, also those of its last, partial render chunk (40 of 64)."""
    assert main(["--n", "72", "--shard-size", "16", "--seed", "3", "--quiet", "--out", str(tmp_path / "long"),
                 "--workers", "1"]) == 0
    longer = {key: files for shard in sorted((tmp_path / "long").glob("shard-*.tar")) for key, files in iter_shard(shard)}
    shorter = {key: files for shard in sorted(reference.glob("shard-*.tar")) for key, files in iter_shard(shard)}
    assert len(shorter) == 40 and all(longer[key] == files for key, files in shorter.items())


def test_resume_after_killed_run(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "render.cli", *BASE, "--shard-size", "4", "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("shard-*.tar"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(out.glob("shard-*.tar"))
    assert 2 <= len(finished) < 10, "the run should have been killed part way"
    assert not (out / "manifest.json").exists()
    assert main(BASE + ["--shard-size", "4", "--out", str(out), "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["count"] == 40 and len(m["shards"]) == 10
    assert not list(out.glob(".*.tmp-*"))
    # identical samples to an uninterrupted run (shard size changes only how they are packed)
    ref = {s["key"]: s["depth"].tobytes() for s in iter_samples(reference)}
    again = {s["key"]: s["depth"].tobytes() for s in iter_samples(out, verify=True)}
    assert again == ref


def test_ctrl_c_while_workers_start_stops_cleanly(tmp_path):
    """The terminal sends Ctrl-C to every process of the job: the workers, importing or rendering,
    must not die with tracebacks of their own; the run stops with one line (resuming is tested above)."""
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "render.cli", *BASE, "--n", "2000", "--shard-size", "4", "--out", str(out),
           "--workers", "2"]   # long enough not to finish before the signal
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / ".render-hands" / "dataset.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(2.0)   # workers importing or rendering: before the fix each printed a traceback
    err = ""
    try:
        for _ in range(3):   # a Ctrl-C during the few ms the pool starts is ignored, as by a user's shell
            os.killpg(proc.pid, signal.SIGINT)
            try:
                err = proc.communicate(timeout=20)[1]
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("render-hands: interrupted"), err


def test_sigterm_stops_the_workers_and_the_run_resumes(tmp_path):
    """kill (a batch system's stop) ends the run as Ctrl-C does: one line, exit 143, and no
    worker goes on writing shards after the command has ended."""
    out = tmp_path / "terminated"
    cmd = [sys.executable, "-m", "render.cli", *BASE, "--n", "2000", "--shard-size", "4", "--out", str(out),
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(out.glob("shard-*.tar"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()   # SIGTERM to the command only, as kill sends it
    try:
        err = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("render-hands: interrupted"), err
    time.sleep(2.0)
    shards = sorted(out.glob("*.tar*")) + sorted(out.glob(".*.tar*"))
    time.sleep(2.0)
    assert sorted(out.glob("*.tar*")) + sorted(out.glob(".*.tar*")) == shards, "workers still writing"


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(stat.parent.name), cmdline))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the workers")
def test_a_worker_killed_for_memory_stops_the_run(tmp_path):
    """The pool replaces a worker the system killed, but the shard it was rendering never comes
    back: the run stops with one line instead of waiting for ever."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "render.cli", *BASE, "--n", "2000", "--shard-size", "50", "--out", str(out),
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # A worker in the middle of a shard (seconds long), found by its pid in the shard's temporary
        # name: killed while starting up, a worker would lose no shard.
        deadline, busy = time.time() + 120, []
        while not busy and time.time() < deadline and proc.poll() is None:
            workers = {p for p, cmdline in _children(proc.pid) if "spawn_main" in cmdline}
            busy = [p for p in workers if list(out.glob(f".shard-*.tar.tmp-{p}"))]
            time.sleep(0.05)
        assert busy, _children(proc.pid)
        os.kill(busy[0], signal.SIGKILL)   # what the out-of-memory killer does
        err = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "a render worker process died" in err.strip().splitlines()[-1], err


def test_a_worker_that_cannot_start_stops_the_run(tmp_path):
    """A worker whose start fails (no GL context in its process, say) would be replaced for ever by
    the pool, each failing alike: the run stops with one line giving the reason."""
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys\n"
        "if __name__ == '__main__':\n"
        "    import render.gl\n"
        "    render.gl.choose_backend = lambda preferred=None: 'bogus'   # the main process trusts it\n"
        "    os.environ['PYOPENGL_PLATFORM'] = 'bogus'                     # the workers inherit it\n"
        "    from render.cli import main\n"
        "    sys.exit(main(['--n', '40', '--shard-size', '10', '--workers', '2', '--quiet', '--out', sys.argv[1]]))\n")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"render-hands: error: {tmp_path / 'out'}: a render worker could not start (GLUnavailable: unsupported GL "
        f"backend 'bogus'; choose one of egl, osmesa); finished shards are kept"], result.stderr


def test_a_finished_dataset_rerun_keeps_its_manifest(tmp_path, capsys):
    out = tmp_path / "done"
    assert _run(out) == 0
    before = (out / "manifest.json").read_bytes()
    assert _run(out, workers=2) == 0   # nothing to render: the manifest still names the command that made it
    assert (out / "manifest.json").read_bytes() == before


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, capsys, monkeypatch):
    """A duplicated job would delete the running one's temporaries; it is refused in one line.
    Another slice is not; a filesystem without locks gives a warning, not a failure."""
    import errno
    import fcntl

    out = tmp_path / "busy"
    assert _run(out) == 0
    lock = out / ".render-hands.slice-00000-of-00001.lock"
    with open(lock, "a") as held:   # what a running render-hands holds while it renders
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (out / ".shard-000000.tar.tmp-424242").write_bytes(b"the running job's")
        capsys.readouterr()
        assert _run(out) == 2
        assert capsys.readouterr().err == (f"render-hands: error: {out}: another render-hands is writing here "
                                           f"(it holds {lock}); wait for it to finish or stop it\n")
        assert (out / ".shard-000000.tar.tmp-424242").exists()
        assert _run(out, "--shard-index", "1", "--num-shards", "2") == 0   # another slice goes ahead
    assert _run(out) == 0   # released: the same command runs

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning) as caught:
        assert _run(tmp_path / "nfs") == 0
    assert [str(w.message) for w in caught] == [f"{tmp_path / 'nfs' / '.render-hands.lock'}: cannot lock (No locks "
                                                "available); a second run into this folder would not be refused"]


def test_replacing_a_dataset_is_refused_while_another_slice_renders(tmp_path, capsys):
    """--overwrite (or another dataset before any shard is finished) deletes every slice's files,
    so it waits for no running slice: it is refused, and the running slice's files stay."""
    import fcntl

    out = tmp_path / "sliced"
    assert _run(out, "--shard-index", "0", "--num-shards", "2") == 0
    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}

    before = files()
    lock = out / ".render-hands.slice-00000-of-00002.lock"
    with open(lock, "a") as held:   # slice 0 of 2 is rendering
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        refused = (f"render-hands: error: {out}: another render-hands is rendering a slice here (it holds {lock}), "
                   f"and replacing the dataset would delete its files; wait for it to finish or stop it\n")
        for dry in ([], ["--dry-run"]):
            assert _run(out, "--seed", "4", "--overwrite", "--shard-index", "1", "--num-shards", "2", *dry) == 2
            assert capsys.readouterr().err == refused
        assert files() == before
    assert _run(out, "--seed", "4", "--overwrite", "--shard-index", "1", "--num-shards", "2") == 0


def test_the_library_releases_its_lock_when_a_run_ends(tmp_path):
    from render import generate
    from render.cli import build_job, render_parser

    argv = BASE + ["--out", str(tmp_path / "lib")]
    for _ in range(2):   # a notebook running the same job twice in one process
        manifest, _ = generate.run(build_job(render_parser().parse_args(argv), argv), workers=1, show_progress=False)
        assert manifest["count"] == 40


def test_a_pose_file_named_from_another_folder_resumes_the_same_dataset(tmp_path, monkeypatch):
    """Files count by content: the same pose file by a relative or an absolute path is the same
    dataset, and the manifest keeps the name as given (pairs name theirs relative to the dataset)."""
    from hand_models.model import HandModel
    from hand_models.poses import save_pose_file
    from hand_models.prior import PosePrior

    prior = PosePrior(HandModel.load())
    save_pose_file(tmp_path / "poses.npz", prior.sample(4, np.random.default_rng(0)))
    monkeypatch.chdir(tmp_path)
    assert _run(Path("data"), "--poses", "poses.npz", "--n", "8", "--shard-size", "4") == 0
    (tmp_path / "data" / "shard-000001.tar").unlink()   # an interrupted run
    assert _run(tmp_path / "data", "--poses", str(tmp_path / "poses.npz"), "--n", "8", "--shard-size", "4") == 0
    assert read_manifest(tmp_path / "data")["count"] == 8


def test_dry_run_refuses_an_unwritable_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _run(tmp_path / "file" / "data", "--dry-run") == 2
    assert "cannot write" in capsys.readouterr().err


def test_rerun_repairs_missing_and_corrupt_shards(reference, tmp_path):
    out = tmp_path / "repair"
    assert _run(out) == 0
    (out / "shard-000000.tar").unlink()
    with open(out / "shard-000001.tar", "r+b") as f:
        f.seek(1000)
        f.write(b"garbage")
    (out / ".shard-000002.tar.tmp-99999").write_bytes(b"partial")
    untouched = (out / "shard-000002.tar").stat().st_mtime_ns
    assert _run(out) == 0
    assert _hashes(out) == _hashes(reference)
    assert (out / "shard-000002.tar").stat().st_mtime_ns == untouched  # complete shards are kept
    assert not (out / ".shard-000002.tar.tmp-99999").exists()


def test_different_dataset_refused_unless_overwrite(reference, tmp_path, capsys):
    out = tmp_path / "other"
    assert _run(out) == 0
    capsys.readouterr()
    assert _run(out, "--sensor", "kinect") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different dataset" in err[0] and "sensor" in err[0]
    assert _hashes(out) == _hashes(reference)  # nothing touched
    assert _run(out, "--sensor", "kinect", "--overwrite") == 0
    assert read_manifest(out)["sensor"] == "kinect"


def test_folder_rendered_by_other_code_refused_unless_overwrite(reference, tmp_path, capsys):
    """Same settings, other code: resuming would mix shards of two versions into one dataset."""
    out = tmp_path / "older"
    assert _run(out) == 0
    record = out / ".render-hands" / "dataset.json"
    identity = json.loads(record.read_text())
    assert identity["code_checksum"] == read_manifest(out)["generator"]["code_sha256"]
    record.write_text(json.dumps({**identity, "code_checksum": "0" * 64}))
    (out / "shard-000001.tar").unlink()  # an interrupted run of the older code
    capsys.readouterr()
    assert _run(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "code_checksum" in err[0] and "render/" in err[0]
    assert not (out / "shard-000001.tar").exists()  # nothing rendered
    assert _run(out, "--overwrite") == 0
    assert _hashes(out) == _hashes(reference)


def test_damaged_state_files_are_one_line(tmp_path, capsys):
    """A dataset record that is JSON but not an object, and a manifest without its shard list:
    one line naming the file, no traceback."""
    out = tmp_path / "damaged"
    assert _run(out) == 0
    record = out / ".render-hands" / "dataset.json"
    record.write_text("[1, 2]")
    capsys.readouterr()
    assert _run(out) == 2
    assert capsys.readouterr().err == (f"render-hands: error: {record}: dataset record must be a JSON object; "
                                       f"use --overwrite to start afresh\n")
    with pytest.raises(ValueError, match=r"manifest.json: malformed manifest \(KeyError: 'shards'\)"):
        check_manifest({"format": FORMAT_NAME, "format_version": FORMAT_VERSION}, out / "manifest.json")


def test_slices_merge_into_the_whole_dataset(reference, tmp_path):
    shared, apart = tmp_path / "shared", tmp_path / "apart"
    assert _run(shared, "--shard-index", "0", "--num-shards", "2") == 0
    assert not (shared / "manifest.json").exists()
    assert _run(apart, "--shard-index", "1", "--num-shards", "2") == 0
    assert main(["merge", str(shared)]) == 2  # slice 1 is elsewhere: refused, nothing written
    assert not (shared / "manifest.json").exists()
    assert main(["merge", str(shared), str(apart)]) == 0
    assert _hashes(shared) == _hashes(reference)
    assert len(list(iter_samples(shared, verify=True))) == 40


def test_merge_across_filesystems_copies_under_a_temporary_name(reference, tmp_path, monkeypatch):
    """Where a rename cannot cross filesystems, each shard is copied to a temporary name and renamed,
    and its source removed after: no half shard ever has the real name."""
    import errno

    shared, apart = tmp_path / "shared", tmp_path / "apart"
    assert _run(shared, "--shard-index", "0", "--num-shards", "2") == 0
    assert _run(apart, "--shard-index", "1", "--num-shards", "2") == 0
    real_replace, renamed = os.replace, []

    def replace(src, dst):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        renamed.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["merge", str(shared), str(apart)]) == 0
    assert not list(apart.glob("shard-*.tar"))   # sources removed once copied
    assert any(name.startswith(".shard-") for name in renamed)   # through a temporary name
    assert _hashes(shared) == _hashes(reference)


def test_slices_of_a_pose_file_merge_from_folders_at_any_depth(tmp_path, monkeypatch):
    """Each slice names the pose file from its own folder; merge compares it by content and names
    it from the merged folder, where train-mapping's pairs reader finds it."""
    from hand_models.model import HandModel
    from hand_models.poses import save_pose_file
    from hand_models.prior import PosePrior
    from training.data import open_pairs

    prior = PosePrior(HandModel.load())
    save_pose_file(tmp_path / "poses.npz", prior.sample(4, np.random.default_rng(0)))
    monkeypatch.chdir(tmp_path)
    common = ["--poses", "poses.npz", "--n", "8", "--shard-size", "2", "--num-shards", "2"]
    assert _run(tmp_path / "deep" / "er" / "s0", *common, "--shard-index", "0") == 0
    assert _run(tmp_path / "s1", *common, "--shard-index", "1") == 0
    out = tmp_path / "merged" / "pairs"
    assert main(["merge", str(out), str(tmp_path / "deep" / "er" / "s0"), str(tmp_path / "s1")]) == 0
    assert read_manifest(out)["poses"]["file"] == "../../poses.npz"
    assert len(open_pairs(out, 4).twins) == 4
    (tmp_path / "link").symlink_to(out)   # reached through a symlink: ".." is the real folder's
    assert len(open_pairs(tmp_path / "link", 4).twins) == 4


def test_a_refused_merge_moves_nothing(reference, tmp_path, capsys):
    out, one, two = tmp_path / "out", tmp_path / "one", tmp_path / "two"
    for index, folder in enumerate((out, one, two)):
        assert _run(folder, "--shard-index", str(index), "--num-shards", "3") == 0
    good = (two / "shard-000002.tar").read_bytes()
    (two / "shard-000002.tar").write_bytes(good[:1000])
    assert main(["merge", str(out), str(one), str(two)]) == 2
    assert "shard-000002.tar: missing or its sha256 differs" in capsys.readouterr().err
    assert (one / "shard-000001.tar").is_file() and not (out / "shard-000001.tar").exists()
    assert main(["merge", str(out), str(one), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    (two / "shard-000002.tar").write_bytes(good)
    assert main(["merge", str(out), str(one), str(two)]) == 0
    assert _hashes(out) == _hashes(reference)


def test_slices_of_different_runs_or_malformed_are_refused_in_one_line(tmp_path, capsys):
    """Slice 1 rendered with a mistyped --n: its shards would leave a gap; caught by n, and by
    the shard ranges where a manifest does not record n. A malformed slice manifest is named."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(one, "--shard-index", "0", "--num-shards", "2") == 0
    assert main(BASE[:1] + ["60"] + BASE[2:] + ["--out", str(two), "--workers", "1",
                                                 "--shard-index", "1", "--num-shards", "2"]) == 0
    slice_two = next(two.glob("manifest.slice-*.json"))
    capsys.readouterr()
    assert main(["merge", str(one), str(two)]) == 2
    assert capsys.readouterr().err == (f"render-hands: error: {slice_two}: belongs to a different dataset than "
                                       f"{next(one.glob('manifest.slice-*.json'))} (differs in n)\n")
    m = json.loads(slice_two.read_text())
    for path in (slice_two, next(one.glob("manifest.slice-*.json"))):   # as written before n was recorded
        older = json.loads(path.read_text())
        del older["slice"]["n"]
        path.write_text(json.dumps(older))
    assert main(["merge", str(one), str(two)]) == 2
    assert f"{slice_two}: holds shards 2..3 (2 listed) where shards 1.. are due" in capsys.readouterr().err
    assert not (one / "manifest.json").exists() and not (one / "shard-000002.tar").exists()
    for text, message in [("[1]", "must be a JSON object"), ("{}", "not a depth-hands-shards manifest"),
                          (json.dumps({k: v for k, v in m.items() if k != "slice"}), "malformed slice manifest (KeyError")]:
        slice_two.write_text(text)
        assert main(["merge", str(one), str(two)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"render-hands: error: {slice_two}") and message in err and len(err.splitlines()) == 1, err


def test_a_camera_too_small_is_named_and_a_corrected_command_runs(tmp_path, capsys):
    camera = tmp_path / "tiny.json"
    camera.write_text(json.dumps({"fx": 588.0, "fy": 587.0, "cx": 32.0, "cy": 24.0, "width": 64, "height": 48}))
    out = tmp_path / "data"
    assert _run(out, "--camera", str(camera)) == 2
    assert f"{camera}: sample 0's hand does not fit in the camera's 64x48 frame" in capsys.readouterr().err
    assert _run(out) == 0   # nothing was rendered, so no --overwrite is needed
    assert read_manifest(out)["count"] == 40


def test_a_hand_too_large_for_one_render_pass_is_placed_farther_or_named(tmp_path, capsys):
    """A high-resolution camera: near draws whose window exceeds the renderer's atlas are drawn
    again farther away; where no distance fits, one line says what to change."""
    camera = tmp_path / "sharp.json"
    camera.write_text(json.dumps({"fx": 5000.0, "fy": 5000.0, "cx": 4000.0, "cy": 3000.0, "width": 8000, "height": 6000}))
    assert _run(tmp_path / "sharp", "--camera", str(camera), "--n", "8", "--shard-size", "8") == 0
    assert all(max(s["crop_size"]) <= 2048 for s in iter_samples(tmp_path / "sharp"))
    camera.write_text(json.dumps({"fx": 20000.0, "fy": 20000.0, "cx": 10000.0, "cy": 7500.0, "width": 20000, "height": 15000}))
    capsys.readouterr()
    assert _run(tmp_path / "huge", "--camera", str(camera), "--n", "8", "--shard-size", "8") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "(in a window of at most 2048x2048 px)" in err and "shorter focal length" in err


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    assert _run(out, "--dry-run", "--views", "3") == 0
    plan = capsys.readouterr().out
    assert "3 shards" in plan and "3 view(s)" in plan and "GL backend" in plan
    assert not out.exists()


def _broken_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    bad_json = tmp / "camera.json"
    bad_json.write_text('{"fx": 500, "fy": 500, "cx": 320}')
    bad_poses = tmp / "poses.npz"
    np.savez(bad_poses, hand_pose=np.zeros((3, 15, 3)), betas=np.zeros((3, 8)))
    bad_model = tmp / "MANO_RIGHT.npz"
    np.savez(bad_model, v_template=np.zeros((10, 3)))
    blocker = tmp / "a-file"
    blocker.write_text("")
    return {
        "n": (["--n", "0"], "--n"),
        "camera": (["--camera", str(bad_json)], "camera.json"),
        "poses": (["--poses", str(bad_poses)], "poses.npz"),
        "model": (["--hand-model", str(bad_model)], "MANO_RIGHT.npz"),
        "missing model": (["--hand-model", str(tmp / "nope.pkl")], "nope.pkl"),
        "unwritable": (["--out", str(blocker / "data")], "a-file"),
    }


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return exc.code


@pytest.mark.parametrize("case", ["n", "camera", "poses", "model", "missing model", "unwritable"])
def test_bad_inputs_give_one_line_and_write_nothing(case, tmp_path, capsys):
    args, named = _broken_inputs(tmp_path)[case]
    out = tmp_path / "out"
    rc = _exit_code(["--n", "8", "--out", str(out), "--quiet", "--workers", "1"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--n", "--out", "--seed", "--workers", "--shard-size", "--hand-model", "--poses",
                   "--views", "--sensor", "--camera", "--distance", "--no-forearm", "--shard-index",
                   "--num-shards", "--overwrite", "--dry-run", "--gl", "merge"):
        assert option in text


def test_three_views_round_trip(tmp_path):
    out = tmp_path / "views"
    assert main(["--n", "6", "--out", str(out), "--views", "3", "--quiet", "--workers", "1"]) == 0
    assert read_manifest(out)["views"] == 3
    for s in iter_samples(out, verify=True):
        assert [v["view"] for v in s["views"]] == [1, 2]
        for v in s["views"]:
            assert v["depth"].dtype == np.uint16 and list(v["depth"].shape) == v["crop_size"][::-1]
            assert (v["depth"] > 0).sum() > 100
