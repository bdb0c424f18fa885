"""Writing matplotlib pictures whole (render.atomic), so a crash never leaves a half-written PNG
where a person or a tool expects a whole one."""

from __future__ import annotations

from pathlib import Path

from render.atomic import write_atomically


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Save and close `fig` as `path` (PNG)."""
    import matplotlib.pyplot as plt

    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
