"""Where trial evaluations run: in this process, or as Ray tasks on a machine or a cluster.

An executor takes ``submit(token, fn, payload)`` and gives back finished work with
``wait_one() -> (token, result | BaseException)``. Only the driver talks to the study's storage;
executors never do, so SQLite sees one writer.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from studies.errors import StudyError


class WorkerLost(RuntimeError):
    """The process running a trial died (killed, out of memory, node lost)."""


class InProcessExecutor:
    """Runs each evaluation at submit time; for ``--workers 0``, debugging and tests."""

    def __init__(self) -> None:
        self._done: deque[tuple[Any, Any]] = deque()

    def submit(self, token: Any, fn: Callable[[Any], Any], payload: Any) -> None:
        try:
            self._done.append((token, fn(payload)))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001  (reported as the trial's failure)
            self._done.append((token, exc))

    def wait_one(self, timeout: float | None = None) -> tuple[Any, Any] | None:
        return self._done.popleft() if self._done else None

    def cancel_all(self) -> list[Any]:
        return []

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """Each evaluation is a Ray task with ``num_cpus``/``num_gpus``; a dead worker is reported, not retried.

    ``address=None`` starts a local Ray with ``workers`` CPUs; ``"auto"`` or ``ray://...`` joins a cluster
    (``RAY_ADDRESS`` is honoured by Ray itself). Retrying is the driver's job, so it is recorded in the study.
    """

    def __init__(self, workers: int, address: str | None = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is a core dependency
            raise StudyError("ray is not installed: pip install 'ray[tune]'") from exc
        self.ray = ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        self._owns = not ray.is_initialized()
        if self._owns:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            else:
                check_local_capacity(workers, cpus_per_trial)
                kw["num_cpus"] = max(1, int(workers * cpus_per_trial + 0.999))
                kw["num_gpus"] = int(workers * gpus_per_trial + 0.999) if gpus_per_trial else 0
                kw["_node_ip_address"] = "127.0.0.1"
            try:
                with _loopback_only(local=not address):
                    ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise StudyError(f"cannot start or join Ray ({address or 'local'}): {exc}") from None
        if address:
            check_cluster_capacity(ray.cluster_resources(), workers, cpus_per_trial, gpus_per_trial)
        self._task = ray.remote(_call).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                                               max_retries=0)
        self._fn_refs: dict[int, Any] = {}
        self._pending: dict[Any, Any] = {}

    def submit(self, token: Any, fn: Callable[[Any], Any], payload: Any) -> None:
        ref = self._fn_refs.get(id(fn))
        if ref is None:
            ref = self._fn_refs[id(fn)] = self.ray.put(fn)  # heavy state (zoo weights) shipped once
        self._pending[self._task.remote(ref, payload)] = token

    def wait_one(self, timeout: float | None = None) -> tuple[Any, Any] | None:
        if not self._pending:
            return None
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        token = self._pending.pop(ref)
        from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

        try:
            return token, self.ray.get(ref)
        except RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            return token, cause if isinstance(cause, BaseException) else RuntimeError(str(exc))
        except (WorkerCrashedError, NodeDiedError) as exc:
            return token, WorkerLost(f"the Ray worker running this trial died ({exc.__class__.__name__})")
        except Exception as exc:  # noqa: BLE001  (any other Ray system error: the worker is lost)
            return token, WorkerLost(f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def cancel_all(self) -> list[Any]:
        tokens = list(self._pending.values())
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        self._pending.clear()
        return tokens

    def shutdown(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def check_local_capacity(workers: int, cpus_per_trial: float, cpus: int | None = None) -> None:
    """A local cluster is this machine: ``workers * cpus_per_trial`` must fit its cores."""
    cpus = cpus or os.cpu_count() or 1
    if workers * cpus_per_trial > cpus:
        raise StudyError(f"--workers {workers} with {cpus_per_trial:g} CPU(s) per trial needs "
                         f"{workers * cpus_per_trial:g} CPUs, and this machine has {cpus}: use at most "
                         f"{max(1, int(cpus // cpus_per_trial))} workers here, or --ray-address for a cluster")


@contextlib.contextmanager
def _loopback_only(local: bool):
    """A local Ray cluster listens on 127.0.0.1 only. Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into this
    machine's routable address unless its cluster mode is off, as it is on macOS/Windows
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when ray is imported): switch it off while starting."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    old = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address that nothing answers is refused at once (``ray.init`` would wait minutes).

    ``auto`` is left to Ray; ``host:port`` (the GCS) and ``ray://host:port`` (Ray Client) are tried over TCP."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StudyError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise StudyError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def check_cluster_capacity(resources: dict[str, float], workers: int, cpus_per_trial: float,
                           gpus_per_trial: float) -> None:
    """Workers the cluster could never run at once are refused, not left waiting for resources forever."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if workers * cpus_per_trial > cpus or workers * gpus_per_trial > gpus:
        raise StudyError(f"--workers {workers} needs {workers * cpus_per_trial:g} CPUs and "
                         f"{workers * gpus_per_trial:g} GPUs; the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs")


def _call(fn: Callable[[Any], Any], payload: Any) -> Any:
    return fn(payload)


def make_executor(workers: int, address: str | None = None, cpus_per_trial: float = 1.0,
                  gpus_per_trial: float = 0.0):
    if workers < 0:
        raise StudyError("--workers must be >= 0")
    if workers == 0 and not address:
        return InProcessExecutor()
    return RayExecutor(max(workers, 1), address, cpus_per_trial, gpus_per_trial)
