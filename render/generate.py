"""Running a render job: plan, resume, worker processes, manifests, slices and merging.

State kept in the output folder (besides the shards and manifest, see docs/data_format.md):

    DIR/.render-hands/dataset.json        identity of the dataset being written (RenderConfig +
                                          hand model and pose file checksums)
    DIR/.render-hands/shard-000000.json   record of a finished shard: name, count, sha256
    DIR/.render-hands.lock                held while a run checks DIR and cleans up (FOLDER_LOCK)
    DIR/.render-hands.slice-I-of-K.lock   held while a run renders its slice (SLICE_LOCK; a whole run is 0 of 1)

A shard counts as done when its tar and its record exist and the tar's sha256 matches the record;
anything else is rendered (again). Every file is written under a temporary name and renamed, so a
killed run leaves either a finished shard or nothing under the shard's name, and a rerun of the
same command finishes exactly the missing shards.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hand_models.joints import JOINT_NAMES, NYU14_NAMES
from render.atomic import check_writable, write_json
from render.dataset import GENERATOR, GENERATOR_VERSION, POSE_BLOCK, RenderConfig
from render.jsonfile import read_json_object
from render.shards import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, ShardRecord, ShardWriter, check_manifest,
                           sha256_file, shard_name)

STATE_DIR = ".render-hands"
IDENTITY = "dataset.json"
SLICE_MANIFEST = "manifest.slice-{index:05d}-of-{count:05d}.json"
FOLDER_LOCK = ".render-hands.lock"                            # held while a run checks and prepares DIR
SLICE_LOCK = ".render-hands.slice-{index:05d}-of-{count:05d}.lock"   # held while a run renders its slice
SLICE_LOCKS = ".render-hands.slice-*-of-*.lock"


class JobError(ValueError):
    """A job cannot start or finish as asked; the message is the one line the user sees."""


@dataclass(frozen=True)
class Slice:
    """Shards [start, stop) of the dataset, the part of --shard-index i --num-shards k."""

    index: int
    count: int
    start: int
    stop: int

    @classmethod
    def of(cls, num_shards: int, index: int = 0, count: int = 1) -> "Slice":
        if count < 1 or not 0 <= index < count:
            raise JobError(f"--shard-index must be in 0..{count - 1} for --num-shards {count}, got {index}")
        return cls(index, count, index * num_shards // count, (index + 1) * num_shards // count)

    @property
    def whole(self) -> bool:
        return self.count == 1


@dataclass
class Job:
    config: RenderConfig
    out: Path
    identity: dict
    part: Slice
    command: str
    lock: IO | None = None   # the slice's lock, held from prepare until run ends

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR

    def record_path(self, shard: int) -> Path:
        return self.state / f"shard-{shard:06d}.json"

    def done(self, shard: int) -> ShardRecord | None:
        """The shard's record if its tar is complete and intact, else None."""
        rec_path, tar = self.record_path(shard), self.out / shard_name(shard)
        if not (rec_path.is_file() and tar.is_file()):
            return None
        try:
            rec = ShardRecord(**json.loads(rec_path.read_text()))
        except (ValueError, TypeError):
            return None
        lo, hi = self.config.shard_range(shard)
        if rec.name != tar.name or rec.count != hi - lo or sha256_file(tar) != rec.sha256:
            return None
        return rec

    def pending(self) -> list[int]:
        return [s for s in range(self.part.start, self.part.stop) if self.done(s) is None]


def existing_identity(out: Path) -> dict | None:
    path = out / STATE_DIR / IDENTITY
    if not path.is_file():
        return None
    try:
        return read_json_object(path, "dataset record")
    except ValueError as err:
        raise JobError(f"{err}; use --overwrite to start afresh") from None


def _owned(out: Path) -> list[Path]:
    """Files in DIR that a render-hands dataset consists of (what --overwrite removes)."""
    files = [p for p in out.glob("shard-*.tar")] + [p for p in out.glob(".shard-*.tar.tmp-*")]
    files += [p for p in [out / MANIFEST, *out.glob("manifest.slice-*-of-*.json")] if p.is_file()]
    return files


def prepare(config: RenderConfig, out: Path, identity: dict, part: Slice, command: str,
            overwrite: bool, dry_run: bool = False) -> Job:
    """Check DIR against the dataset to write; refuse a different one unless `overwrite` or it
    finished no shard yet. The job holds its slice's lock until `run` ends."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise JobError(f"{out}: exists and is not a directory")
    check_writable(out, folder=True)
    job = Job(config, out, identity, part, command)
    if dry_run:
        if _check_folder(out, identity, overwrite) not in (None, identity):
            _refuse_while_rendering(out, own=part)
        return job
    out.mkdir(parents=True, exist_ok=True)
    # Slices started together into a fresh folder pass the checks and the clean-up one at a time,
    # so that none deletes what another has begun.
    folder_lock = _flock(out / FOLDER_LOCK, wait=True)
    try:
        previous = _check_folder(out, identity, overwrite)
        if folder_lock is not None:   # else the filesystem has no locks, and the warning was given
            job.lock = _flock(out / SLICE_LOCK.format(index=part.index, count=part.count), wait=False)
        if previous != identity:   # --overwrite, or nothing of another dataset written yet (refused above)
            if folder_lock is not None:
                _refuse_while_rendering(out, own=part)
            for path in _owned(out):
                path.unlink()
            shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        job.state.mkdir(exist_ok=True)
        write_json(job.state / IDENTITY, identity)
        for shard in range(part.start, part.stop):  # leftovers of killed runs of this slice
            for tmp in out.glob(f".{shard_name(shard)}.tmp-*"):
                tmp.unlink()
    except BaseException:
        if job.lock is not None:
            job.lock.close()
        raise
    finally:
        if folder_lock is not None:
            folder_lock.close()
    return job


def _check_folder(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The identity of the dataset DIR holds, after refusing a different one (see prepare)."""
    previous = existing_identity(out) if out.is_dir() else None
    if not overwrite and out.is_dir():
        # A dataset begun but with no shard finished (its first run failed at once: a camera too
        # small for the hand, say) holds nothing to lose, so a corrected command may replace it.
        begun = bool(_owned(out) or list((out / STATE_DIR).glob("shard-*.json")))
        if previous is not None and previous != identity and begun:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            why = ", ".join("code_checksum (render/ or hand_models/ changed since)" if k == "code_checksum" else k
                            for k in changed)
            raise JobError(f"{out}: holds a different dataset (differs in {why}); "
                           "use --overwrite to replace it or choose another --out")
        if previous is None and _owned(out):
            raise JobError(f"{out}: holds shards of an unknown dataset; use --overwrite to replace them")
    return previous


def _refuse_while_rendering(out: Path, own: Slice) -> None:
    """Replacing the dataset deletes every slice's files: refuse while another slice renders
    (the caller holds the folder lock, so none can start meanwhile)."""
    mine = out / SLICE_LOCK.format(index=own.index, count=own.count)
    for path in sorted(out.glob(SLICE_LOCKS)):
        if path == mine:
            continue
        try:
            held = _flock(path, wait=False)
        except JobError:
            raise JobError(f"{out}: another render-hands is rendering a slice here (it holds {path}), and replacing "
                           f"the dataset would delete its files; wait for it to finish or stop it") from None
        if held is not None:
            held.close()


def _flock(path: Path, wait: bool) -> IO | None:
    """An exclusive lock on `path` (created), held while the returned file is open. Not waiting, a
    lock another process holds is refused: a second run of the same command (a duplicated array job)
    would delete the first one's temporaries. Where the filesystem has no locks (NFS mounted nolock,
    say), a warning, and None."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise JobError(f"{path.parent}: another render-hands is writing here (it holds {path}); "
                       "wait for it to finish or stop it") from None
    except OSError as err:
        handle.close()
        warnings.warn(f"{path}: cannot lock ({err.strerror or err}); a second run into this folder would not be refused")
        return None
    return handle


# --- workers ---------------------------------------------------------------------------------
_worker = None
_progress = None


def _init_worker(config: RenderConfig, progress, threads: int | None = None) -> None:
    global _worker, _progress
    if threads is not None:
        # one busy thread per worker process: torch's and llvmpipe's own thread pools would only
        # fight the other workers for the same cores
        import torch
        torch.set_num_threads(threads)
    from render.dataset import Synthesizer
    _worker, _progress = Synthesizer(config), progress


WORKER_STARTED = -1   # what a pool worker puts on the progress queue once it is ready


def _init_pool_worker(config: RenderConfig, progress) -> None:
    try:
        _init_worker(config, progress, threads=1)
    except Exception as err:
        # The pool would start another worker, failing the same way, for ever: tell the main
        # process why (it stops the run), and leave without a traceback per attempt.
        progress.put(f"{type(err).__name__}: {err}")
        raise SystemExit(1) from None
    progress.put(WORKER_STARTED)


def _render_shard(out: str, shard: int) -> dict:
    lo, hi = _worker.config.shard_range(shard)
    with ShardWriter(Path(out), shard) as writer:
        done = 0
        for key, files in _worker.samples(lo, hi):
            writer.add(key, files)
            done += 1
            if done % 64 == 0:
                _progress.put(64)
        _progress.put(done % 64)
        return writer.close().to_dict()


def run(job: Job, workers: int, show_progress: bool = True) -> tuple[dict, bool]:
    """Render the pending shards of the job's slice and write its manifest; returns it and whether
    it was written (not when a finished job is run again). Releases the slice's lock prepare took."""
    try:
        pending = job.pending()
        finished = job.out / (MANIFEST if job.part.whole else
                              SLICE_MANIFEST.format(index=job.part.index, count=job.part.count))
        if not pending and finished.is_file():   # a rerun of a finished job: its manifest keeps the command that made it
            return check_manifest(read_json_object(finished, "manifest"), finished), False
        _render(job, pending, workers, show_progress)
        return write_manifest(job), True
    finally:
        if job.lock is not None:
            job.lock.close()
            job.lock = None


def _render(job: Job, pending: list[int], workers: int, show_progress: bool) -> None:
    from tqdm import tqdm

    cfg = job.config
    total = sum(cfg.shard_range(s)[1] - cfg.shard_range(s)[0] for s in pending)
    bar = tqdm(total=total, unit="frame", disable=not show_progress, smoothing=0.05,
               desc=f"render-hands {job.out.name}")
    workers = min(workers, len(pending))
    if workers == 1:
        progress: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        _init_worker(cfg, progress)
        try:
            for shard in pending:
                write_json(job.record_path(shard), _render_shard(str(job.out), shard))
                while not progress.empty():
                    bar.update(progress.get())
        finally:
            _worker.close()
    elif workers > 1:
        ctx = mp.get_context("spawn")  # fresh processes: GL contexts and torch threads do not fork well
        progress = ctx.Queue()
        os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe raster threads, read at context creation
        # The workers start with SIGINT ignored (an ignored signal survives exec, and Python then
        # installs no KeyboardInterrupt handler): Ctrl-C, which the terminal sends to every
        # process, reaches only this one, which stops them, instead of breaking them mid-import.
        # (A Ctrl-C in the milliseconds the pool takes to start is ignored.)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(cfg, progress))
        finally:
            signal.signal(signal.SIGINT, previous)
        started = 0
        with pool:
            results = {s: pool.apply_async(_render_shard, (str(job.out), s)) for s in pending}
            while results:
                try:
                    item = progress.get(timeout=0.5)
                except queue.Empty:
                    item = 0
                if isinstance(item, str):
                    raise RuntimeError(f"{job.out}: a render worker could not start ({item}); finished shards are kept")
                if item == WORKER_STARTED:
                    started += 1
                    # The pool replaces a worker that died (the system killed it, for memory say),
                    # but the shard it was rendering never returns: stop rather than wait for ever.
                    # (One that died starting up held no shard, and only its replacement announces.)
                    if started > workers:
                        raise RuntimeError(f"{job.out}: a render worker process died (killed by the system? out "
                                           f"of memory?); finished shards are kept: run the same command again "
                                           f"to resume")
                else:
                    bar.update(item)
                for shard in [s for s, r in results.items() if r.ready()]:
                    write_json(job.record_path(shard), results.pop(shard).get())
            while True:
                try:
                    item = progress.get_nowait()
                    bar.update(item if isinstance(item, int) and item > 0 else 0)
                except queue.Empty:
                    break
    bar.close()


def manifest_for(job: Job, records: list[dict]) -> dict:
    cfg = job.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "count": sum(r["count"] for r in records),
        "shards": records,
        "joint_names": list(JOINT_NAMES),
        "nyu14_names": list(NYU14_NAMES),
        "coordinates": "OpenCV camera: x right, y down, z forward; xyz in mm, uv in full-frame pixels",
        "intrinsics": cfg.camera.to_dict(),
        "camera_source": cfg.camera_source,
        "seed": cfg.seed,
        "rng": {"pose_block": POSE_BLOCK,
                "poses": "default_rng([seed, index // pose_block, 0])",
                "placement": "default_rng([seed, index, 1])",
                "sensor": "default_rng([seed, index, 2])"},
        "hand_model": {"id": job.identity["hand_model_id"], "checksum": job.identity["hand_model_checksum"]},
        # Relative to the dataset folder, as readers look for it: pairs stay paired when moved with their pose file.
        "poses": cfg.poses if cfg.poses == "prior" else {"file": os.path.relpath(Path(cfg.poses).resolve(), job.out.resolve()),
                                                         "sha256": job.identity["poses_checksum"]},
        "sensor": cfg.sensor,
        "views": cfg.views,
        "forearm": cfg.forearm,
        "distance_mm": list(cfg.distance_mm),
        "shard_size": cfg.shard_size,
        "generator": {"name": GENERATOR, "version": GENERATOR_VERSION, "code_sha256": job.identity["code_checksum"]},
        "command": job.command,
    }


def write_manifest(job: Job) -> dict:
    """manifest.json for a whole run; a slice manifest for one slice of a distributed run."""
    records = []
    for shard in range(job.part.start, job.part.stop):
        rec = job.done(shard)
        if rec is None:
            raise JobError(f"{job.out / shard_name(shard)}: missing or corrupt after rendering")
        records.append(rec.to_dict())
    manifest = manifest_for(job, records)
    if job.part.whole:
        write_json(job.out / MANIFEST, manifest)
    else:
        manifest["slice"] = {"index": job.part.index, "count": job.part.count,
                             "shards": [job.part.start, job.part.stop], "n": job.config.n}
        write_json(job.out / SLICE_MANIFEST.format(index=job.part.index, count=job.part.count),
                          manifest)
    return manifest


def merge(out: Path, sources: list[Path]) -> dict:
    """Combine the slice manifests of one dataset into DIR/manifest.json.

    Slices may have been written into `out` itself or into separate folders (`sources`); shards
    from other folders are moved into `out`. Every shard of the dataset must be present once,
    with the checksum its slice recorded.
    """
    out = Path(out)
    slices = []
    for folder in [Path(s) for s in sources]:
        if not folder.is_dir():
            raise JobError(f"{folder}: no such folder")
    for folder in [out] + [Path(s) for s in sources]:
        for path in sorted(folder.glob("manifest.slice-*-of-*.json")):
            slices.append((folder, path, read_slice_manifest(path)))
    if not slices:
        raise JobError(f"{out}: no slice manifests (manifest.slice-*.json) to merge")
    first = slices[0][2]
    keys = ("format", "format_version", "intrinsics", "seed", "hand_model", "poses", "sensor",
            "views", "forearm", "distance_mm", "shard_size", "generator")
    count = first["slice"]["count"]
    seen: dict[int, tuple[Path, Path, dict]] = {}
    for folder, path, m in slices:
        diff = [k for k in keys if _dataset_field(m, k) != _dataset_field(first, k)]
        diff += [name for k, name in (("count", "num_shards"), ("n", "n")) if m["slice"].get(k) != first["slice"].get(k)]
        if diff:
            raise JobError(f"{path}: belongs to a different dataset than {slices[0][1]} "
                           f"(differs in {', '.join(diff)})")
        if m["slice"]["index"] in seen:
            continue
        seen[m["slice"]["index"]] = (folder, path, m)
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise JobError(f"{out}: slices {', '.join(map(str, missing))} of {count} have no manifest yet")
    stop = 0   # the slices must tile the dataset's shards: 0.., each starting where the last stopped
    for index in range(count):
        _, path, m = seen[index]
        start, end = m["slice"]["shards"]
        names = [r["name"] for r in m["shards"]]
        if start != stop or names != [shard_name(k) for k in range(start, end)]:
            raise JobError(f"{path}: holds shards {start}..{end - 1} ({len(names)} listed) where shards "
                           f"{stop}.. are due: slices of different runs (another --n or --shard-size?)")
        stop = end
    # Every shard is checked before any is moved, so a refused merge changes nothing; a shard an
    # interrupted merge already moved is found in `out`, so running the merge again finishes it.
    records, moves = [], []
    for index in range(count):
        folder, _, m = seen[index]
        for rec in m["shards"]:
            src = folder / rec["name"]
            if not src.is_file() and folder.resolve() != out.resolve():
                src = out / rec["name"]
            if not src.is_file() or sha256_file(src) != rec["sha256"]:
                raise JobError(f"{folder / rec['name']}: missing or its sha256 differs from the slice manifest")
            if src.parent.resolve() != out.resolve():
                moves.append((src, out / rec["name"]))
            records.append(rec)
    if moves:
        out.mkdir(parents=True, exist_ok=True)
    for src, dst in moves:
        try:
            os.replace(src, dst)   # one filesystem: a rename
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            _copy_across(src, dst)
    folder0, _, base = seen[0]
    manifest = {k: v for k, v in base.items() if k != "slice"}   # slice 0's command and settings
    if isinstance(manifest.get("poses"), dict) and isinstance(manifest["poses"].get("file"), str):   # named from the merged folder now
        pose_file = (folder0.resolve() / manifest["poses"]["file"]).resolve()
        manifest["poses"] = {**manifest["poses"], "file": os.path.relpath(pose_file, out.resolve())}
    manifest["shards"] = records
    manifest["count"] = sum(r["count"] for r in records)
    manifest["merged_from"] = [str(p) for _, p, _ in slices]
    write_json(out / MANIFEST, manifest)
    return manifest


def _copy_across(src: Path, dst: Path) -> None:
    """Move a shard to another filesystem: copied under ShardWriter's temporary name (which
    --overwrite and resuming clean up), synced to disk, renamed; only then is the source removed,
    so a crash leaves the source, and perhaps the finished copy, for a rerun to use."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    src.unlink()


def _dataset_field(manifest: dict, key: str):
    """A manifest field as two slices of one dataset must agree on it: the pose file by content,
    since each slice names it from its own folder."""
    value = manifest.get(key)
    return value.get("sha256") if key == "poses" and isinstance(value, dict) else value


def read_slice_manifest(path: Path) -> dict:
    """A slice manifest, its shard records checked as a dataset's are and its slice fields too."""
    try:
        m = check_manifest(read_json_object(path, "slice manifest"), path)
        part = m["slice"]
        start, stop = part["shards"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (part["index"], part["count"], start, stop)) \
                or not (0 <= part["index"] < part["count"] and 0 <= start <= stop):
            raise ValueError(f"slice {part!r} is not index < count and a shard range")
    except (KeyError, TypeError, ValueError) as err:
        msg = str(err)
        raise JobError(msg if msg.startswith(str(path)) else f"{path}: malformed slice manifest ({type(err).__name__}: {msg})") from None
    return m


def estimate_bytes(config: RenderConfig) -> float:
    """Expected output size for the dry run (bytes per frame measured with this renderer)."""
    return config.n * config.views * 10e3   # 9.9 KB (clean) and 9.8 KB (kinect) a front view, NYU camera
