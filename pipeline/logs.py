"""Logging: a log file per run under OUT/logs/, and concise console output.

No secret reaches either: every record is redacted when it is made (pipeline.redact: URL credentials,
secret parameters, the values of the secret variables forwarded to workers), whatever logger made it.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path

from rich.logging import RichHandler

from pipeline.ray_runtime import worker_env
from pipeline.redact import install_log_redaction, register_secrets
from pipeline.storage import Storage

FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """Logs to a local file; for object-store outputs the file is uploaded to OUT/logs at the end."""

    def __init__(self, level: str = "INFO", console: bool = True) -> None:
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
            ch.setLevel(logging.INFO)
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
