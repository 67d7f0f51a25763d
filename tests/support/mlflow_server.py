"""Real servers for the MLflow tests: ``mlflow server`` (by default sqlite + proxied local artifacts in a temporary
folder; or any backend/artifact store, optionally with basic auth), a throwaway PostgreSQL cluster
(:class:`PostgresCluster`, Debian's ``postgresql`` binaries) and an S3-compatible store (:class:`S3Store`, moto's
server on localhost).

Usage::

    with mlflow_server(tmp_path) as uri:   # "http://127.0.0.1:<free port>"
        MlflowClient(uri).search_experiments()

or, to overlap the start-up with other work, ``server = MlflowServer(root).start(); ...; server.wait_ready()``.

The server runs in its own process group and is terminated (then killed, if it lingers) on exit. Its log is
kept in ``<root>/server.log`` and quoted when it fails to start. MLflow's background job runner (a handful of
worker processes, unused by embedforge) is switched off to spare the test machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether ``url`` answers a GET with 200 now (a server's health endpoint while it starts)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group we created with start_new_session: server + workers
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


class MlflowServer:
    """``mlflow server`` in a subprocess: :meth:`start` returns at once, :meth:`wait_ready` blocks until healthy.

    Starting early and waiting late lets the server's start-up (tens of seconds: imports and the database
    schema) overlap with other test set-up.

    Args:
        root: Folder for the sqlite database (``mlflow.db``), the artifact store (``artifacts/``) and
            ``server.log``; created if missing.
        startup_timeout_s: How long :meth:`wait_ready` waits for ``GET /health`` to answer 200.
        backend_store_uri: Instead of ``sqlite:///<root>/mlflow.db`` (e.g. ``postgresql://...``).
        artifacts_destination: Instead of ``<root>/artifacts`` (e.g. ``s3://bucket/prefix``); artifacts are
            proxied either way, so clients need no store credentials.
        app_name: ``basic-auth`` for MLflow's HTTP basic authentication.
        env: Extra environment for the server only (S3 endpoint and keys, auth config).
        image: Run the server in this container image (images/Dockerfile.mlflow) instead of this venv: host
            network, uid 1000, read-only root filesystem; ``mounts`` (host paths) are mounted read-only at the same
            path. Secrets reach the container by name (``docker run -e NAME``), never on a command line.
    """

    def __init__(self, root: str | Path, startup_timeout_s: float = 240.0, backend_store_uri: str = "",
                 artifacts_destination: str = "", app_name: str = "", env: dict[str, str] | None = None,
                 image: str = "", mounts: tuple[str, ...] = ()):
        self.root = Path(root)
        self.backend_store_uri = backend_store_uri or f"sqlite:///{(self.root / 'mlflow.db').resolve()}"
        self.artifacts_destination = artifacts_destination or str((self.root / "artifacts").resolve())
        self.app_name = app_name
        self.extra_env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.image, self.mounts = image, mounts
        self.container = f"embedforge-mlflow-{self.port}" if image else ""
        self._started_at = 0.0
        self._ready = False

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        prefix = [sys.executable, "-m", "mlflow", "server"]
        if self.image:
            prefix = ["docker", "run", "--rm", "--name", self.container, "--network", "host", "--user", "1000:1000",
                      "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--tmpfs", "/home/mlflow:rw,uid=1000,gid=1000",
                      *[a for k in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", *self.extra_env) for a in ("-e", k)],
                      *[a for m in self.mounts for a in ("-v", f"{m}:{m}:ro")],
                      # the image's health check, at the port this server listens on (the image's default is 5000)
                      "--health-cmd", "python -c \"import urllib.request; urllib.request.urlopen("
                      f"'http://127.0.0.1:{self.port}/health', timeout=4)\"", self.image]
        cmd = [
            *prefix,
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            *(["--app-name", self.app_name] if self.app_name else []),
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._started_at = time.monotonic()
        return self

    def wait_ready(self) -> str:
        """Block until ``/health`` answers; return the tracking URI.

        Raises:
            RuntimeError: The server exited or did not become healthy in time (log tail in the message).
        """
        if self.proc is None:
            raise RuntimeError("MlflowServer.wait_ready() called before start()")
        deadline = self._started_at + self.startup_timeout_s
        while not self._ready and not answers(f"{self.uri}/health"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "did not answer /health"
                raise RuntimeError(f"mlflow server {state} (log {self.log_path}):\n{tail}")
            time.sleep(0.5)
        self._ready = True
        return self.uri

    def stop(self) -> None:
        if self.container:
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True, timeout=60)
        if self.proc is not None:
            _stop(self.proc)


@contextlib.contextmanager
def mlflow_server(root: str | Path, startup_timeout_s: float = 240.0) -> Iterator[str]:
    """Start ``mlflow server`` on a free localhost port and yield its tracking URI.

    Args:
        root: Folder for the sqlite database (``mlflow.db``), the artifact store (``artifacts/``) and
            ``server.log``; created if missing.
        startup_timeout_s: How long to wait for ``GET /health`` to answer 200 (the first start creates the
            database schema, which takes tens of seconds on a busy machine).

    Yields:
        The tracking URI, ``http://127.0.0.1:<port>``.

    Raises:
        RuntimeError: The server exited or did not become healthy in time (the log tail is in the message).
    """
    server = MlflowServer(root, startup_timeout_s).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ PostgreSQL
def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl`` (Debian layout), or None."""
    import glob

    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if (Path(p).parent / "pg_ctl").is_file()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` into ``root``, ``pg_ctl start`` on a free 127.0.0.1 port.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the ``postgres``
    system user (created by Debian's package) and ``root`` is handed to it. Password authentication
    (scram-sha-256) is on for TCP, so the URI carries a real password, as a production one does.

    Args:
        root: Folder for the data directory, the socket and ``postgres.log``; every folder above it must be
            reachable by the cluster's user (e.g. a fresh ``tempfile.mkdtemp()``, not pytest's 0700 tmp_path).
        bin_dir: Where ``initdb``/``pg_ctl``/``createdb`` live (:func:`postgres_bin_dir`).
    """

    def __init__(self, root: str | Path, bin_dir: Path, user: str = "mlflow", database: str = "mlflow"):
        import secrets

        self.root, self.bin_dir = Path(root), bin_dir
        self.user, self.database = user, database
        self.password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._run_as: str | None = None

    @property
    def uri(self) -> str:
        return self.uri_for(self.database)

    def uri_for(self, database: str) -> str:
        """A libpq URI (what ``psycopg2.connect`` takes)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def sqlalchemy_uri(self, database: str = "") -> str:
        """The URI MLflow's SQLAlchemy stores take: ``postgresql+psycopg2://`` (SQLAlchemy >= 2.1 maps a plain
        ``postgresql://`` to psycopg 3, which the MLflow image does not ship)."""
        return self.uri_for(database or self.database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def create_database(self, name: str) -> str:
        """``createdb name``; returns its SQLAlchemy URI."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name,
                  env={"PGPASSWORD": self.password})
        return self.sqlalchemy_uri(name)

    def _run(self, *cmd: str, env: dict[str, str] | None = None) -> None:
        # as root: run as the postgres user AND group, without root's supplementary groups
        drop = {"user": self._run_as, "group": self._run_as, "extra_groups": []} if self._run_as else {}
        proc = subprocess.run([str(self.bin_dir / cmd[0]), *cmd[1:]], **drop, cwd=self.root,
                              env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.is_file() else ""
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stdout[-2000:]}\n{log}")

    def start(self) -> "PostgresCluster":
        import pwd
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = "postgres"
            ids = pwd.getpwnam(self._run_as)
            shutil.chown(self.root, ids.pw_uid, ids.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            shutil.chown(pwfile, self._run_as, self._run_as)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off")
        self.create_database(self.database)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


# ------------------------------------------------------------------------------------------------ S3 (moto)
class S3Store:
    """An S3-compatible server on 127.0.0.1 (moto's ``ThreadedMotoServer``) with one bucket.

    The keys are random test values; they are given to the MLflow *server* only (``server_env``): with proxied
    artifacts the clients never need them.
    """

    def __init__(self, bucket: str = "mlflow-artifacts"):
        import secrets

        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.key_id = "AKIA" + secrets.token_hex(8).upper()
        self.secret = secrets.token_urlsafe(24)
        self._server = None

    @property
    def server_env(self) -> dict[str, str]:
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def start(self) -> "S3Store":
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


# --------------------------------------------------------------------- the prod overlay's MLflow, on this machine
@dataclass
class ProductionMlflow:
    """``mlflow server --app-name basic-auth`` on PostgreSQL with artifacts proxied to S3 (moto)."""

    uri: str
    username: str
    password: str
    admin_password: str
    postgres: PostgresCluster
    s3: S3Store
    artifacts_prefix: str


@contextlib.contextmanager
def production_mlflow(root: Path, bin_dir: Path, image: str = "") -> Iterator[ProductionMlflow]:
    """A throwaway PostgreSQL cluster and S3 bucket on localhost and ``mlflow server`` using them with basic auth
    (in this venv, or in ``image``), and a non-admin pipeline user created through the auth API. The S3 keys go to
    the server's environment only (proxied artifacts: clients need none)."""
    import secrets

    from mlflow.server.auth.client import AuthServiceClient

    root.mkdir(parents=True, exist_ok=True)
    pg_root = Path(tempfile.mkdtemp(prefix="embedforge-pg-"))  # reachable by the postgres user, unlike pytest's
    pg = PostgresCluster(pg_root, bin_dir).start()
    s3 = S3Store().start()
    admin_password = secrets.token_urlsafe(16)
    auth_ini = root / "basic_auth.ini"
    auth_ini.write_text("[mlflow]\ndefault_permission = READ\nadmin_username = admin\n"
                        f"database_uri = {pg.create_database('mlflow_auth')}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    os.chmod(auth_ini, 0o644)  # the server's container user reads it
    prefix = "mlflow"
    server = MlflowServer(
        root / "server", backend_store_uri=pg.sqlalchemy_uri(), artifacts_destination=f"s3://{s3.bucket}/{prefix}",
        app_name="basic-auth", image=image, mounts=(str(auth_ini),) if image else (),
        env={**s3.server_env, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)},
    ).start()
    try:
        uri = server.wait_ready()
        user, password = "embedforge-pipeline", secrets.token_urlsafe(16)
        with mock.patch.dict(os.environ, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_password):
            AuthServiceClient(uri).create_user(user, password)
        yield ProductionMlflow(uri, user, password, admin_password, pg, s3, prefix)
    finally:
        server.stop()
        s3.stop()
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
