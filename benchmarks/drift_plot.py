"""Plot the drift score over a stream of requests: held-out digits, then shifted digits (brighter, inverted).

    python -m benchmarks.drift_plot [--model models/digits/1/model.onnx] [--out docs/drift.png]

Without ``--model`` the training statistics come from a random 60% of the bundled digits and the stream
replays the other 40%. With ``--model`` they come from the model's own metadata (``bnserve.input_stats``,
read with onnxruntime), and the stream replays all the bundled digits, its training rows included, since
the split it was trained on is not known here. Either way the stream is: every in-distribution row once,
then the same rows shifted (twice over, in a new order, to show where the score settles), in requests
of ``--batch`` rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT
from contract import InputStats, ModelContract
from service.drift import DriftConfig, DriftMonitor, stats_from_sample

DIGITS = ROOT / "training" / "data" / "digits.csv.gz"
SHIFTS = {
    "brighter (x * 1.5, clipped to 16)": lambda x: np.minimum(x * 1.5, 16.0),
    "inverted (16 - x)": lambda x: 16.0 - x,
}


def load_setup(model: Path | None, seed: int) -> tuple[InputStats, list[str], np.ndarray, str]:
    """Training statistics, feature names, in-distribution rows to replay, and where the statistics came from."""
    x = np.loadtxt(DIGITS, delimiter=",")[:, :64].astype(np.float32)  # (1797, 64)
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))]
    if model is None:
        n_train = int(0.6 * len(x))
        names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
        return stats_from_sample(x[:n_train]), names, x[n_train:], "a 60% split of the digits"
    import onnxruntime as ort

    meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_modelmeta()
    contract = ModelContract.from_metadata(meta.custom_metadata_map)
    if contract.n_features != x.shape[1]:
        raise SystemExit(f"{model} expects {contract.n_features} features, the digits have {x.shape[1]}")
    return contract.input_stats, contract.feature_names, x, f"the metadata of {model}"


def simulate(
    stats: InputStats,
    names: list[str],
    rows: np.ndarray,
    shifted: np.ndarray,
    batch: int,
    config: DriftConfig,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Score and effective rows after each request of ``rows`` then ``shifted``; and the final report."""
    monitor = DriftMonitor(stats, names, config)
    scores, effective = [], []
    for stream in (rows, shifted):
        for i in range(0, len(stream), batch):
            monitor.update(stream[i : i + batch])
            rep = monitor.report()
            scores.append(rep["score"])
            effective.append(rep["rows_effective"])
    return np.array(scores), np.array(effective), rep


def main() -> None:
    """Simulate both shifts, print a summary, write the figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a bnserve model.onnx to take the statistics from")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "drift.png")
    parser.add_argument("--batch", type=int, default=8, help="rows per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = DriftConfig()
    stats, names, rows, source = load_setup(args.model, args.seed)
    switch = -(-len(rows) // args.batch)  # requests before the shift
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    order = np.random.default_rng(args.seed + 1).permutation(2 * len(rows))
    runs = {}
    for label, shift in SHIFTS.items():
        shifted = shift(np.concatenate([rows, rows]))[order]
        scores, effective, rep = simulate(stats, names, rows, shifted, args.batch, config)
        runs[label] = scores
        top = ", ".join(f"{f['name']} ({f['psi']:.2f})" for f in rep["top_features"])
        crossing = int(np.argmax(scores[switch:] > config.threshold)) + switch + 1  # 1-based request
        print(
            f"{label}: held-out max score after warm-up "
            f"{scores[:switch][effective[:switch] >= config.min_rows].max():.3f}, "
            f"crosses {config.threshold} at request {crossing} ({crossing - switch} requests after the shift), "
            f"final {scores[-1]:.2f}; top: {top}"
        )
    requests = np.arange(1, len(scores) + 1)
    warm = int(np.argmax(effective >= config.min_rows)) + 1
    # both streams are the same rows up to the shift
    ax.plot(requests[:switch], scores[:switch], color="tab:blue", lw=1.5, label="held-out rows")
    for (label, scores), color in zip(runs.items(), ("tab:orange", "tab:red"), strict=True):
        ax.plot(requests[switch - 1 :], scores[switch - 1 :], color=color, lw=1.5, label=f"then {label}")
    ax.axvspan(0.5, warm, color="0.9", label=f"warm-up: < {config.min_rows:.0f} effective rows")
    ax.axvline(switch + 0.5, color="0.3", ls=":", lw=1)
    ax.text(switch + 3, 0.012, "shift starts", color="0.3", fontsize=9)
    ax.axhline(config.threshold, color="black", ls="--", lw=1, label=f"threshold {config.threshold}")
    ax.axhline(0.1, color="0.5", ls="--", lw=0.8, label="0.1: 'stable' below")
    ax.set_yscale("log")
    ax.set_ylim(0.01, 20)
    ax.set_xlim(0.5, len(scores) + 0.5)
    ax.set_xlabel(f"request ({args.batch} rows each)")
    ax.set_ylabel("drift score = max over pixels of PSI")
    ax.set_title(
        f"Digits: {len(rows)} in-distribution rows, then the same rows shifted (twice over)\n"
        f"training statistics from {source}; horizon {config.window_rows:.0f} rows",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8, framealpha=0.95)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
