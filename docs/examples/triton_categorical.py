"""Query a model with categorical features (the README's ``gems``) with tritonclient: HTTP and gRPC.

python docs/examples/triton_categorical.py [--url 127.0.0.1:8000] [--grpc-url 127.0.0.1:8001]

Two inputs by name: ``input`` (FP32, the numeric features; NaN is a missing cell of an imputed feature) and
``categorical`` (BYTES, the categorical and boolean features as strings; ``""`` is a missing cell, booleans are
``"true"``/``"false"``), each in the order ``GET /v2/models/gems`` lists in ``parameters.features``.
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

p = argparse.ArgumentParser()
p.add_argument("--url", default="127.0.0.1:8000")
p.add_argument("--grpc-url", default="127.0.0.1:8001")
args = p.parse_args()

x = np.array([[0.9, 61.5, 57.0], [np.nan, 62.1, 56.0]], dtype=np.float32)  # carat, depth, table
s = np.array([["Ideal", "E", "true"], ["", "F", "false"]], dtype=object)  # cut, colour, boxed

for binary in (True, False):
    client = httpclient.InferenceServerClient(url=args.url)
    rows = slice(None) if binary else slice(0, 1)  # JSON has no NaN: send null (curl) or binary data
    numbers = httpclient.InferInput("input", list(x[rows].shape), "FP32")
    numbers.set_data_from_numpy(x[rows], binary_data=binary)
    strings = httpclient.InferInput("categorical", list(s[rows].shape), "BYTES")
    strings.set_data_from_numpy(s[rows], binary_data=binary)
    result = client.infer("gems", [numbers, strings])
    mode = "HTTP binary" if binary else "HTTP JSON  "
    print(
        f"{mode}: labels {result.as_numpy('label').tolist()}, probabilities {result.as_numpy('probabilities').astype(float).round(4).tolist()}"
    )

client = grpcclient.InferenceServerClient(url=args.grpc_url)
numbers = grpcclient.InferInput("input", list(x.shape), "FP32")
numbers.set_data_from_numpy(x)
strings = grpcclient.InferInput("categorical", list(s.shape), "BYTES")
strings.set_data_from_numpy(s)
result = client.infer("gems", [numbers, strings])
print(
    f"gRPC       : labels {result.as_numpy('label').tolist()}, probabilities {result.as_numpy('probabilities').astype(float).round(4).tolist()}"
)
