"""Query bnserve with NVIDIA's tritonclient (pip install 'tritonclient[http]'), binary tensors and JSON.

python docs/examples/triton_client.py [--url 127.0.0.1:8000]
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

p = argparse.ArgumentParser()
p.add_argument("--url", default="127.0.0.1:8000")
url = p.parse_args().url

digits = Path(__file__).resolve().parents[2] / "training" / "data" / "digits.csv.gz"
rows = np.loadtxt(gzip.open(digits, "rt"), delimiter=",")[:3]
x, y = rows[:, :-1].astype(np.float32), rows[:, -1].astype(int)  # (3, 64) raw pixels 0..16

client = httpclient.InferenceServerClient(url=url)
print("server ready:", client.is_server_ready(), "| model ready:", client.is_model_ready("digits"))
for binary in (True, False):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer("digits", [inp], outputs=outs)
    probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    mode = "binary" if binary else "JSON  "
    print(
        f"{mode}: labels {labels.tolist()} (true {y.tolist()}), top probability {probs.max(1).round(4).tolist()}"
    )
