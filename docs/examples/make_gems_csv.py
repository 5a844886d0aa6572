"""Write the synthetic table the README's categorical example trains on: text, yes/no, dates, missing cells.

python docs/examples/make_gems_csv.py gems.csv

600 rows of gems: ``carat`` and ``depth`` (numbers with missing cells: empty, ``NA``), ``table`` (numbers),
``cut`` (text with ``NA`` cells), ``colour`` (text), ``boxed`` (yes/no), ``sold`` (ISO dates, which training
leaves out) and the target ``band`` (``high`` or ``low`` price). The tests train on the same table.
"""

import sys
from pathlib import Path

import numpy as np


def write_table(path: Path, n: int = 600) -> Path:
    """Write the table to ``path`` (seeded: the same file every time)."""
    rng = np.random.default_rng(5)
    cut = rng.choice(["Fair", "Good", "Ideal", "Premium"], n)
    colour = rng.choice(["D", "E", "F"], n)
    carat = rng.gamma(2.0, 0.4, n)
    depth = rng.normal(61.8, 1.4, n)
    table = rng.normal(57.0, 2.0, n)
    boxed = rng.choice(["yes", "no"], n)
    price = 3000 * carat + 400 * (cut == "Ideal") + 300 * (boxed == "yes") + rng.normal(0, 300, n)
    band = np.where(price > np.median(price), "high", "low")
    lines = ["carat,depth,table,cut,colour,boxed,sold,band"]
    for i in range(n):
        c = "" if i % 17 == 5 else f"{carat[i]:.2f}"
        d = "NA" if i % 23 == 7 else f"{depth[i]:.1f}"
        k = "NA" if i % 31 == 4 else cut[i]
        sold = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        lines.append(f"{c},{d},{table[i]:.1f},{k},{colour[i]},{boxed[i]},{sold},{band[i]}")
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    write_table(Path(sys.argv[1] if len(sys.argv) > 1 else "gems.csv"))
