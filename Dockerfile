# syntax=docker/dockerfile:1.7
# switchyard images: one target per service, plus the Triton image with the model repository baked in.
#   docker build --target front     -t switchyard/front .
#   docker build --target decision  -t switchyard/decision .   (guard, cache, simulator alike)
#   docker build --target triton    -t switchyard/triton .
# Build the model repository first (`make models`): the triton target copies triton_models/ and the
# service targets copy its tokenizer, so that every service tokenizes exactly as the encoder expects.
# Bases are pinned to exact versions; pin by digest (NAME:TAG@sha256:...) in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# NGC 25.04 = Triton 2.57 with its native onnxruntime backend (CUDA/TensorRT on GPU, CPU otherwise). Not
# older: Triton's gRPC frontend could crash when a request was cancelled as it completed (server#7368, fixed
# in 24.12; a second race, server#8078, fixed in spring 2025), and clients cancel routinely (deadlines).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.04-py3

# ---- builder: a venv with switchyard and its runtime dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# The runtime dependencies from pyproject.toml, less nvidia-pytriton: it only carries the local
# tritonserver binary (hundreds of MB); in Kubernetes Triton runs in its own image.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('nvidia-pytriton')))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "grpcio-tools>=1.81"
COPY proto/ proto/
COPY services/ services/
RUN python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto proto/switchyard/v1/*.proto \
    && pip install --no-deps . \
    && pip uninstall --yes grpcio-tools

# ---- runtime: what every service image shares ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWITCHYARD_CONFIG=/etc/switchyard/config.yaml
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/switchyard/healthcheck.py
# Services tokenize with the encoder's tokenizer; config triton.model_repository points here.
COPY triton_models/trunk/tokenizer.json /opt/switchyard/triton_models/trunk/tokenizer.json
# A default config so that `docker run` starts; Kubernetes mounts the rendered one over it.
COPY config/config.yaml /etc/switchyard/config.yaml
WORKDIR /opt/switchyard
USER 10001:10001

FROM runtime AS front
EXPOSE 50051 8080 9190
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/switchyard/healthcheck.py", "http", "8080", "/health"]
ENTRYPOINT ["switchyard", "serve", "front"]
CMD ["--config", "/etc/switchyard/config.yaml"]

FROM runtime AS decision
EXPOSE 50061 9191
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/switchyard/healthcheck.py", "grpc", "50061"]
ENTRYPOINT ["switchyard", "serve", "decision"]
CMD ["--config", "/etc/switchyard/config.yaml"]

FROM runtime AS guard
EXPOSE 50062 9192
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/switchyard/healthcheck.py", "grpc", "50062"]
ENTRYPOINT ["switchyard", "serve", "guard"]
CMD ["--config", "/etc/switchyard/config.yaml"]

FROM runtime AS cache
EXPOSE 50063 9193
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/switchyard/healthcheck.py", "grpc", "50063"]
ENTRYPOINT ["switchyard", "serve", "cache"]
CMD ["--config", "/etc/switchyard/config.yaml"]

# The OpenAI-compatible backend simulator, for clusters without a GPU LLM (skaffold dev on kind).
FROM runtime AS simulator
EXPOSE 8100
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "/opt/switchyard/healthcheck.py", "http", "8100", "/health"]
ENTRYPOINT ["switchyard", "serve", "simulator"]
CMD ["--config", "/etc/switchyard/config.yaml"]

# ---- triton: the stock NGC server with the built model repository -----------------------------
# Baked in rather than built by an init container: building needs torch and the encoder weights
# (GBs, minutes, network) on every pod start, while a baked image is immutable, versioned with
# the code that calls it, and starts as fast as the node can pull it.
FROM ${TRITON_IMAGE} AS triton
# triton-server (uid 1000) is the NGC image's own unprivileged user.
COPY --chown=1000:1000 triton_models/ /models/
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true"]
