"""All file I/O goes through fsspec, so OUT and inputs can be local paths or object-store URLs.

Writes are atomic: on local disks a temp file is renamed into place (rename is atomic within a
directory); on object stores a single PUT is already all-or-nothing, so the object is written directly.
A reader therefore never sees half a partition, whatever kills the writer.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputError, UnsafePathError

TMP_MARK = ".tmp-"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic parquet encoding: same table, same bytes (no timestamps in the file)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


@dataclass
class Storage:
    """A root location (local dir or URL) with atomic writes and path helpers."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, root = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.root_path = root.rstrip("/") or "/"
        self.local = is_local(self.fs)

    def path(self, *parts: str) -> str:
        """Root joined with relative parts; a part that could leave the root (absolute, `..`, NUL) is
        refused, whatever wrote it (a completion record, a manifest, a config value)."""
        for part in parts:
            if not isinstance(part, str) or "\x00" in part or part.startswith("/") or ".." in part.split("/"):
                raise UnsafePathError(f"{part!r}: refusing a path outside the output directory {self.root}")
        return posixpath.join(self.root_path, *parts)

    def url(self, *parts: str) -> str:
        """A full URL (with protocol) usable by another process/node."""
        return self.fs.unstrip_protocol(self.path(*parts)) if not self.local else self.path(*parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def makedirs(self, *parts: str) -> None:
        if self.local:
            self.fs.makedirs(self.path(*parts), exist_ok=True)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    def listdir(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def remove(self, *parts: str) -> None:
        p = self.path(*parts)
        try:
            if self.fs.exists(p):
                self.fs.rm(p, recursive=True)
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, p, "removing")) from None

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic write; disk-full and permission errors become one clear OutputError."""
        final = self.path(*parts)
        try:
            if self.local:
                parent = posixpath.dirname(final)
                os.makedirs(parent, exist_ok=True)
                tmp = posixpath.join(parent, f"{TMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(final)}")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, final)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                with self.fs.open(final, "wb") as f:
                    f.write(data)
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, final)) from None

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode("utf-8"), *parts)

    def write_table(self, table: pa.Table, *parts: str) -> tuple[str, int]:
        """Write a parquet partition atomically; returns (sha256, bytes)."""
        data = table_to_parquet_bytes(table)
        self.write_bytes(data, *parts)
        return sha256_bytes(data), len(data)

    def read_table(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(*parts), "rb") as f:
            return pq.read_table(f, columns=columns)

    def clean_temp(self, *parts: str) -> int:
        """Remove temp files a killed writer left behind; returns how many."""
        if not self.local:
            return 0
        n = 0
        base = self.path(*parts)
        if not os.path.isdir(base):
            return 0
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_MARK):
                    try:
                        os.unlink(os.path.join(dirpath, name))
                    except OSError as exc:
                        raise OutputError(_describe_os_error(exc, os.path.join(dirpath, name), "removing")) from None
                    n += 1
        return n

    def check_writable(self) -> None:
        """Fail early, before any work, if OUT cannot be written."""
        probe = self.path(f"{TMP_MARK}probe-{uuid.uuid4().hex}")
        try:
            if self.local:
                os.makedirs(self.root_path, exist_ok=True)
                with open(probe, "wb") as f:
                    f.write(b"x")
                os.unlink(probe)
            else:
                self.fs.pipe(probe, b"x")
                self.fs.rm(probe)
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, self.root_path)) from None


def _describe_os_error(exc: OSError, path: str, doing: str = "writing") -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: no space left on device while {doing} output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: output location is not writable ({exc.strerror})"
    verb = "write" if doing == "writing" else "remove"
    return f"{path}: cannot {verb} output ({exc.strerror or exc})"
