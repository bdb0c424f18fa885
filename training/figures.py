"""Writing matplotlib pictures: to a temporary name in the target folder, then renamed, so a
crash never leaves a half-written PNG where a person or a tool expects a whole one."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Save and close `fig` as `path` (PNG)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    # Not tempfile.mkstemp: its files are private (0600), a picture is not.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
