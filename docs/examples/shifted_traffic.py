"""Send the bundled digits to a running bnserve, optionally shifted; print the accuracy the clients got and
the service's drift report (input score and each hidden layer's).

    python docs/examples/shifted_traffic.py --shift dim [--url http://127.0.0.1:8000] [--api-key KEY]

``--shift``: ``none``; ``dim`` (half the contrast on a grey background, ``0.5 x + 4``: a covariate shift that
re-estimating statistics can undo); ``invert`` (``16 - x``: one it cannot). Rows go out in V2 JSON requests
of ``--batch`` rows, in a fixed shuffled order; the standard library's urllib is the only client.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, without installing

from training.data import load_digits

SHIFTS = {"none": lambda X: X, "dim": lambda X: 0.5 * X + 4.0, "invert": lambda X: 16.0 - X}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="digits")
    p.add_argument("--shift", choices=sorted(SHIFTS), default="none")
    p.add_argument("--rows", type=int, default=1797, help="how many rows to send (at most 1797)")
    p.add_argument("--batch", type=int, default=16, help="rows per request")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    args = p.parse_args()
    ds = load_digits()
    order = np.random.default_rng(0).permutation(len(ds.X))[: args.rows]
    X, y = SHIFTS[args.shift](ds.X[order]), ds.y[order]
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    labels = []
    for start in range(0, len(X), args.batch):
        rows = X[start : start + args.batch]
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
        req = urllib.request.Request(
            f"{args.url}/v2/models/{args.model}/infer", json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = {o["name"]: o for o in json.load(resp)["outputs"]}
        labels += out["label"]["data"]
    n_requests = -(-len(X) // args.batch)
    accuracy = np.mean(np.array(labels) == y)
    print(f"sent {len(X)} rows ({args.shift}) in {n_requests} requests; accuracy {accuracy:.3f}")
    req = urllib.request.Request(f"{args.url}/v2/models/{args.model}/drift", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        rep = json.load(resp)

    def verdict(part: dict) -> str:
        return f"{part['score']:.3f}" + (" DRIFTING" if part["drifting"] else "")

    layers = "".join(f", {layer['name']} {verdict(layer)}" for layer in rep["layers"])
    print(f"drift of version {rep['version']} (threshold {rep['threshold']}): inputs {verdict(rep)}{layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
