"""Outputs appear whole or not at all.

Every file the project writes goes to a temporary name in its folder and is renamed over the
target, so a crash, a kill or a full disk never leaves half a file under the real name (a resumed
job trusts what it finds), and a failed write leaves no temporary behind.
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
