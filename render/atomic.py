"""Outputs appear whole or not at all.

The files render, training and the benchmarks write go to a temporary name in their folder and
are renamed over the target, so a crash, a kill or a full disk never leaves half a file under the
real name (a resumed job trusts what it finds), and a failed write leaves no temporary behind.
(Shards stream through render.shards.ShardWriter the same way. This module imports nothing of
the project, so hand_models' pose files use it too.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


class WriteError(OSError):
    """An output that cannot be written; the message names it (not its temporary) and says why."""


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)`, then rename tmp to `path`."""
    path = Path(path)
    # Not tempfile.mkstemp: its files are private (0600), outputs are not. The suffix stays last,
    # so writers that act on the extension (numpy compresses .gz, matplotlib picks the format)
    # see the real one.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: object, indent: int | None = 1) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent) + "\n"))


def check_writable(path: str | Path, folder: bool = False) -> None:
    """Refuse an output before hours of work rather than after it, creating nothing: `path` (a
    file whose folder exists, or with `folder` a folder made as needed) must be writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise WriteError(f"{path}: cannot write ({'not a folder' if folder else 'a folder'})")
    parent = path if folder else path.parent
    while folder and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise WriteError(f"{path}: cannot write (no such folder {parent})")
    if not parent.is_dir():
        raise WriteError(f"{path}: cannot write ({parent} is not a folder)")
    # A real write, not os.access: that says yes to root where a write still fails (/proc, say).
    probe = parent / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({err.strerror or err})") from None
