# One image for every embedq service; compose picks the command. EXTRAS chooses what is installed:
# "worker-gpu,flower" (default: CUDA torch from PyPI, for GPU hosts), "worker,flower" (CPU torch), or
# "flower" for an API/Flower-only image without torch.
FROM python:3.11-slim

ARG EXTRAS=worker-gpu,flower

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMBEDQ_MODELS_DIR=/models \
    EMBEDQ_STATE_DIR=/var/lib/embedq

RUN useradd --create-home --uid 10001 embedq \
    && mkdir -p /models /var/lib/embedq \
    && chown embedq:embedq /models /var/lib/embedq

WORKDIR /opt/embedq
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".[${EXTRAS}]"

USER embedq
# API, Flower, a worker's /metrics.
EXPOSE 8000 5555 9808
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
