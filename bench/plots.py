"""Small shared plotting helpers for the benchmarks (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path


def save(fig, path: Path, dpi: int = 110) -> str:
    """Lay out, write ``fig`` as a PNG at ``path``, free it; return the path as a string."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)
