"""Plot files: the format follows the file's suffix (.png, .svg or .pdf), and any other suffix is refused
before the work that draws the plot starts (`check_plot_path`), not after it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["PLOT_FORMATS", "check_plot_path", "plot_format", "save_figure"]

# suffix -> matplotlib format; what every plot option of the CLI writes
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# no timestamp or library version in the files: the same figure gives the same bytes
_METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
}


def plot_format(path: str | os.PathLike[str]) -> str:
    """The matplotlib format a plot file's suffix names (case-insensitive); ValueError for any other."""
    suffix = Path(path).suffix
    fmt = PLOT_FORMATS.get(suffix.lower())
    if fmt is None:
        what = f"unsupported plot file type '{suffix}'" if suffix else "no file type suffix"
        raise ValueError(f"{what} (supported: {', '.join(PLOT_FORMATS)}; the suffix chooses the format)")
    return fmt


def check_plot_path(option: str, path: str | os.PathLike[str]) -> str | None:
    """None when `path` can take a plot, else what is wrong, naming the option and the path (for the CLI
    to refuse before the work starts)."""
    try:
        plot_format(path)
    except ValueError as e:
        return f"{option} {path}: {e}"
    return None


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """Save a matplotlib figure in the format its suffix names, creating the parent directory."""
    fmt = plot_format(path)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=fmt, metadata=_METADATA[fmt], **savefig)
    return out
