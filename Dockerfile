# bnserve serving image: only the serving dependencies (no onnx, no training code), models/ baked in.
#   docker build -t bnserve .            (BASE picks the base image; python:3.11-slim by default)
#   docker run -p 8000:8000 -p 8001:8001 bnserve
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md contract.py featurestats.py ./
COPY service/ service/
# The distribution declares the training packages too (training, training.data); the image gets their empty
# markers only, removed below.
COPY training/__init__.py training/
RUN mkdir -p training/data \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile . \
 && rm -rf /opt/venv/lib/python3*/site-packages/training \
 && /opt/venv/bin/python -c "import service.app, contract, featurestats; import importlib.util as u; assert u.find_spec('onnx') is None"

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BNSERVE_HOST=0.0.0.0 \
    BNSERVE_PORT=8000 \
    BNSERVE_GRPC_PORT=8001 \
    BNSERVE_MODEL_REPOSITORY=/models
RUN groupadd --system --gid 10001 bnserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bnserve
COPY --from=build /opt/venv /opt/venv
COPY models/ /models/
WORKDIR /models
USER 10001:10001
# HTTP (REST: V2 and V1, health, metrics) and gRPC (the Open Inference Protocol's GRPCInferenceService).
EXPOSE 8000 8001
# Python's standard library only (the slim image has no curl); the port follows BNSERVE_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('BNSERVE_PORT', '8000'), timeout=2)"]
# uvicorn drains in-flight requests on SIGTERM within BNSERVE_GRACEFUL_TIMEOUT (8 s), under Docker's 10 s.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
