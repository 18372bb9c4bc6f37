"""Accuracy against inference compute: the figure of test-time supervision.

Each curve is a list of points with `tokens_per_question` (x, generated tokens: actor plus
critic) and `accuracy` (y). Rendered headless (matplotlib's Agg backend), so it works on
servers and in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers

import matplotlib.pyplot as plt  # noqa: E402

_MARKERS = "osD^vP"
_DASHES = ("-", "--", "-.", ":")


def plot_accuracy_vs_compute(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """Write a PNG with one line per curve (points sorted by compute); log-2 x axis, since
    compute grows geometrically with K. Points carry an optional `label` ("K=4", "R=2")."""
    if not any(curves.values()):
        raise ValueError("no points to plot: every curve is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for n, (name, points) in enumerate(curves.items()):
            pts = sorted(points, key=lambda p: p["tokens_per_question"])
            if not pts:
                continue
            xs = [max(p["tokens_per_question"], 1.0) for p in pts]  # log axis: no 0
            # Marker and dash vary too, so curves that coincide stay distinguishable.
            ax.plot(
                xs,
                [p["accuracy"] for p in pts],
                marker=_MARKERS[n % len(_MARKERS)],
                linestyle=_DASHES[n % len(_DASHES)],
                label=name,
                alpha=0.85,
            )
            for x, p in zip(xs, pts, strict=True):
                if p.get("label"):
                    ax.annotate(
                        p["label"],
                        (x, p["accuracy"]),
                        textcoords="offset points",
                        xytext=(3, 4),
                        fontsize=7,
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generated tokens per question (actor + critic)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
