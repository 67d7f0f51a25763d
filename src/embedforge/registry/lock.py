"""One alias move at a time per registered model: the lock promote and rollback hold from first read to last write.

Moving ``champion`` is a compare-then-set over two MLflow calls with a rollout (seconds to minutes) between them, and
the rollout itself rewrites the live Triton repository. A compare alone cannot stop two writers that both compared
before either wrote, nor two rollouts writing the same repository; a lock can. :func:`promotion_lock` holds one for
the whole of a promotion or rollback:

* **in a Kubernetes pod** (``KUBERNETES_SERVICE_HOST`` set and a ServiceAccount token mounted): a
  ``coordination.k8s.io/v1`` Lease ``embedforge-promote-<model>`` in the pod's namespace. It is taken with a create
  (or, when the holder's lease has expired, a replace guarded by its resourceVersion), renewed by a thread every
  third of its duration while held, and released by deleting it; a holder that dies stops renewing, so its lease
  expires and the next promotion takes it over. RBAC: ``manifests/base/pipeline-rbac.yaml``;
* **elsewhere**: an exclusive ``flock`` on ``.embedforge-promote-<model>.lock`` in the folder all promoters of that
  model share — the live Triton repository when there is one, else the folder of a sqlite MLflow store, else this
  user's cache folder. The kernel releases it when the holder exits, however it exits.

Waiting is bounded (``timeout_s``); the error names who holds the lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from embedforge.errors import ConfigError

log = logging.getLogger(__name__)

#: How long one holder may go without renewing before another promotion may take the Lease over.
LEASE_SECONDS = 60
_POLL_S = 1.0
_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LockTimeout(ConfigError):
    """Another promotion or rollback of the same model held the lock longer than we could wait."""


def lock_name(model_name: str) -> str:
    """A name for the lock of ``model_name`` that is a valid Kubernetes object name and file name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:30].strip("-") or "model"  # <= 63 in all
    return f"embedforge-promote-{slug}-{hashlib.sha256(model_name.encode('utf-8')).hexdigest()[:8]}"


def holder_identity() -> str:
    """Who holds a lock: host (the pod's name in a cluster) and process id."""
    return f"{socket.gethostname()}/{os.getpid()}"


def in_cluster() -> bool:
    """Whether this process runs in a Kubernetes pod with a ServiceAccount token (the Lease is used then)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _TOKEN.is_file()


def lock_folder(tracking_uri: str, repository_dir: str = "") -> Path:
    """Where the file lock lives: the live Triton repository, else a sqlite store's folder, else the user cache."""
    if repository_dir:
        return Path(repository_dir)
    if tracking_uri.startswith("sqlite:///") and tracking_uri != "sqlite:///:memory:":
        return Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedforge" / "locks"


@contextlib.contextmanager
def promotion_lock(model_name: str, tracking_uri: str, repository_dir: str = "",
                   timeout_s: float = 1800.0) -> Iterator[str]:
    """Hold the promotion lock of ``model_name`` while inside; yields a description of the lock.

    Raises:
        LockTimeout: Another holder kept it for ``timeout_s``.
    """
    if in_cluster():
        with _lease(lock_name(model_name), timeout_s) as where:
            yield where
    else:
        with _file_lock(lock_folder(tracking_uri, repository_dir) / f".{lock_name(model_name)}.lock", timeout_s) as where:
            yield where


# --------------------------------------------------------------------------------------------- file lock
@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for the promotion lock %s (held by %s)", path, _read_holder(fd))
                    waited = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"another promotion or rollback holds {path} ({_read_holder(fd)}) for more "
                                      f"than {timeout_s:.0f} s; wait for it or end it") from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_identity().encode("utf-8"), 0)
        log.info("holding the promotion lock %s", path)
        yield f"file {path}"
    finally:
        os.close(fd)  # releases the flock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------------- Lease
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@contextlib.contextmanager
def _lease(name: str, timeout_s: float, api=None, namespace: str = "") -> Iterator[str]:
    """Hold the Lease ``name`` (see the module docstring) while inside."""
    from kubernetes import client, config

    if api is None:
        config.load_incluster_config()
        api = client.CoordinationV1Api()
    namespace = namespace or _NAMESPACE.read_text(encoding="utf-8").strip()
    me = holder_identity()
    lease = _acquire(api, client, namespace, name, me, timeout_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(api, namespace, name, me, lease, stop), daemon=True)
    renewer.start()
    try:
        yield f"Lease {namespace}/{name}"
    finally:
        stop.set()
        renewer.join(timeout=10)
        with contextlib.suppress(Exception):  # not ours any more, or gone: nothing to release
            current = api.read_namespaced_lease(name, namespace)
            if current.spec.holder_identity == me:
                api.delete_namespaced_lease(name, namespace, body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(resource_version=current.metadata.resource_version)))


def _spec(client, me: str, acquired: dt.datetime):
    return client.V1LeaseSpec(holder_identity=me, lease_duration_seconds=LEASE_SECONDS, acquire_time=acquired,
                              renew_time=_now())


def _acquire(api, client, namespace: str, name: str, me: str, timeout_s: float):
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    holder = "unknown"
    while True:
        try:
            return api.create_namespaced_lease(namespace, client.V1Lease(
                metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "embedforge"}),
                spec=_spec(client, me, _now())))
        except ApiException as exc:
            if exc.status != 409:
                raise ConfigError(f"cannot take the promotion Lease {namespace}/{name}: HTTP {exc.status} "
                                  f"{exc.reason} (the pipeline's ServiceAccount needs create/get/update/delete on "
                                  "leases: manifests/base/pipeline-rbac.yaml)") from None
        try:  # it exists: take it over if its holder stopped renewing
            current = api.read_namespaced_lease(name, namespace)
            spec = current.spec
            holder = spec.holder_identity or "nobody"
            renewed = spec.renew_time or spec.acquire_time
            expired = not spec.holder_identity or renewed is None or (
                _now() - renewed).total_seconds() > (spec.lease_duration_seconds or LEASE_SECONDS)
            if expired:
                current.spec = _spec(client, me, _now())
                return api.replace_namespaced_lease(name, namespace, current)  # 409 if someone else was faster
        except ApiException as exc:
            if exc.status not in (404, 409):  # deleted or taken meanwhile: try again
                raise ConfigError(f"cannot read the promotion Lease {namespace}/{name}: HTTP {exc.status}") from None
        if time.monotonic() >= deadline:
            raise LockTimeout(f"another promotion or rollback holds the Lease {namespace}/{name} ({holder}) for "
                              f"more than {timeout_s:.0f} s; wait for it or end it")
        time.sleep(_POLL_S)


def _renew(api, namespace: str, name: str, me: str, lease, stop: threading.Event) -> None:
    while not stop.wait(LEASE_SECONDS / 3):
        try:
            lease.spec.renew_time = _now()
            lease = api.replace_namespaced_lease(name, namespace, lease)
        except Exception as exc:  # noqa: BLE001 - the next renewal retries; the holder's work goes on
            log.warning("could not renew the promotion Lease %s/%s: %s", namespace, name, exc)
            with contextlib.suppress(Exception):
                lease = api.read_namespaced_lease(name, namespace)
                if lease.spec.holder_identity != me:
                    log.error("the promotion Lease %s/%s was taken over by %s", namespace, name,
                              lease.spec.holder_identity)
                    return
