"""The ray engine: this process (the driver) plans, holds the manifest and writes every file; Ray actors on a local Ray
or a cluster (one per GPU, or --workers N on CPUs) make the micro-batches and send back encoded images (ray_pool.py,
ray_worker.py). Ray is an optional extra, imported only when this engine runs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from typing import Iterator

from ...errors import UsageError, first_line
from ...runtime import LoadOptions, check_device
from ..make import Made
from .base import Engine, Work

INSTALL = 'pip install "imagegen[ray]"'
PROBE_S = 5.0  # how long an unreachable --ray-address may take to say so


def import_ray():
    """Ray, or a one-line UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--engine ray: Ray is not installed; install it with: {INSTALL}") from None
    return ray


class RayEngine(Engine):
    """Micro-batches on Ray actors that pull them from the driver's queue; the driver writes what comes back."""

    name = "ray"
    options = ("ray_address", "workers")

    def __init__(self, ray_address: str | None = None, workers: int | None = None):
        self._ray = import_ray()
        self.address = ray_address or os.environ.get("RAY_ADDRESS") or None
        self.flag = "--ray-address" if ray_address else "RAY_ADDRESS"
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: must be 1 or more")
        self.workers = workers
        if self.address:
            probe(self.address, self.flag)  # before planning: an unreachable cluster is a fast one-line error
        self._summary: dict = {}
        self._own = False  # this process started the Ray it uses (and so stops it)

    def produce(self, groups: list[list], work: Work, stop) -> Iterator[Made]:
        """Join or start Ray and place the workers now (so a refusal comes before the progress bar), then make."""
        from .ray_pool import Pool
        from .ray_worker import Worker

        ray = self._ray
        self._own = self._connect(ray)
        try:
            count, options, threads = self._placement(ray, [group[0].req for group in groups])
        except BaseException:
            self._disconnect()
            raise
        device = "GPU" if options.get("num_gpus") else "CPU"
        where = {None: "a local Ray started for this batch", "auto": "the Ray cluster running on this machine"}.get(
            self.address, f"the Ray cluster at {self.address}")
        work.progress.note(f"Ray: {count} {device} worker{'s' if count != 1 else ''} on {where}")
        timeout = float(os.environ.get("IMAGEGEN_RAY_START_TIMEOUT", "300"))
        pool = Pool(ray, ray.remote(Worker), options, count, work, stop, start_timeout=timeout, threads=threads)
        return self._run(pool, groups)

    def _run(self, pool, groups: list[list]) -> Iterator[Made]:
        try:
            yield from pool.run(groups)
        finally:
            pool.close()
            self._summary = {"engine": "ray", "address": self.address or "local", "workers": pool.workers(),
                             "retries": pool.retries}
            self._disconnect()

    def _disconnect(self) -> None:
        if self._own:
            self._own = False
            self._ray.shutdown()

    def summary(self) -> dict:
        return self._summary

    def _connect(self, ray) -> bool:
        """Join the cluster at the address, or start a local Ray; True when this process started it (and so stops
        it). A Ray the caller already started (a notebook, the tests) is used as it is."""
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}  # workers' output stays in Ray's logs
        if not self.address:  # "local": a new Ray of our own, not one a `ray start` left on this machine
            ray.init(address="local", include_dashboard=False, **quiet)
            return True
        # Ray retries a silent address for minutes and its C++ client logs each try: bounded and kept off the
        # terminal here, so a wrong address is the one line below.
        with _env("RAY_gcs_server_port_wait_time_s", "5"), _stderr_aside():
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
                reason = first_line(exc, type(exc).__name__)
                if "Could not find any running Ray instance" in reason:  # auto: Ray's text names its own flags
                    reason = "no Ray is running on this machine"
                raise UsageError(f"{self.flag} {self.address}: cannot join a Ray cluster there ({reason}); start "
                                 f"one with `ray start --head`, or leave the flag out for a local Ray") from None
        return False

    def _placement(self, ray, reqs: list) -> tuple[int, dict, int | None]:
        """(workers, each actor's resources, each CPU worker's threads): one worker per GPU (at most --workers),
        else --workers (default 1) sharing the CPUs; a request that needs a GPU on a cluster without one is
        refused here, before any worker loads."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus and not all(str(req.device) == "cpu" for req in reqs):
            return min(gpus, self.workers or gpus), {"num_gpus": 1}, None
        for req in reqs:
            reason = needs_gpu(req)
            if reason:
                raise UsageError(f"--engine ray: the Ray cluster has no GPU ({cpus} CPUs), and {reason}")
        count = self.workers or 1
        largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")),
                      default=cpus)  # a worker's CPUs must fit on one node
        threads = max(1, min(cpus // count, largest)) if cpus else 1
        return count, {"num_cpus": threads}, threads


def needs_gpu(req) -> str | None:
    """Why a request cannot run on a CPU worker (its device or its memory options), or None."""
    if str(req.device).startswith("cuda"):
        return f"--device {req.device} needs one"
    try:
        check_device(LoadOptions.of(req).concrete(), "cpu")
    except UsageError as exc:
        return str(exc)
    return None


def probe(address: str, flag: str = "--ray-address") -> None:
    """A one-line UsageError, within PROBE_S seconds, when nothing listens at a host:port address ('auto' and
    'local' are Ray's own words and are left to Ray)."""
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    default = 10001 if address.startswith("ray://") else 6379  # Ray Client's port, else the head's GCS port
    host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest, "", str(default))
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"{flag} {address}: not HOST:PORT, ray://HOST:PORT, auto or local") from None
    try:
        with socket.create_connection((host.strip("[]"), number), timeout=PROBE_S):
            pass
    except socket.gaierror:
        raise UsageError(f"{flag} {address}: unknown host {host!r}") from None
    except TimeoutError:
        raise UsageError(f"{flag} {address}: no answer within {PROBE_S:.0f} s (is the head node up, and is the port "
                         f"open?)") from None
    except OSError as exc:
        raise UsageError(f"{flag} {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); start one "
                         f"with `ray start --head`, or leave the flag out for a local Ray") from None


@contextlib.contextmanager
def _env(name: str, value: str):
    """`name` set to `value` for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _stderr_aside():
    """File descriptor 2 sent to a scratch file for the block: Ray's C++ client writes its retries there, not through
    Python, so redirecting sys.stderr would not catch them."""
    with tempfile.TemporaryFile() as scratch:
        saved = os.dup(2)
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
