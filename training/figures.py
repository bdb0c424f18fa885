"""Writing matplotlib pictures whole (render.atomic), so a crash never leaves a half-written PNG
where a person or a tool expects a whole one."""

from __future__ import annotations

from pathlib import Path

from render.atomic import WriteError, write_atomically

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def figure_format(path: str | Path) -> str:
    """The picture format a file name asks for (PNG without a suffix); refuses one matplotlib
    would not write, so the bytes under a name are what its suffix says."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in FORMATS:
        raise WriteError(f"{path}: cannot write a .{suffix} picture (use .{', .'.join(FORMATS)})")
    return suffix or "png"


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Save and close `fig` as `path`, in the format its suffix names."""
    import matplotlib.pyplot as plt

    try:
        fmt = figure_format(path)
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)
