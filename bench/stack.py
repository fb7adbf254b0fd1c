"""Start a whole embedq stack (`embedq up` on free ports in a temp dir) for a benchmark, or use a running one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base_url: str, timeout: float, proc: subprocess.Popen | None, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"embedq up exited with {proc.returncode}:\n{log.read_text()[-4000:] if log else ''}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{base_url}/readyz was not ready in {timeout}s")


@contextlib.contextmanager
def embedq_stack(
    api_url: str | None = None,
    *,
    workers: int | None = 1,
    extra_env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[str]:
    """Yield the base URL of a ready API: `api_url` as given, or a fresh `embedq up` stopped on exit.

    ``workers``: the job worker's pool processes; None leaves them to `embedq up` (EMBEDQ_WORKER_CONCURRENCY).
    """
    if api_url:
        _wait_ready(api_url, timeout, None, None)
        yield api_url
        return
    state = Path(tempfile.mkdtemp(prefix="embedq-bench-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDQ_")}
    env.update(
        {
            "EMBEDQ_STATE_DIR": str(state),
            "EMBEDQ_API_PORT": str(port),
            "EMBEDQ_EMBEDDED_PG_PORT": str(_free_port()),
            "EMBEDQ_EMBEDDED_REDIS_PORT": str(_free_port()),
            "EMBEDQ_FLOWER_PORT": str(_free_port()),
            "HF_HUB_OFFLINE": "1",
            **(extra_env or {}),
        }
    )
    log = state / "up.log"
    cmd = [str(Path(sys.executable).with_name("embedq")), "up", "--no-flower"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, timeout, proc, log)
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
