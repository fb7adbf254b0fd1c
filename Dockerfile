# One image for every embedq service; compose picks the command. LOCK picks what is installed, exactly as
# locked (requirements/, docs "Development"):
#   image-gpu (default): PyPI's CUDA torch, bitsandbytes (CUDA int8/int4, QLoRA), ModelScope's hub client, Flower
#   image-cpu: the CPU build of torch, from the PyTorch CPU index:
#     docker build --build-arg LOCK=image-cpu --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ARG LOCK=image-gpu
ARG PIP_EXTRA_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMBEDQ_API_HOST=0.0.0.0 \
    EMBEDQ_MODELS_DIR=/models \
    EMBEDQ_STATE_DIR=/var/lib/embedq \
    EMBEDQ_MODELSCOPE_CACHE_DIR=/cache/modelscope \
    EMBEDQ_ONNX_DIR=/cache/onnx

# The mount points exist and belong to the service user, so named volumes mounted there inherit that.
RUN useradd --create-home --uid 10001 embedq \
    && mkdir -p /models /var/lib/embedq /cache/modelscope /cache/onnx \
    && chown embedq:embedq /models /var/lib/embedq /cache/modelscope /cache/onnx

WORKDIR /opt/embedq
# Dependencies first (a layer that changes only with the lock), then embedq itself with no resolving at all.
COPY requirements ./requirements
RUN pip install --require-hashes --no-deps -r "requirements/${LOCK}.txt"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-deps --no-build-isolation . && pip check

USER embedq
# API, Flower, a worker's /metrics.
EXPOSE 8000 5555 9808
CMD ["embedq", "api"]
