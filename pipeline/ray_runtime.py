"""Ray bootstrap: join a cluster when an address is given, otherwise start a local Ray on demand; and the
worker environment every actor and task gets (the driver's credentials, fault hooks), secrets in memory
only, never in a runtime_env (Ray writes those into its session logs on every node)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from editgen.pipeline.errors import UserError
from editgen.pipeline.redact import env_names, install_log_redaction, is_secret_env, register_secrets
from editgen.pipeline.settings.run import RayConfig
from editgen.pipeline.storage import store_env

log = logging.getLogger("editgen")


def ensure_ray(cfg: RayConfig, address: str | None = None) -> dict[str, Any]:
    """Connect once per process; reuse an existing connection (tests start one Ray per session)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    _apply_output_route()
    addr = address or cfg.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "configure_logging": True,
    }
    if cfg.runtime_env:
        kwargs["runtime_env"] = cfg.runtime_env
        for name, value in (cfg.runtime_env.get("env_vars") or {}).items():
            if is_secret_env(str(name), str(value)):
                log.warning("ray.runtime_env sets %s, which looks like a secret: Ray writes runtime envs in clear "
                            "text into its session logs on every node; set it in the driver's environment "
                            "instead (docs/faults.md, Secrets)", name)
    if addr:
        log.info("joining Ray cluster at %s", addr)
        with native_stderr() as captured:
            try:
                ray.init(address=addr, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every way of not joining becomes one line
                raise UserError(connection_error(addr, exc, captured())) from None
    else:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
        if cfg.object_store_memory is not None:
            kwargs["object_store_memory"] = cfg.object_store_memory
        log.info("starting a local Ray")
        ray.init(**kwargs)
    return ray.cluster_resources()


@contextlib.contextmanager
def native_stderr() -> Iterator[Callable[[], str]]:
    """Hold what Ray's C++ core writes straight to file descriptor 2 while joining a cluster (a line a
    second for 20 s when it is refused): on failure it tells the cause, on success it is passed on to
    file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False

        def read() -> str:
            tmp.seek(0)
            return tmp.read().decode("utf-8", errors="replace")

        try:
            yield read
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:  # to file descriptor 2 again: the terminal, or the run log where the CLI routes it
                os.write(2, read().encode("utf-8", errors="replace"))


#: Where `route_ray_output` sends Ray's output while it is active (None: Ray's own defaults).
_route: list[logging.Handler] = []
#: What `_apply_output_route` replaced: the "ray" logger's handlers and Ray's worker-output printer.
_replaced: dict[str, Any] = {}


@contextlib.contextmanager
def route_ray_output(handler: logging.Handler) -> Iterator[None]:
    """While active, Ray's own output goes to `handler` (the CLI's run log) instead of the terminal: the
    driver's `ray` loggers (the token-auth warning, ...) and the lines Ray forwards to the driver with
    log_to_driver (the workers' stdout/stderr, the raylet's error messages), from a Ray this process
    connects to; a Ray connected in this block is shut down at its end, so its exit lines go there too.
    (Ray's C++ core writes to file descriptor 2 directly: see pipeline.logs.native_stderr_to.)"""
    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    _route[:] = [handler]
    if "ray" in sys.modules:  # already imported: route now, else when ensure_ray imports it
        _apply_output_route()
    try:
        yield
    finally:
        try:
            ray = sys.modules.get("ray")
            if ray is not None and not connected and ray.is_initialized():
                ray.shutdown()
        finally:
            _route.clear()
            _restore_output_route()


def _apply_output_route() -> None:
    """Point Ray's driver-side output at the active route (after `import ray`, which installs Ray's own
    stderr handler)."""
    if not _route or _replaced:
        return
    import ray._private.worker as ray_worker

    ray_logger = logging.getLogger("ray")
    _replaced.update(handlers=list(ray_logger.handlers), propagate=ray_logger.propagate)
    ray_logger.handlers = list(_route)
    ray_logger.propagate = False
    logging.getLogger(FORWARDED_LOGGER).setLevel(logging.INFO)  # "ray" itself is at WARNING once Ray is up
    if hasattr(ray_worker, "print_worker_logs"):  # what prints every forwarded line (Ray 2.x)
        _replaced["printer"] = ray_worker.print_worker_logs
        ray_worker.print_worker_logs = _log_forwarded


def _restore_output_route() -> None:
    if not _replaced:
        return
    import ray._private.worker as ray_worker

    ray_logger = logging.getLogger("ray")
    ray_logger.handlers = _replaced["handlers"]
    ray_logger.propagate = _replaced["propagate"]
    if "printer" in _replaced:
        ray_worker.print_worker_logs = _replaced["printer"]
    _replaced.clear()


#: The logger forwarded worker and raylet lines are written to (a child of "ray": routed with it).
FORWARDED_LOGGER = "ray.forwarded"


def _log_forwarded(data: dict[str, Any], print_file: Any = None, ignore_prefix: bool = False) -> None:
    """Ray's `print_worker_logs(data, print_file, ignore_prefix)` printing into the log instead of `print_file`:
    Ray still decides what is shown (the autoscaler's events only, ...) and how (`(raylet)`, `(WithEnv
    pid=123)` prefixes); each line becomes one record, warning level for stderr and raylet lines."""
    level = logging.WARNING if data.get("is_err") or data.get("pid") == "raylet" else logging.INFO
    stream = _LogStream(logging.getLogger(FORWARDED_LOGGER), level)
    _replaced["printer"](data, stream, ignore_prefix)
    stream.flush()


#: Terminal colour codes Ray wraps its prefixes in.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _LogStream:
    """A text stream whose every line is one log record (what Ray `print`s to it)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level, self.pending = logger, level, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = ""

    def _emit(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if line:
            self.logger.log(self.level, "%s", line)


def connection_error(addr: str, exc: BaseException, native_log: str = "") -> str:
    """One line saying why joining the cluster at `addr` failed and what fixes it (Ray's own message is a
    page of log lines and advice)."""
    text = str(exc)
    lowered = f"{text}\n{native_log}".lower()
    if (type(exc).__name__ == "AuthenticationError" or "invalidauthtoken" in lowered
            or "unauthenticated" in lowered or "authentication token" in lowered):
        return (f"ray: the cluster at {addr} uses token authentication and refused this driver: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to that cluster's token")
    if "version mismatch" in lowered or "python version" in lowered:
        first = next((ln.strip() for ln in text.splitlines() if "ersion" in ln), text[:200])
        return f"ray: cannot join the cluster at {addr}: {first[:300]}"
    if isinstance(exc, ConnectionError | TimeoutError) or "connect" in lowered or "timed out" in lowered:
        return (f"ray: no Ray cluster answers at {addr} (is `ray start --head` running there? "
                "check --ray-address / RAY_ADDRESS)")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"ray: cannot join the cluster at {addr}: {type(exc).__name__}: {first[:300]}"


def fit_concurrency(stage: str, want: int, num_cpus: float, num_gpus: float, quiet: bool = False) -> int:
    """How many actors of this shape the cluster can hold; errors when not even one fits, since a
    request Ray can never satisfy would hang forever instead of failing."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if num_gpus > 0 and gpus < num_gpus:
        raise UserError(
            f"{stage}: needs {num_gpus:g} GPU per worker but the Ray cluster has {gpus:g}; "
            f"set {stage}.resources.num_gpus=0 to run on CPU"
        )
    if num_cpus > cpus:
        raise UserError(f"{stage}: needs {num_cpus:g} CPUs per worker but the Ray cluster has {cpus:g}")
    limits = [want]
    if num_cpus > 0:
        limits.append(int(cpus // num_cpus))
    if num_gpus > 0:
        limits.append(int(gpus // num_gpus))
    n = max(1, min(limits))
    if n < want and not quiet:
        log.warning("%s: cluster fits %d of %d requested workers", stage, n, want)
    return n


def remote_task(fn: Callable[..., Any], num_cpus: float = 1, max_retries: int = 2) -> _EnvTask:
    """`fn` as a Ray task that carries the worker environment (see `worker_env`): a task on a node
    without the driver's credentials could not read the input or OUT. Call it as `task.remote(*args)`."""
    import ray

    call = ray.remote(_call_with_env).options(num_cpus=num_cpus, max_retries=max_retries, **with_worker_env({}))
    return _EnvTask(call, fn, worker_env()[1])


def remote_actor(cls: type, options: dict[str, Any], config_json: str = "{}") -> _EnvActorClass:
    """`cls` as a Ray actor class whose every instance (and every restart of one) gets the worker
    environment: plain variables in its runtime_env, secret ones, with the variables the config names
    (`instruct.openai.api_key_env`), as a constructor argument. Create actors with `.remote(*args)`."""
    import ray

    names = env_names(json.loads(config_json))
    actor = ray.remote(_env_subclass(cls)).options(**with_worker_env(options, names))
    return _EnvActorClass(actor, worker_env(names)[1])


def worker_env(names: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) variables a worker on another node needs: EDITGEN_*, the object-store client
    variables (AWS_*, ...) and the variables named in `names`. Secret ones (pipeline.redact.is_secret_env,
    and every variable the config names) must never enter a runtime_env: Ray writes runtime_envs in clear
    text into its session logs on every node. They travel as call arguments, in memory only."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith("EDITGEN_")}
    forwarded.update(store_env())
    named = {k: os.environ[k] for k in names if k in os.environ}
    plain = {k: v for k, v in forwarded.items() if k not in named and not is_secret_env(k, v)}
    secret = {k: v for k, v in {**forwarded, **named}.items() if k not in plain}
    return plain, secret


def with_worker_env(options: dict[str, Any], names: Iterable[str] = ()) -> dict[str, Any]:
    """Actor or task options whose runtime_env carries the worker environment's plain variables (regions,
    endpoints, fault hooks), never a secret one. A stage's own runtime_env values win."""
    env_vars = worker_env(names)[0]
    if not env_vars:
        return options
    runtime_env = dict(options.pop("runtime_env", {}) or {})
    runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
    return {**options, "runtime_env": runtime_env}


#: Names of the secret variables `apply_worker_env` set in this (worker) process.
_applied: set[str] = set()


def apply_worker_env(secrets: dict[str, str]) -> None:
    """On a worker, before anything touches storage or an API: set the driver's secret variables (received
    in memory), drop those an earlier call set that this one does not carry (a worker process is reused,
    and must hold exactly its driver's credentials), and redact them from every log record."""
    for name in _applied - secrets.keys():
        os.environ.pop(name, None)
    os.environ.update(secrets)
    _applied.clear()
    _applied.update(secrets)
    register_secrets(secrets.values())
    install_log_redaction()


def _call_with_env(secrets: dict[str, str], fn: Callable[..., Any], *args: Any) -> Any:
    apply_worker_env(secrets)
    return fn(*args)


@dataclass(frozen=True)
class _EnvTask:
    """A remote function that hands the secret variables to every call."""

    call: Any
    fn: Callable[..., Any]
    secrets: dict[str, str]

    def remote(self, *args: Any) -> Any:
        return self.call.remote(self.secrets, self.fn, *args)


@dataclass(frozen=True)
class _EnvActorClass:
    """An actor class that hands the secret variables to every constructor call."""

    actor: Any
    secrets: dict[str, str]

    def remote(self, *args: Any) -> Any:
        return self.actor.remote(self.secrets, *args)


@functools.cache
def _env_subclass(cls: type) -> type:
    """`cls` whose constructor first applies the secret variables it is given. Defined here, not importable
    by name, so Ray ships it by value (and reports it under `cls`'s name)."""

    class WithEnv(cls):  # type: ignore[valid-type, misc]
        def __init__(self, secrets: dict[str, str], *args: Any, **kwargs: Any) -> None:
            apply_worker_env(secrets)
            super().__init__(*args, **kwargs)

    WithEnv.__name__ = cls.__name__
    return WithEnv
