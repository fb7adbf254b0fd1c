"""The one Settings object shared by the API, the workers and the CLI (env prefix ``EMBEDQ_``).

Over 400 lines on purpose: it is one class, one field per setting with its description (the docs site's
configuration reference is generated from them), and splitting it would make two owners of the settings.
"""

from __future__ import annotations

import json
from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _comma_separated(value: Any) -> Any:
    """Read ``a,b,c`` (or a JSON list) from the environment as a list."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]
CommaFloats = Annotated[list[float], NoDecode, BeforeValidator(_comma_separated)]


class SourceCredentialSet(BaseModel):
    """One named set of S3 credentials for sources (EMBEDQ_SOURCE_CREDENTIALS); the keys stay secret."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    bearer_token: SecretStr | None = None  # http(s):// sources: sent as "Authorization: Bearer <token>"


def _also_provider(name: str, *more: str) -> AliasChoices:
    """Read EMBEDQ_<name>, else the EMB_PROVIDER_<name> that users bring from the provider they migrate from."""
    return AliasChoices(f"EMBEDQ_{name}", f"EMB_PROVIDER_{name}", *more)


# Hugging Face names whose ModelScope copy has another id (EMBEDQ_MODELSCOPE_MAPPING replaces this); any other
# name is looked up on ModelScope under the same id.
DEFAULT_MODELSCOPE_MAPPING: dict[str, str] = {
    "BAAI/bge-large-zh-v1.5": "AI-ModelScope/bge-large-zh-v1.5",
    "BAAI/bge-base-zh-v1.5": "AI-ModelScope/bge-base-zh-v1.5",
    "BAAI/bge-small-zh-v1.5": "AI-ModelScope/bge-small-zh-v1.5",
    "BAAI/bge-large-en-v1.5": "AI-ModelScope/bge-large-en-v1.5",
    "BAAI/bge-small-en-v1.5": "AI-ModelScope/bge-small-en-v1.5",
    "sentence-transformers/all-MiniLM-L6-v2": "AI-ModelScope/all-MiniLM-L6-v2",
}

ModelSourceSetting = Literal["huggingface", "modelscope", "auto"]
PrecisionSetting = Literal["auto", "fp32", "fp16", "bf16", "int8", "int4"]
BackendSetting = Literal["torch", "onnx"]


class ModelAliasSetting(BaseModel):
    """One entry of EMBEDQ_MODEL_MAPPING: what an alias stands for, and how to load it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    source: ModelSourceSetting | None = None
    precision: PrecisionSetting | None = None
    family: str | None = None
    backend: BackendSetting | None = None


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "embedq"


class Settings(BaseSettings):
    """Every knob of embedq; each limit has a default a single machine can live with."""

    # validate_by_name: fields that read EMB_PROVIDER_* aliases can still be set by name, e.g. in tests.
    model_config = SettingsConfigDict(env_prefix="EMBEDQ_", extra="ignore", env_file=".env", validate_by_name=True)

    environment: Literal["dev", "test", "prod"] = Field(
        default="dev",
        description="dev, test or prod; prod refuses EMBEDQ_AUTH_DISABLED=true, and Flower without basic auth",
    )

    # Services. Unset URLs mean "start the embedded ones" for `embedq up`; the API and workers need them set.
    database_url: str | None = Field(
        default=None, description="Postgres with pgvector (postgresql://...); unset: `embedq up` starts an embedded one"
    )
    redis_url: str | None = Field(
        default=None, description="Redis (redis:// or rediss://); unset: `embedq up` starts an embedded one"
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="where `embedq up` keeps the embedded Postgres and Redis, models and ONNX exports",
    )
    embedded_pg_port: int = Field(
        default=54329, ge=1, le=65535, description="port of the embedded Postgres of `embedq up`"
    )
    embedded_redis_port: int = Field(
        default=63799, ge=1, le=65535, description="port of the embedded Redis of `embedq up`"
    )

    # Models.
    models_dir: Path | None = Field(
        default=None, description="model folders by name, fine-tuned models included; default STATE_DIR/models"
    )
    default_model: str = Field(
        default=DEFAULT_MODEL,
        validation_alias=AliasChoices("EMBEDQ_DEFAULT_MODEL", "EMB_PROVIDER_MODEL_NAME"),
        description="the model of a request, job or collection that names none",
    )
    allow_hub_downloads: bool = Field(
        default=False,
        description="true: a model found in no local folder or cache is downloaded when a worker loads it",
    )
    device: str = Field(
        default="auto",
        validation_alias=_also_provider("DEVICE"),
        description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps",
    )
    preload_models: list[str] = Field(
        default_factory=list, description="models a worker loads at start (JSON list); empty: the default model"
    )
    max_resident_models: int = Field(
        default=2, ge=1, description="models one worker process keeps loaded; the least recently used is unloaded"
    )

    # The artifact store (docs: operations/scaling-out): what every host of a fleet must be able to read —
    # fine-tuned and pushed model folders, batch input and output files. A URL: file:///path (one host, or a
    # shared filesystem) or s3://bucket/prefix on any S3-compatible store.
    artifact_store: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix; default file://STATE_DIR/artifacts"
    )
    artifact_s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDQ_ARTIFACT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3 endpoint (MinIO, SeaweedFS, Ceph...); unset: AWS. Credentials: the standard AWS_* variables",
    )
    artifact_s3_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDQ_ARTIFACT_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="region of the artifact bucket",
    )
    artifact_check_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a worker trusts its last look at a registered model's revision in Postgres; "
        "an overwrite or delete reaches a worker that serves the model within this",
    )
    artifact_download_wait_s: float = Field(
        default=1800.0,
        gt=0,
        description="longest wait for another process of the host to finish downloading the same model",
    )

    # Model sources, aliases, families and precision (README "Models").
    model_source: ModelSourceSetting = Field(
        default="auto",
        validation_alias=_also_provider("MODEL_SOURCE"),
        description="hub of names not found locally; auto: ModelScope first for damo/ and iic/ names",
    )
    model_mapping: dict[str, ModelAliasSetting] = Field(
        default_factory=dict,
        validation_alias=_also_provider("MODEL_MAPPING"),
        description='aliases, JSON {"alias": {"name", "source", "precision", "family", "backend"}}',
    )
    modelscope_mapping: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_MODELSCOPE_MAPPING), description="Hugging Face name -> ModelScope id"
    )
    modelscope_cache_dir: Path | None = Field(
        default=None,
        validation_alias=_also_provider("MODELSCOPE_CACHE_DIR", "MODELSCOPE_CACHE_DIR", "MODELSCOPE_CACHE"),
        description="default: modelscope's own (MODELSCOPE_CACHE, else ~/.cache/modelscope)",
    )
    modelscope_trust_remote_code: bool = Field(
        default=False,
        validation_alias=_also_provider("MODELSCOPE_TRUST_REMOTE_CODE"),
        description="true: a ModelScope model's own modelling code may run (trust_remote_code)",
    )
    max_seq_length: int | None = Field(
        default=None,
        ge=1,
        validation_alias=AliasChoices("EMBEDQ_MAX_SEQ_LENGTH", "EMB_PROVIDER_CONTEXT_LENGTH"),
        description="caps every model's token limit (a model's own lower limit still wins)",
    )
    model_precision: PrecisionSetting = Field(
        default="auto",
        validation_alias=_also_provider("MODEL_PRECISION"),
        description="auto (the fastest faithful one measured here: EMBEDQ_PRECISION_AUTO_MEASURE), fp32, fp16, bf16, "
        "int8, or int4 (CUDA only)",
    )
    enable_quantization: bool = Field(
        default=False,
        validation_alias=_also_provider("ENABLE_QUANTIZATION"),
        description="precision auto becomes int8 on CPU",
    )
    int8_smoothing: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="SmoothQuant alpha of torch int8 models on the CPU (workers/runtime/smoothing.py); 0: plain",
    )
    precision_auto_measure: bool = Field(
        default=True,
        description="precision auto measures the candidates (fp32, bf16 on CPUs with bf16; fp16, bf16 on CUDA) at a "
        "model's first load on this hardware and keeps the fastest faithful one; false: fp32 on CPU, fp16 on CUDA",
    )
    precision_auto_min_mean_cosine: float = Field(
        default=0.999, gt=0, le=1, description="precision auto: least mean cosine to fp32 on the calibration texts"
    )
    precision_auto_min_cosine: float = Field(
        default=0.995, gt=0, le=1, description="precision auto: least cosine to fp32 of any calibration text"
    )
    precision_cache_dir: Path | None = Field(
        default=None,
        description="precision auto's decisions, one file per model and hardware; default STATE_DIR/precision",
    )
    model_backend: BackendSetting = Field(
        default="torch", description="torch, or onnx: ONNX Runtime on the CPU (pip install 'embedq[onnx]')"
    )
    onnx_dir: Path | None = Field(default=None, description="exported ONNX models; default STATE_DIR/onnx")

    # Job limits.
    max_inputs_per_job: int = Field(default=2048, ge=1, description="inputs in one embedding job: more is a 422")
    max_input_chars: int = Field(default=200_000, ge=1, description="characters in one input of a job or sync request")
    job_batch_size: int = Field(default=256, ge=1, description="inputs per Celery task")
    # bench.bulk_vs_raw's 3,000 texts, one thread: the task of the 256 longest ran 4.5 s, of the shortest 0.3 s;
    # at 65,536 characters the longest task ran 2.7 s at the same total time (32,768: 1.5 s, 6% more in all).
    job_batch_chars: int = Field(
        default=65_536,
        ge=1,
        description="most input characters in one Celery task of an embedding job (an input longer alone gets a "
        "task): tasks of long texts hold fewer inputs, so no task is many times the work of another",
    )
    encode_batch_size: int = Field(default=32, ge=1, description="inputs per forward pass")
    results_page_max: int = Field(default=1000, ge=1, description="most vectors in one page of GET /jobs/{id}/results")
    jobs_page_max: int = Field(default=200, ge=1, description="most jobs in one page of GET /jobs")

    # Hostile input (README "Hostile input"): checked by app.core.limits before a route reads the body.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="any body but uploads: else 413")
    max_upload_bytes: int = Field(
        default=8 * 1024**3, ge=1024, description="a streamed POST /collections/{name}/documents body: else 413"
    )
    max_json_depth: int = Field(default=32, ge=2, le=1000, description="nesting of a JSON body: deeper is a 400")
    max_json_string_chars: int = Field(
        default=1_000_000, ge=1, description="any one JSON string (fine-tuning's text_content excepted): else 413"
    )

    # Queue.
    # Reliability (faults, reaper; README "Reliability"). A worker re-stamps the messages it holds every
    # broker_heartbeat_s, so only a message whose worker died goes unstamped for the visibility timeout and
    # is restored to its queue by the next sweep of a live worker (every broker_restore_interval_s).
    redis_visibility_timeout_s: int = Field(
        default=30,
        ge=5,
        description="a held message whose worker stopped re-stamping it goes back to its queue after this",
    )
    broker_heartbeat_s: float = Field(
        default=5.0,
        gt=0,
        description="a worker re-stamps the messages it holds this often; at most a third of the visibility timeout",
    )
    broker_restore_interval_s: int = Field(
        default=5, ge=1, description="a worker sweeps for the messages of dead workers this often"
    )
    # The reaper: every reaper_interval_s, active jobs with no progress for reaper_grace_s and no task
    # message left in Redis are re-enqueued, or failed once re-enqueued reaper_max_requeues times.
    reaper_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="the reaper (maintenance.reap, scheduled by celery beat) looks for lost jobs this often",
    )
    reaper_grace_s: float = Field(
        default=60.0,
        gt=0,
        description="a queued or running job unchanged this long, with no task message left, is re-enqueued",
    )
    reaper_max_requeues: int = Field(default=3, ge=0, description="re-enqueues of one job before the reaper fails it")
    worker_concurrency: int = Field(
        default=0,
        ge=0,
        description="pool processes of a worker (`embedq worker`, `embedq up`) unless --concurrency says; "
        "0: one per CPU core (at most 4) where models run on the CPU, 1 on a GPU",
    )
    worker_proc_alive_timeout_s: float = Field(
        default=120.0, gt=0, description="how long a worker waits for a new pool child to start"
    )
    # Worker liveness (app/health/liveness.py): the main process of a worker touches a file of its own in
    # worker_liveness_dir every worker_liveness_interval_s; `embedq worker-alive` (container healthchecks,
    # Kubernetes exec probes) fails once one is older than worker_liveness_max_age_s.
    worker_liveness_dir: Path | None = Field(
        default=None,
        description="where each worker touches its liveness file (named after its node name); "
        "default STATE_DIR/liveness",
    )
    worker_liveness_interval_s: float = Field(
        default=10.0, gt=0, description="a worker's main process touches its liveness file this often"
    )
    worker_liveness_max_age_s: float = Field(
        default=60.0,
        gt=0,
        description="`embedq worker-alive` calls a worker hung once its liveness file is older than this",
    )
    task_max_retries: int = Field(
        default=8,
        ge=0,
        description="retries of a task after transient Postgres, Redis or S3 store errors, with exponential "
        "backoff (1 s doubling to 60 s)",
    )
    task_max_starts: int = Field(
        default=5,
        ge=1,
        description="starts of one job task whose worker died each time (out of memory, a crash) before its job "
        "is failed instead of the task being run again",
    )

    # API.
    api_host: str = Field(
        default="127.0.0.1",
        description="address the API (and a worker's /metrics) listens on, and the CLI's default API host",
    )
    api_port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="port the API listens on under `embedq up` and `embedq api`, and the CLI's default API port",
    )
    # Slow clients (app/core/http_protocol.py): a stalled request head or body closes its connection.
    api_header_timeout_s: float = Field(default=10.0, gt=0, description="a request's line and headers arrive within")
    api_body_idle_timeout_s: float = Field(default=60.0, gt=0, description="longest pause inside a request body")
    api_keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections close after")
    api_limit_concurrency: int = Field(default=1000, ge=1, description="connections at once; more are answered 503")
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower's port under `embedq up`")
    # `embedq up` restarts a child that exits: after up_restart_initial_s, doubling per crash in the window up
    # to up_restart_max_s; past up_crash_restarts crashes in up_crash_window_s the child is left down.
    up_restart_initial_s: float = Field(default=1.0, gt=0, description="first restart delay of a crashed child")
    up_restart_max_s: float = Field(default=30.0, gt=0, description="longest restart delay of a crashed child")
    up_crash_restarts: int = Field(default=5, ge=0, description="restarts allowed within up_crash_window_s")
    up_crash_window_s: float = Field(default=120.0, gt=0, description="window in which a child's crashes count")
    supervisor_state_file: Path | None = Field(
        default=None, description="set by `embedq up` for its children: where /readyz reads their states"
    )
    readyz_details_public: bool = Field(
        default=False, description="true: /readyz shows what is not ready to callers without an admin key"
    )
    # Keys and tenants (README "Keys and tenants"). Keys made by `embedq keys create` live hashed in
    # Postgres; EMBEDQ_API_KEYS are admin keys of the tenant "default". With no key at all every request
    # is refused, unless auth_disabled says, explicitly, that anyone may call (as the "default" admin).
    api_keys: CommaList = Field(default_factory=list, description="admin keys of the tenant 'default'")
    auth_disabled: bool = Field(default=False, description="true: no key needed; every caller is an admin")
    default_max_concurrent_jobs: int = Field(default=0, ge=0, description="queued+running jobs per key; 0: no limit")
    default_requests_per_minute: int = Field(default=0, ge=0, description="sync requests per key; 0: no limit")
    readiness_timeout_s: float = Field(
        default=1.0, gt=0, description="how long /readyz (and a metrics scrape) waits for Redis and the workers"
    )
    # GET /metrics counts every tenant's jobs: admin keys only, or this bearer token, so that a Prometheus
    # scrape (`authorization: {credentials_file: ...}`) needs no admin key. Empty: admin keys only.
    metrics_token: str = Field(default="", description="bearer token that may read GET /metrics, besides admin keys")

    # Operating many tenants (docs "Tenants"): per-tenant metrics and fair queues. Traces are configured by the
    # standard OTEL_* variables only (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, ...), not here.
    tenant_metrics_max_tenants: int = Field(
        default=50,
        ge=0,
        description="tenants with a label of their own in the per-tenant metrics (the busiest); the rest count as "
        "'other'",
    )
    fair_queues: bool = Field(
        default=True,
        description="send job batches at a priority set by their tenant's backlog, so a small job does not wait "
        "behind another tenant's large one (false: one FIFO per queue)",
    )
    fair_queue_share_batches: int = Field(
        default=1,
        ge=1,
        description="batches of a tenant's backlog sent at the top priority; each lower one of the 4 levels takes "
        "4 times as many",
    )

    # Synchronous inference (README "Synchronous API"): /v1/embeddings, /vectorize, /tokenize wait for a
    # sync worker. Names users bring from the provider they migrate from (EMB_PROVIDER_*) are read too.
    sync_queue: str = Field(
        default="sync",
        min_length=1,
        description="give a group of API and workers their own: `embedq up` follows it; deploy/'s manifests "
        "consume 'sync', so change their -Q and KEDA listName with it",
    )
    sync_timeout_s: float = Field(default=30.0, gt=0, description="a sync request gets a 504 after this")
    sync_worker_requests: int = Field(
        default=64,
        ge=1,
        validation_alias=AliasChoices("EMBEDQ_SYNC_WORKER_REQUESTS", "EMBEDQ_SYNC_WORKER_THREADS"),
        description="requests one sync worker holds at once (queued or running); more wait in Redis",
    )
    enable_dynamic_batching: bool = Field(
        default=True,
        validation_alias=AliasChoices("EMBEDQ_ENABLE_DYNAMIC_BATCHING", "EMB_PROVIDER_ENABLE_DYNAMIC_BATCHING"),
        description="concurrent sync requests share forward passes",
    )
    max_wait_time_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        validation_alias=AliasChoices("EMBEDQ_MAX_WAIT_TIME_MS", "EMB_PROVIDER_MAX_WAIT_TIME_MS"),
        description="an idle worker waits this long for a batch to reach min_batch_size inputs",
    )
    min_batch_size: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("EMBEDQ_MIN_BATCH_SIZE", "EMB_PROVIDER_MIN_BATCH_SIZE"),
        description="inputs that start a batch at once, without waiting max_wait_time_ms",
    )
    # Measured on 2 CPU cores (bench/sync_latency.py): small forward passes of length-sorted inputs from a
    # large pool are fastest there; a GPU wants larger ones. On a 2-core Xeon, pools of 25 requests (1-8
    # texts each) ran at 146 texts/s with 2048 padded tokens per pass, 165-190 with 768-1024, 86 with 4096.
    max_batch_size: int = Field(
        default=32,
        ge=1,
        validation_alias=AliasChoices("EMBEDQ_MAX_BATCH_SIZE", "EMB_PROVIDER_MAX_BATCH_SIZE"),
        description="most inputs in one forward pass",
    )
    max_batch_tokens: int = Field(
        default=1024, ge=1, description="most padded tokens in one forward pass, of jobs and sync requests alike"
    )
    # Packed passes (workers/runtime/packed.py), measured on MiniLM bf16, one thread of a 2-core EPYC: pools of
    # 72 texts ran 176-183 texts/s with groups of 4-12 rows (128-384 tokens) and 2,048-8,192 tokens per pass,
    # against 126 in padded passes of 32 rows and 1,024 tokens.
    packed_passes: bool = Field(
        default=True,
        description="run BERT, RoBERTa and XLM-R encoders on the CPU without padding (false: padded passes)",
    )
    packed_pass_tokens: int = Field(default=4096, ge=1, description="most real tokens in one packed forward pass")
    attention_group_rows: int = Field(
        default=8, ge=1, description="most inputs attending side by side in a packed pass (padded to the longest)"
    )
    attention_group_tokens: int = Field(
        default=256, ge=1, description="most padded tokens in one attention group of a packed pass"
    )
    max_batch_inputs: int = Field(default=256, ge=1, description="most inputs the batcher pools into one batch")
    truncate: bool = Field(default=True, description="false: an input over the model's limit is a 400")
    max_inputs_per_request: int = Field(default=2048, ge=1, description="inputs in one sync request: more is a 400")
    max_tokens_per_request: int = Field(default=300_000, ge=1, description="tokens in one sync request: more is a 400")
    rerank_max_pairs: int = Field(
        default=1000, ge=1, description="texts (query, text pairs) in one /rerank or /v1/rerank request: more is a 400"
    )
    rerank_max_tokens_per_pair: int = Field(
        default=512,
        ge=8,
        description="tokens a reranker reads of one (query, text) pair, within the model's own limit: a longer "
        "pair is cut, longest side first (with truncate false, a 400)",
    )
    default_rerank_model: str | None = Field(
        default=None,
        description="the reranker /rerank, /v1/rerank and a search's rerank stage use when a request names none "
        "(unset: EMBEDQ_DEFAULT_MODEL)",
    )
    matryoshka_models: CommaList = Field(
        default_factory=lambda: [
            "*matryoshka*",
            "nomic-ai/nomic-embed-text-v1.5*",
            "nomic-ai/nomic-embed-text-v2*",
            "mixedbread-ai/mxbai-embed-*",
            "Snowflake/snowflake-arctic-embed-*-v1.5",
            "Snowflake/snowflake-arctic-embed-*-v2.0",
            "jinaai/jina-embeddings-v3",
            "Alibaba-NLP/gte-modernbert-base",
            "Qwen/Qwen3-Embedding-*",
        ],
        description="models (fnmatch patterns) whose vectors may be shortened with `dimensions`; * allows all",
    )

    # Fine-tuning (README "Fine-tuning"): limits of a request, the held-out evaluation, and how often a
    # training job reports progress and saves a checkpoint it can resume from after a shutdown or crash.
    training_max_pairs: int = Field(default=200_000, ge=1, description="pairs in one fine-tuning request")
    training_max_upload_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="a fine-tuning body, as a file or text_content: else 413"
    )
    training_min_pairs: int = Field(default=8, ge=2, description="pairs left for training after the hold-out")
    training_eval_share: float = Field(default=0.1, ge=0, lt=1, description="share of pairs held out")
    training_eval_min_pairs: int = Field(default=32, ge=0, description="held out at least (never over half)")
    training_progress_every_steps: int = Field(
        default=5, ge=1, description="a training job writes its progress every this many steps"
    )
    training_checkpoint_every_steps: int = Field(
        default=100, ge=1, description="a training job saves a checkpoint it can resume from every this many steps"
    )
    training_reaper_grace_s: float = Field(default=900.0, gt=0, description="a step or eval may take this long")
    # Fine-tuning quality (docs/guide/fine-tuning.md): mined hard negatives, evaluation during training,
    # best-checkpoint selection, early stopping, and the epochs a request that names none gets.
    training_mining_candidates: int = Field(
        default=20, ge=1, le=1000, description="nearest passages a query's negative mining looks at"
    )
    training_mining_relative_margin: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="a mined passage scoring above (1 - this) x the positive's score is a likely false negative",
    )
    training_mining_max_similarity_to_positive: float = Field(
        default=0.95, gt=0, le=1, description="a mined passage this similar to the positive is a near-duplicate"
    )
    training_evals_per_run: int = Field(
        default=10, ge=1, description="held-out evaluations during a run when eval_every_steps is not given"
    )
    training_early_stopping_patience: int = Field(
        default=3, ge=0, description="evaluations without a better MRR@10 before a run stops; 0 never stops early"
    )
    training_default_min_steps: int = Field(
        default=100, ge=1, description="a request without epochs gets enough epochs for at least this many steps"
    )
    training_default_max_epochs: int = Field(
        default=10, ge=1, le=100, description="the most epochs a request without epochs gets"
    )
    training_bootstrap_resamples: int = Field(
        default=1000, ge=0, description="bootstrap resamples behind each held-out metric's 95% interval; 0: none"
    )

    # Webhooks, monitoring and logs (README "Webhooks", "Monitoring").
    webhook_allowed_cidrs: CommaList = Field(
        default_factory=list, description="non-public ranges webhooks may reach anyway, e.g. 10.0.0.0/8,127.0.0.1/32"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="one delivery attempt's timeout")
    # Delay before each retry (the first attempt is immediate): ~exponential, reaching 10 hours.
    webhook_retry_schedule_s: CommaFloats = Field(default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000])
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1, description="each delay varies by ±this fraction")
    webhook_retry_after_max_s: float = Field(default=36000, ge=0, description="cap on a receiver's Retry-After")
    # A retry due later is re-queued in hops of at most this, so no message waits in Redis for hours.
    webhook_max_countdown_s: float = Field(default=600, gt=0)
    webhook_secret_overlap_s: float = Field(default=86400, ge=0, description="old secret still signs this long")
    public_url: str | None = Field(default=None, description="base of absolute links in webhook events")
    flower_basic_auth: CommaList = Field(default_factory=list, description="user:password pairs for Flower")
    log_format: Literal["text", "json"] = Field(default="text", description="text, or json: one JSON object per line")
    log_level: str = Field(
        default="INFO", validation_alias=_also_provider("LOG_LEVEL"), description="log level of every process"
    )
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535, description="0 turns the worker's /metrics off")

    # Collections and ingestion (README "Collections and ingestion"). An upload is written to Postgres and
    # handed to the bulk queue in batches of at most ingest_batch_documents documents / ingest_batch_chars
    # characters, and at least every ingest_flush_s seconds while it streams.
    ingest_batch_documents: int = Field(
        default=256, ge=1, description="most documents in one ingest batch (one ingest.batch task)"
    )
    ingest_batch_chars: int = Field(default=1_000_000, ge=1, description="most characters in one ingest batch")
    ingest_flush_s: float = Field(
        default=5.0, gt=0, description="a streaming upload commits and sends a batch at least this often"
    )
    ingest_max_line_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="a longer line/document fails")
    ingest_default_max_tokens: int = Field(
        default=256, ge=8, description="chunk size in tokens of a collection that names none"
    )
    ingest_default_overlap_tokens: int = Field(
        default=32, ge=0, description="tokens consecutive chunks share in a collection that names none"
    )
    ingest_errors_in_view: int = Field(default=20, ge=0, description="per-document errors shown in a job view")
    # Sources (docs/guide/sources.md): POST /collections/{name}/sources makes the workers read S3 or local files.
    source_credentials: dict[str, SourceCredentialSet] = Field(
        default_factory=dict,
        description='named S3 credential sets a source picks with "credentials": JSON {"name": {"endpoint_url", '
        '"region", "access_key_id", "secret_access_key"}}; never shown in a response, job or log',
    )
    source_s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDQ_SOURCE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3 endpoint of a source that names no credential set; unset: AWS. Keys: the AWS_* variables",
    )
    source_s3_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDQ_SOURCE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="region of a source that names no credential set",
    )
    source_file_roots: CommaList = Field(
        default_factory=list,
        description="local folders a file:// source may read (comma-separated); empty: file:// is refused",
    )
    source_shard_target_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="bytes of one shard: a JSONL/CSV byte range, or Parquet row groups; smaller files are one shard",
    )
    source_max_objects: int = Field(default=10_000, ge=1, description="most objects one source may list: else 422")
    source_max_listed_keys: int = Field(
        default=100_000,
        ge=1,
        description="keys an s3:// source's listing may read, matching or not, before it stops with a 422",
    )
    source_shard_max_attempts: int = Field(
        default=3,
        ge=1,
        description="reads of a shard (or listings of a plan) before it fails: a store that does not answer is "
        "read again up to this many times, and a shard whose worker died each time fails unread",
    )
    source_http_allowed_cidrs: CommaList = Field(
        default_factory=list,
        description="non-public ranges http(s):// sources may read anyway, e.g. 10.0.0.0/8 (else public only)",
    )
    source_retry_delay_s: float = Field(
        default=10.0,
        gt=0,
        description="a read the store did not answer (refused, reset, timed out, 5xx, SlowDown) is tried again "
        "after this, doubling each time",
    )
    source_timeout_s: float = Field(
        default=20.0, gt=0, description="a source's store must answer the API's checks (list, schema) within this"
    )
    hnsw_m: int = Field(default=16, ge=2, le=100, description="HNSW m of a collection's vector index")
    hnsw_ef_construction: int = Field(
        default=64, ge=4, le=1000, description="HNSW ef_construction of a collection's vector index"
    )
    hnsw_build_memory: str = Field(default="1GB", pattern=r"^\d+(kB|MB|GB)$", description="maintenance_work_mem")
    search_ef_search: int = Field(
        default=200, ge=1, le=1000, description="HNSW candidates a search considers (recall against latency)"
    )
    search_exact_max_vectors: int = Field(
        default=10_000,
        ge=0,
        description="a collection version of at most this many vectors is searched exactly, not through HNSW "
        "(whose graph strands chunks among many identical vectors); 0: always HNSW",
    )
    search_max_top_k: int = Field(default=100, ge=1, le=1000, description="most results of one collection search")
    # The OpenAI Batch API (docs: guide/batch-api): files live in the artifact store, batches run on the bulk queue.
    batch_max_upload_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="a POST /v1/files body (OpenAI's 200 MB): else 413"
    )
    batch_max_lines: int = Field(default=50_000, ge=1, description="requests in one batch input file: more fails it")
    batch_completion_window_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="how long completion_window '24h' lasts: a batch still running then ends expired",
    )
    batch_task_tokens: int = Field(
        default=8192,
        ge=1,
        description="estimated tokens (4 characters each) of the requests one bulk task embeds",
    )
    batch_list_max: int = Field(default=100, ge=1, description="most files or batches in one page of a list")
    # torch threads per prefork worker child; 0: the cores the process may use (its affinity and cgroup quota, so a
    # container's --cpus) divided among the pool's processes.
    worker_torch_threads: int = Field(default=0, ge=0)
    # GOMP_SPINCOUNT of a worker that runs torch in its own process (the sync worker): how long torch's idle
    # OpenMP threads spin before they sleep. libgomp's default (300,000) kept a core busy ~15 ms after each
    # small forward pass, the core the API, Redis and the next request needed; 0 leaves libgomp's default.
    sync_omp_spin_count: int = Field(default=10_000, ge=0)
    # Search at a million vectors (docs: guide/collections, "Vectors and versions").
    hnsw_build_workers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="max_parallel_maintenance_workers of an HNSW build (unset: the Postgres server's, 2 by default)",
    )
    # Source planning (docs/guide/sources.md "Shards"): a plan reads its objects' Parquet footers this many at once.
    source_plan_threads: int = Field(
        default=16, ge=1, description="objects an ingest.plan task reads the Parquet footers of at once"
    )
    # torch threads of a worker that runs torch in its own process (a sync worker; docs: guide/sync-api "Where the
    # time goes"); 0: the cores the process may use divided among the sync workers `embedq up` starts on it.
    sync_torch_threads: int = Field(default=0, ge=0)
    sync_worker_processes: int = Field(
        default=0,
        ge=0,
        description="sync workers `embedq up` starts; 0: one per core on a CPU (at most 4), one on a GPU",
    )
    # Forward-pass sizes on a GPU (docs: guide/models; workers/runtime/pass_sizes.py). On a CUDA
    # device every pass (jobs, ingestion, sync requests, reranking) takes these two bounds instead of the CPU's
    # max_batch_size / encode_batch_size and max_batch_tokens. `python -m bench.gpu` measures each precision at
    # token budgets sized for the card and prints the pair to set; the guide says where these defaults stand.
    cuda_batch_size: int = Field(default=512, ge=1, description="most inputs in one forward pass on a CUDA device")
    cuda_batch_tokens: int = Field(
        default=16384, ge=1, description="most padded tokens in one forward pass on a CUDA device"
    )

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str | None) -> str | None:
        """Accept plain ``postgresql://`` URLs and pin the psycopg 3 driver."""
        if url is None:
            return None
        for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        if not url.startswith("postgresql+psycopg://"):
            raise ValueError("EMBEDQ_DATABASE_URL must be a postgresql:// URL")
        return url

    @field_validator("artifact_s3_endpoint_url", "artifact_s3_region", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # Compose files and ConfigMaps pass "" to mean "not set" (AWS itself, the default region).
        return value or None

    @field_validator("artifact_store")
    @classmethod
    def _artifact_store_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("file:///", "s3://")):
            raise ValueError("EMBEDQ_ARTIFACT_STORE must be a file:///absolute/path or s3://bucket/prefix URL")
        if url is not None and url.startswith("s3://") and not url[len("s3://") :].strip("/"):
            raise ValueError("EMBEDQ_ARTIFACT_STORE: name the bucket, e.g. s3://embedq-artifacts/prod")
        return url.rstrip("/") if url else url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("EMBEDQ_REDIS_URL must be a redis:// or rediss:// URL")
        return url

    @model_validator(mode="after")
    def _heartbeat_inside_visibility(self) -> Settings:
        if self.broker_heartbeat_s * 3 > self.redis_visibility_timeout_s:
            raise ValueError(
                "EMBEDQ_BROKER_HEARTBEAT_S must be at most a third of EMBEDQ_REDIS_VISIBILITY_TIMEOUT_S, "
                "or a worker that misses one beat has its running tasks redelivered"
            )
        return self

    @model_validator(mode="after")
    def _liveness_age_above_interval(self) -> Settings:
        if self.worker_liveness_max_age_s < 2 * self.worker_liveness_interval_s:
            raise ValueError(
                "EMBEDQ_WORKER_LIVENESS_MAX_AGE_S must be at least twice EMBEDQ_WORKER_LIVENESS_INTERVAL_S, "
                "or a worker that is one touch late is called hung and restarted"
            )
        return self

    @field_validator("webhook_allowed_cidrs", "source_http_allowed_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str], info: ValidationInfo) -> list[str]:
        for cidr in cidrs:
            try:
                ip_network(cidr, strict=False)
            except ValueError as exc:
                name = f"EMBEDQ_{(info.field_name or '').upper()}"
                raise ValueError(f"{name}: {cidr!r} is not a CIDR like 10.0.0.0/8") from exc
        return cidrs

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password_pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            user, _, password = pair.partition(":")
            if not user or not password:
                raise ValueError("EMBEDQ_FLOWER_BASIC_AUTH: give user:password pairs, comma-separated")
        return pairs

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule(cls, delays: list[float]) -> list[float]:
        if any(d < 0 for d in delays):
            raise ValueError("EMBEDQ_WEBHOOK_RETRY_SCHEDULE_S: delays are seconds >= 0, e.g. 5,300,1800")
        return delays

    @model_validator(mode="after")
    def _auth_in_prod(self) -> Settings:
        if self.environment == "prod" and self.auth_disabled:
            raise ValueError(
                "EMBEDQ_AUTH_DISABLED=true is refused when EMBEDQ_ENVIRONMENT=prod: create keys with "
                "`embedq keys create --tenant T` or set EMBEDQ_API_KEYS"
            )
        return self

    @model_validator(mode="after")
    def _derived_paths(self) -> Settings:
        if self.models_dir is None:
            self.models_dir = self.state_dir / "models"
        if self.onnx_dir is None:
            self.onnx_dir = self.state_dir / "onnx"
        if self.artifact_store is None:
            self.artifact_store = (self.state_dir / "artifacts").resolve().as_uri()
        if self.precision_cache_dir is None:
            self.precision_cache_dir = self.state_dir / "precision"
        return self

    def require_services(self) -> tuple[str, str]:
        """Return (database_url, redis_url), or explain which one is missing and how to set it."""
        missing = [
            n for n, v in (("EMBEDQ_DATABASE_URL", self.database_url), ("EMBEDQ_REDIS_URL", self.redis_url)) if not v
        ]
        if missing:
            raise RuntimeError(
                f"{' and '.join(missing)} not set: export them, or run `embedq up` to start embedded services"
            )
        assert self.database_url and self.redis_url
        return self.database_url, self.redis_url


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide Settings, read once from the environment."""
    return Settings()
