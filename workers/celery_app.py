"""The Celery worker app. The parent process never imports torch; each child loads models lazily."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, signals
from celery.concurrency import get_implementation
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.exceptions import Ignore, Reject, Retry

from app.core.celery import celery_config
from app.core.config import get_settings
from app.core.cpus import usable_cpus
from app.core.db import db
from app.core.outages import TRANSIENT_ERRORS
from app.core.queues import TaskName
from app.core.store_outages import StoreUnavailableError, raise_if_unavailable
from workers import metrics, observability, task_starts
from workers.broker_heartbeat import UnackedHeartbeat
from workers.liveness import LivenessFile

log = logging.getLogger(__name__)

celery_app = Celery(
    "embedq",
    include=[
        "workers.tasks.embed",
        "workers.tasks.maintenance",
        "workers.tasks.infer",
        "workers.tasks.webhooks",
        "workers.tasks.train",
        "workers.tasks.ingest",
        "workers.tasks.sources",
        "workers.tasks.batches",
    ],
)
celery_app.conf.update(celery_config(get_settings()))
celery_app.steps["consumer"].add(UnackedHeartbeat)
celery_app.steps["consumer"].add(LivenessFile)
# `celery beat` touches its liveness file on every tick (`embedq worker-alive --node beat`).
celery_app.conf.beat_scheduler = "workers.liveness:LivenessScheduler"
observability.connect()


def retrying_task(name: TaskName, inputs: bool = False) -> Callable[[Callable[..., Any]], Task]:
    """Return a decorator registering a job task as ``name``, retried through database and broker outages.

    Backoff doubles from 1 s up to 60 s, jittered, for at most EMBEDQ_TASK_MAX_RETRIES retries. Every job
    task takes this policy; only the sync ``infer`` and the beat's ``maintenance.reap`` do without it. Each
    start is counted, and a task whose worker died at EMBEDQ_TASK_MAX_STARTS starts fails its job instead of
    running again (``workers.task_starts``); with ``inputs``, the task takes ``refused`` (the reason) and passes
    ``task_starts.refusing(refused)`` for its model function, so only its own inputs fail.
    """
    register = celery_app.task(
        bind=True,
        name=name.value,
        autoretry_for=TRANSIENT_ERRORS,
        retry_backoff=True,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=get_settings().task_max_retries,
    )

    def decorate(run: Callable[..., Any]) -> Task:
        @functools.wraps(run)
        def counted(task: Task, job_id: str, *args: Any, **kwargs: Any) -> Any:
            # Counted inside the autoretry wrapper: Redis being away is an outage the task waits out.
            settings = get_settings()
            starts = task_starts.count_start(task.request.id, settings)
            if starts > settings.task_max_starts:
                why = task_starts.reason(name.value, starts, settings)
                metrics.task_given_up(name.value)
                if inputs:  # its inputs fail with the reason, through the task's own path; the job goes on
                    log.error("job %s: %s", job_id, why)
                    return run(job_id, *args, refused=why, **kwargs)
                return {"job_id": job_id, "given_up": why, "job_failed": task_starts.give_up(job_id, why)}
            try:
                try:
                    return run(job_id, *args, **kwargs)
                except (*TRANSIENT_ERRORS, Retry, Ignore, Reject):
                    raise
                except Exception as exc:
                    # A store that did not answer (the artifact store a model is installed from): retried.
                    raise_if_unavailable(exc, f"{name.value} of job {job_id}")
                    raise
            except StoreUnavailableError:  # raised here or by the task's own code
                metrics.store_outage(name.value)
                raise

        return register(counted)

    return decorate


_in_process_pool = False


@signals.celeryd_init.connect
def _before_the_pool(conf: Any, options: dict[str, Any], **_: Any) -> None:
    """Note the pool kind and, for one that runs torch in this process, set torch's OpenMP variables.

    Sent before the pool is made: the solo pool sends ``worker_process_init`` as it is made, in this process,
    and ``celeryd_after_setup`` comes after that, too late for variables torch reads when first imported.
    """
    global _in_process_pool
    # `celery worker --pool` arrives as "pool"; a Worker made in code may be given pool_cls.
    pool = options.get("pool_cls") or options.get("pool") or conf.worker_pool
    _in_process_pool = issubclass(get_implementation(pool), (SoloPool, ThreadPool))
    if _in_process_pool:
        _shorten_openmp_spin()
        _share_cores_among_sync_processes()


@signals.celeryd_after_setup.connect
def _remember_pool(instance: Any, **_: Any) -> None:
    # Read by each prefork child (inherited environment) to take its share of the CPU cores.
    os.environ["EMBEDQ_POOL_PROCESSES"] = str(instance.concurrency)
    if _in_process_pool:
        # No pool child will start: this process runs the tasks (a thread pool sends no worker_process_init).
        observability.start_tracing()


def _shorten_openmp_spin() -> None:
    """Let torch's idle OpenMP threads sleep soon after a forward pass (EMBEDQ_SYNC_OMP_SPIN_COUNT).

    Read by libgomp when torch is first imported, later, on the thread that runs the ops; an operator's own
    GOMP_SPINCOUNT or OMP_WAIT_POLICY wins. Measured with MiniLM on 2 cores, one short input per request:
    the OpenMP helper thread used 18 ms of CPU per request with libgomp's default and 9 ms at 20,000, and
    the requests' p50 dropped by ~2 ms; OMP_WAIT_POLICY=PASSIVE (no spinning at all) was slower than both.
    """
    spin = get_settings().sync_omp_spin_count
    if spin:
        _set_before_torch("GOMP_SPINCOUNT", spin, unless="OMP_WAIT_POLICY")


def _share_cores_among_sync_processes() -> None:
    """Give torch's OpenMP team of a worker that runs torch in its own process (a sync worker) its share of the
    cores: the cores it may use (app/core/cpus.py) divided among the sync workers `embedq up` started on it
    (EMBEDQ_SYNC_PROCESSES, one per core by default), EMBEDQ_SYNC_TORCH_THREADS if set; an operator's own
    OMP_NUM_THREADS wins.

    A team of several threads waits at each barrier for whichever thread the OS has lent to the API, Redis
    or the client; processes of one thread each wait for nothing. Measured on 2 cores (AMD EPYC, MiniLM at
    bf16, 32 clients through /v1/embeddings, 3 rounds each): two sync workers of one thread 166-179 texts/s,
    one of two threads 153-185, one of one thread 111-120 (docs: guide/sync-api "Where the time goes").
    """
    threads = get_settings().sync_torch_threads or _cores_per_process("EMBEDQ_SYNC_PROCESSES")
    _set_before_torch("OMP_NUM_THREADS", threads)


def _set_before_torch(name: str, value: int, unless: str | None = None) -> None:
    """Set the OpenMP variable ``name`` for torch, which reads it when first imported; an operator's own
    ``name`` (or ``unless``) wins."""
    if name in os.environ or (unless is not None and unless in os.environ):
        return
    if "torch" in sys.modules:
        log.warning("torch is loaded already: %s=%d would not take effect", name, value)
        return
    os.environ[name] = str(value)


def _cores_per_process(processes_variable: str) -> int:
    """Return the cores this process may use (app/core/cpus.py) divided among the processes that share them,
    as many as the environment variable ``processes_variable`` says (1 if unset); at least 1."""
    processes = max(1, int(os.environ.get(processes_variable) or 1))
    return max(1, usable_cpus() // processes)


def pool_runs_in_process() -> bool:
    """Return whether this worker runs tasks in its own process (a solo or thread pool), not in forked children."""
    return _in_process_pool


def _share_cpu_threads() -> None:
    """Give each prefork child its share of the cores: N children with torch's default threads oversubscribe."""
    threads = get_settings().worker_torch_threads or _cores_per_process("EMBEDQ_POOL_PROCESSES")
    import torch

    torch.set_num_threads(threads)


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    if _in_process_pool:
        # The solo pool sends this signal in the worker's own process: its torch keeps every core for the one
        # thread that runs it, and models load on that thread (workers/tasks/infer.py), not on this one.
        return
    # The parent's pooled connections must not be shared with a forked child.
    db.reset()
    _share_cpu_threads()
    preload = get_settings().preload_models
    if preload:
        from workers.runtime.registry import get_encoder

        for name in preload:
            get_encoder(name)
            log.info("preloaded model %s", name)


@signals.worker_process_shutdown.connect
def _shutdown_child(**_: Any) -> None:
    # Withdraw this process's model load records (GET /v1/models) instead of leaving them to expire.
    registry = sys.modules.get("workers.runtime.registry")
    if registry is not None:
        registry.unload_all()
