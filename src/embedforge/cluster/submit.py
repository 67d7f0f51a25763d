"""Submit the compiled pipeline to a Kubeflow Pipelines API server (``embedforge submit --host URL``).

A thin layer over ``kfp.Client``: ``create_run_from_pipeline_package`` sends the compiled package (pipeline spec +
Kubernetes platform spec, inline in the run) with the run's parameters, in an experiment it creates if needed;
:func:`wait_for` follows the run to its end state. What this module adds is what a command line
needs: ``k=v`` parameters checked against the package's own parameter list (values parsed as JSON when they are,
so ``train_config={"epochs": 1}`` is a dict), the bearer token taken from an environment variable and handed only
to the client (never printed, never in a URL), and one clear line for an unreachable host, a refused token or a
run that did not succeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel

from embedforge.cluster.image import check_published
from embedforge.errors import ConfigError, EmbedforgeError, InputError
from embedforge.redact import redact

#: Environment variable holding the bearer token for the KFP API (e.g. a ServiceAccount token, or the
#: ``authservice_session`` token of a Kubeflow install behind Dex/OIDC). The kfp SDK reads no token by itself.
TOKEN_ENV = "KF_PIPELINES_TOKEN"

#: End states of a KFP v2 run (``V2beta1RuntimeState``); ``--wait`` exits 0 only on SUCCEEDED.
SUCCEEDED = "SUCCEEDED"
FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}


class SubmitError(EmbedforgeError):
    """The KFP API could not be reached, refused the request, or the run did not succeed."""


class Submission(BaseModel):
    """What was submitted and, with ``wait``, how it ended."""

    run_id: str
    run_url: str
    experiment: str
    state: Optional[str] = None

    @property
    def succeeded(self) -> bool:
        return (self.state or "").upper() == SUCCEEDED


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; a value that parses as JSON (``{...}``, ``[...]``, numbers, true/false) is
    taken as such, anything else as a string (``corpus_uri=s3://b/docs``)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param {item!r}: expected KEY=VALUE, e.g. --param corpus_uri=s3://bucket/docs")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _section(package: Path, *keys: str) -> Any:
    """``spec[keys[0]][keys[1]]...`` of the package's pipeline spec; a file that is not one is one InputError."""
    try:
        node = next(yaml.safe_load_all(package.read_text()))
        for key in keys:
            node = node[key]
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError) as exc:
        raise InputError(f"{package}: not a compiled KFP pipeline package ({type(exc).__name__}); "
                         "write one with `embedforge compile`") from None
    return node


def package_parameters(package: Path) -> dict[str, dict]:
    """The pipeline's parameters as the package declares them: name -> ``{"required": bool, "type": ...}``."""
    declared = _section(package, "root", "inputDefinitions", "parameters")
    return {name: {"required": not d.get("isOptional", False) and "defaultValue" not in d,
                   "type": d.get("parameterType")} for name, d in declared.items()}


def package_images(package: Path) -> set[str]:
    """Every container image the package's steps run."""
    executors = _section(package, "deploymentSpec", "executors")
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def check_params(package: Path, params: dict[str, Any]) -> None:
    """Fail with one line on a parameter the package does not have, or a required one left out."""
    declared = package_parameters(package)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise InputError(f"--param {', '.join(unknown)}: not a parameter of {package.name}; it has "
                         f"{', '.join(sorted(declared))}")
    missing = sorted(n for n, d in declared.items() if d["required"] and n not in params)
    if missing:
        raise InputError(f"{package.name} needs --param {' --param '.join(f'{n}=...' for n in missing)}")


def _client(host: str, token: Optional[str], namespace: Optional[str]):
    """A ``kfp.Client`` for ``host``, after one health check with the same credentials.

    The check comes first because ``kfp.Client()`` itself asks ``/healthz`` five times, 5 s apart, before it
    gives up with a TimeoutError that hides a refused token; one call fails at once with the real status.
    """
    import kfp
    import kfp_server_api

    config = kfp_server_api.Configuration(host=host.rstrip("/"))
    if token:
        config.api_key["authorization"], config.api_key_prefix["authorization"] = token, "Bearer"
    try:
        kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(config)).healthz_service_get_healthz()
        # (kfp.Client's own default namespace is the string "kubeflow", which it reads as "not given")
        return kfp.Client(host=host, existing_token=token or None, namespace=namespace or "kubeflow")
    except Exception as exc:  # noqa: BLE001 - urllib3 / ApiException: one line either way
        raise _api_error(host, "connect to", exc) from None


def _api_error(host: str, action: str, exc: Exception) -> SubmitError:
    """One line for a failed API call; never the request (its headers hold the token)."""
    status = getattr(exc, "status", None)
    where = redact(host)
    if status in (401, 403):
        return SubmitError(f"KFP API at {where} refused to {action} it ({status} "
                           f"{'Unauthorized' if status == 401 else 'Forbidden'}): set ${TOKEN_ENV} to a valid "
                           "token for this endpoint")
    if status is not None:
        reason = getattr(exc, "reason", "") or ""
        return SubmitError(f"KFP API at {where} failed to {action} it: HTTP {status} {reason}".rstrip())
    cause = exc
    while getattr(cause, "reason", None) is not None and isinstance(cause.reason, Exception):
        cause = cause.reason  # urllib3 MaxRetryError -> NewConnectionError -> the OS error
    return SubmitError(f"cannot {action} the KFP API at {where}: {type(cause).__name__}: "
                       f"{redact(str(cause).splitlines()[0] if str(cause) else '')}; check --host and that the "
                       "ml-pipeline service is reachable (kubectl port-forward svc/ml-pipeline 8888:8888)")


def submit(host: str, package: Path, params: dict[str, Any], experiment: str = "embedforge",
           run_name: Optional[str] = None, namespace: Optional[str] = None,
           service_account: Optional[str] = None, wait: bool = False, timeout_s: float = 24 * 3600,
           poll_s: float = 15.0, token_env: str = TOKEN_ENV) -> Submission:
    """Create a run of ``package`` with ``params`` on the KFP API at ``host``; with ``wait``, follow it to its end.

    ``namespace``: the profile namespace of a multi-user Kubeflow (its experiments and the run's pods live
    there); ``service_account``: the run's pods' ServiceAccount (manifests/: ``embedforge-pipeline``).

    Raises:
        InputError: A bad package or parameter.
        SubmitError: The API is unreachable or refused the call; with ``wait``, the run did not end in time.
    """
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host {redact(host)}: give the KFP API URL with its scheme, e.g. http://localhost:8888")
    check_params(package, params)
    for image in sorted(package_images(package)):
        check_published(image, str(package))
    # kfp prints "Experiment details: URL" / "Run details: URL": to stderr, so stdout holds only what we print
    with contextlib.redirect_stdout(sys.stderr):
        client = _client(host, os.environ.get(token_env), namespace)
        try:
            result = client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name, experiment_name=experiment,
                namespace=namespace, service_account=service_account)
        except Exception as exc:  # noqa: BLE001
            raise _api_error(host, "create the run", exc) from None
    run_url = f"{host.rstrip('/')}/#/runs/details/{result.run_id}"
    submission = Submission(run_id=result.run_id, run_url=run_url, experiment=experiment)
    if wait:
        submission.state = wait_for(client, host, result.run_id, timeout_s, poll_s)
    return submission


def wait_for(client, host: str, run_id: str, timeout_s: float, poll_s: float) -> str:
    """Poll the run until it reaches an end state; return that state.

    Not ``Client.wait_for_run_completion``: its end states are lower-case v1 names without ``CANCELED``, so a
    cancelled v2 run would be polled until the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = str(client.get_run(run_id).state or "").upper()
        except Exception as exc:  # noqa: BLE001
            raise _api_error(host, "read the run", exc) from None
        if state in FINAL_STATES:
            return state
        if time.monotonic() > deadline:
            raise SubmitError(f"run {run_id} is still {state or 'pending'} after {timeout_s:g}s; it goes on: "
                              f"{host.rstrip('/')}/#/runs/details/{run_id}")
        time.sleep(poll_s)


__all__ = ["TOKEN_ENV", "Submission", "SubmitError", "check_params", "parse_params", "submit", "wait_for"]
