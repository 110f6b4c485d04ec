"""One figure for a set of runs: validation loss against wall time and against bytes communicated (needs
matplotlib: ``pip install 'disto[lowcomm]'``)."""
from __future__ import annotations

from typing import Mapping

from .trainer import History


def plot_runs(runs: Mapping[str, History], path: str, title: str = "") -> None:
    """``runs``: label -> History. Lost workers show as dotted vertical lines on the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, h) in enumerate(runs.items()):
        if not h.evals:
            continue
        color = f"C{i % 10}"
        t = [e["time"] for e in h.evals]
        b = [max(e["bytes"], 1) for e in h.evals]
        loss = [e["loss"] for e in h.evals]
        ax1.plot(t, loss, color=color, marker=".", label=label)
        ax2.plot(b, loss, color=color, marker=".", label=label)
        for ev in h.events:
            ax1.axvline(ev["time"], color=color, ls=":", lw=1)
    ax1.set_xlabel("wall-clock seconds")
    ax2.set_xlabel("bytes communicated, all workers (log)")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("validation loss (nats per byte)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
