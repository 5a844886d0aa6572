"""The confusion-matrix figure written beside ``history.json`` when the ``plots`` extra (matplotlib) is
installed; without it nothing is drawn and nothing fails (the matrix is in ``history.json`` either way)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

#: Above this many classes the cells are not annotated with their counts (they would not fit).
ANNOTATED_CLASSES = 20


def confusion_png(report: dict[str, Any], title: str) -> bytes | None:
    """:func:`confusion_figure` as PNG bytes; None when matplotlib is not installed."""
    try:
        fig = confusion_figure(report, title)
    except ImportError:
        return None
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    return out.getvalue()


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    """A matplotlib Figure of ``report``'s confusion matrix (a :func:`training.metrics.classification_report`):
    each row coloured by the share of its true class (so that a rare class shows as clearly as a common one)
    and annotated with the counts. Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = report["confusion_matrix"]["labels"]
    counts = np.asarray(report["confusion_matrix"]["rows_true_columns_predicted"])  # (C, C)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    size = min(max(3.0 + 0.45 * k, 4.0), 16.0)
    # A Figure of its own (no pyplot): no global state, no display backend, safe off the main thread.
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_xticks(range(k), labels, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    balanced = report.get("balanced_accuracy", float("nan"))
    ax.set_title(f"{title}\naccuracy {report['accuracy']:.3f}, balanced accuracy {balanced:.3f}")
    if k <= ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8 if k > 10 else 10,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return fig
