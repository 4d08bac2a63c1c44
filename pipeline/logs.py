"""Logging: a log file per run under OUT/logs/, and concise console output.

No secret reaches either: every record is redacted when it is made (pipeline.redact: URL credentials,
secret parameters, the values of the secret variables forwarded to workers), whatever logger made it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rich.logging import RichHandler

from editgen.pipeline.ray_runtime import route_ray_output, worker_env
from editgen.pipeline.redact import install_log_redaction, register_secrets
from editgen.pipeline.storage import Storage

FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """Logs to a local file; for object-store outputs the file is uploaded to OUT/logs at the end."""

    def __init__(self, level: str = "INFO", console: bool = True, console_level: str = "INFO") -> None:
        register_secrets(worker_env()[1].values())  # the credentials this run forwards to its workers
        install_log_redaction()
        self.logger = logging.getLogger("editgen")
        self.logger.setLevel(level.upper())
        self.logger.propagate = False
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
        # Unique per run: two runs in the same second (or a refused second driver) never share a file.
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        self.name = f"run-{stamp}.{int(now * 1e6) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}.log"
        self._tmp = Path(tempfile.mkdtemp(prefix="editgen-log-")) / self.name
        self.file_handler = logging.FileHandler(self._tmp, encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter(FMT))
        self.logger.addHandler(self.file_handler)
        if console:
            ch = RichHandler(show_path=False, show_time=False, rich_tracebacks=False, markup=False)
            ch.setLevel(console_level)
            self.logger.addHandler(ch)

    def attach(self, storage: Storage) -> None:
        """Once OUT is known to be writable: local outputs log straight into OUT/logs/ (so a killed
        run still leaves its log); object-store outputs get the file uploaded by `publish`."""
        if not storage.local:
            return
        self.file_handler.flush()
        target = Path(storage.path("logs", self.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self._tmp.read_bytes())
        self.logger.removeHandler(self.file_handler)
        self.file_handler.close()
        self._tmp = target
        self.file_handler = logging.FileHandler(target, encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter(FMT))
        self.logger.addHandler(self.file_handler)
        self._attached = True

    def publish(self, storage: Storage) -> str | None:
        """Copy the log into OUT/logs/ (atomic write); returns its path, None if OUT is unwritable."""
        self.file_handler.flush()
        if getattr(self, "_attached", False):
            return str(self._tmp)
        try:
            storage.write_bytes(self._tmp.read_bytes(), "logs", self.name)
        except Exception:  # noqa: BLE001 - a log copy must never mask the run's own error
            return None
        return storage.path("logs", self.name)


class RunFileHandler(logging.Handler):
    """Hands a record to the current run's log file (the "editgen" logger's file handlers, whichever RunLog
    made them), never to a console: where Ray's own output goes under `ray_output_to_run_log`."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger("editgen").handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


#: The logger the lines written to file descriptor 2 are recorded under in the run log.
NATIVE_LOGGER = "stderr"


@contextlib.contextmanager
def ray_output_to_run_log() -> Iterator[None]:
    """For `editgen run`: Ray's own output (its Python loggers, the worker and raylet lines it forwards, what
    its C++ core writes to fd 2) goes to the run log, so the terminal holds the progress display and
    editgen's own messages (a worker error that matters reaches the user as editgen's one-line failure)."""
    handler = RunFileHandler()
    with route_ray_output(handler), native_stderr_to(handler):
        yield


@contextlib.contextmanager
def native_stderr_to(handler: logging.Handler, poll_s: float = 0.2) -> Iterator[None]:
    """While active, file descriptor 2 (what native code such as Ray's C++ core writes straight to it) is a
    temporary file whose lines a thread hands to `handler`; `sys.stderr`, Python's stderr, stays the
    terminal (a duplicate of the old fd 2). A file, not a pipe: a writer never blocks, whatever the reader
    does. Undone at the end, after the last line is read."""
    logger = logging.getLogger(NATIVE_LOGGER)
    logger.handlers, logger.propagate = [handler], False
    saved = sys.stderr
    try:
        saved.flush()
        terminal = os.dup(2)
    except (OSError, AttributeError):  # no stderr at all (a daemon): nothing to keep apart
        yield
        return
    fd, path = tempfile.mkstemp(prefix="editgen-stderr-")
    writer, reader = os.open(path, os.O_WRONLY | os.O_APPEND), os.open(path, os.O_RDONLY)
    os.close(fd)
    os.unlink(path)
    sys.stderr = open(terminal, "w", buffering=1, encoding=getattr(saved, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=False)
    os.dup2(writer, 2)
    os.close(writer)
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(reader, logger, stop, poll_s), name="editgen-stderr", daemon=True)
    tail.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        sys.stderr = saved
        stop.set()
        tail.join(timeout=10)
        os.close(reader)
        os.close(terminal)


def _tail(fd: int, logger: logging.Logger, stop: threading.Event, poll_s: float) -> None:
    """Lines appended to `fd` -> `logger`, until `stop` is set and everything written is read."""
    pending = b""
    while True:
        stopping = stop.is_set()
        chunk = os.read(fd, 1 << 16)
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    logger.warning("%s", line.decode("utf-8", errors="replace").rstrip())
            continue
        if stopping:
            break
        stop.wait(poll_s)
    if pending.strip():
        logger.warning("%s", pending.decode("utf-8", errors="replace").rstrip())
