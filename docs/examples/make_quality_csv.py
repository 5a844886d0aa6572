"""Write the synthetic CSV the README trains on: 600 rows, 4 numeric features, a text label in 3 classes.

python docs/examples/make_quality_csv.py quality.csv
"""

import sys

import numpy as np

rng = np.random.default_rng(0)
X = rng.normal(size=(600, 4))
grade = np.where(X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.6, "good", np.where(X[:, 2] > 0, "fair", "poor"))
with open(sys.argv[1] if len(sys.argv) > 1 else "quality.csv", "w") as f:
    f.write("acidity,sugar,alcohol,density,grade\n")
    for row, label in zip(X, grade):
        f.write(",".join(f"{v:.4f}" for v in row) + f",{label}\n")
