"""All file I/O goes through fsspec, so OUT and inputs can be local paths or object-store URLs.

Writes are atomic: on local disks a temp file is renamed into place (rename is atomic within a
directory); on object stores a single PUT is already all-or-nothing, so the object is written directly.
A reader therefore never sees half a partition, whatever kills the writer.

Reads are fresh: fsspec filesystems (s3fs, gcsfs, ...) cache directory listings per process, and a
listing cached before a Ray worker on another node wrote its partition hides that partition from every
later `exists`/`ls`/`size` of the driver. Every Storage opens its filesystem with the listings cache
off and drops whatever is cached before each metadata call, so no caller can decide from stale state.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from editgen.pipeline.errors import OutputError, UnsafePathError

TMP_MARK = ".tmp-"


#: Protocol -> what to install when fsspec has no implementation for it.
_EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
           "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


#: Environment variables that configure object-store clients (credentials, endpoints, regions,
#: profiles, proxies). They are forwarded to every Ray worker on every node (pipeline.ray_runtime) and
#: never written anywhere under OUT.
STORE_ENV_PREFIXES = ("AWS_", "BOTO_", "GOOGLE_", "GCS_", "GCSFS_", "AZURE_", "FSSPEC_", "HF_", "S3_")
STORE_ENV_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                   "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
#: JSON object of fsspec storage options applied to every editgen command (merged under --storage-option).
OPTIONS_ENV = "EDITGEN_STORAGE_OPTIONS"


def store_env() -> dict[str, str]:
    """The object-store client variables set in this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES) or k in STORE_ENV_NAMES}


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """`--storage-option key=value` items (values YAML-parsed, dotted keys nest: client_kwargs.region_name=x)
    over the JSON object in $EDITGEN_STORAGE_OPTIONS."""
    import json

    import yaml

    from editgen.pipeline import safe_yaml

    options: dict[str, Any] = {}
    raw_env = os.environ.get(OPTIONS_ENV, "").strip()
    if raw_env:
        try:
            options = json.loads(raw_env)
        except ValueError:
            raise OutputError(f"${OPTIONS_ENV}: expected a JSON object of fsspec storage options") from None
        if not isinstance(options, dict):
            raise OutputError(f"${OPTIONS_ENV}: expected a JSON object of fsspec storage options")
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OutputError(f"--storage-option {item!r}: expected KEY=VALUE (e.g. anon=false)")
        node = options
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OutputError(f"--storage-option {item!r}: {part} is already a value, not a mapping")
        try:
            node[leaf] = safe_yaml.load(value) if value.strip() else ""
        except safe_yaml.YamlBombError as exc:
            raise OutputError(f"--storage-option {key.strip()}: {exc.problem}") from None
        except yaml.YAMLError:
            node[leaf] = value
    return options


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def open_filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a URL or local path, with directory-listing caches disabled.

    A protocol whose fsspec implementation is not installed is one line naming the package to install.
    """
    options = dict(options or {})
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol not in (None, "file", "local"):
        options.setdefault("use_listings_cache", False)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        extra = _EXTRAS.get(protocol or "", f"the fsspec implementation for {protocol}://")
        raise OutputError(f"{url}: {protocol}:// needs {extra}; install it "
                          f"(from an editgen checkout: pip install -e '.[s3]' for s3://)") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise OutputError(f"{url}: unknown storage protocol {protocol!r}") from None
        raise


def arrow_owned(data: bytes) -> pa.Buffer:
    """`data` copied into memory arrow owns. Arrow's reader threads drop their references to the source
    buffer late; when the last one is a Python bytes object and it is dropped on an arrow thread while the
    interpreter exits, the process aborts ("terminate called without an active exception": the buffer's
    destructor needs the GIL during finalization; 1 run in 20-150 of any command that reads a partition).
    An arrow-owned copy needs no Python to free."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()


def parquet_file(data: bytes) -> pq.ParquetFile:
    """A parquet reader over bytes already read (and checked), safe at exit (see `arrow_owned`)."""
    return pq.ParquetFile(pa.BufferReader(arrow_owned(data)))


def parquet_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A parquet file's table from its bytes (columns a file lacks are left out), safe at exit."""
    pf = parquet_file(data)
    names = set(pf.schema_arrow.names)
    return pf.read(columns=[c for c in columns if c in names] if columns is not None else None)


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
        self.fs, root = open_filesystem(self.root, self.storage_options)
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

    def _fresh(self) -> None:
        """Forget cached listings (another process may have written since): see the module doc."""
        if not self.local:
            self.fs.invalidate_cache()

    def exists(self, *parts: str) -> bool:
        self._fresh()
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
        self._fresh()
        return int(self.fs.size(self.path(*parts)))

    def info(self, *parts: str) -> FileInfo:
        """Size and the store's version marker (ETag / mtime) of one file, read fresh."""
        self._fresh()
        return _file_info(self.fs.info(self.path(*parts)))

    def list_info(self, *parts: str) -> dict[str, FileInfo]:
        """{name: FileInfo} of the files directly in a folder, from one (fresh) listing."""
        p = self.path(*parts)
        self._fresh()
        if not self.fs.exists(p):
            return {}
        out = {}
        for raw in self.fs.ls(p, detail=True, refresh=True):
            if raw.get("type") == "file":
                out[posixpath.basename(raw["name"].rstrip("/"))] = _file_info(raw)
        return out

    def read_many(self, paths: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], bytes]]:
        """[(parts, bytes)] for files that exist, read concurrently on object stores (one request each,
        in flight together) and in order locally; a file that vanished is left out."""
        if not paths:
            return []
        if self.local:
            out = []
            for parts in paths:
                try:
                    out.append((parts, self.read_bytes(*parts)))
                except FileNotFoundError:
                    continue
            return out
        full = {self.path(*parts): parts for parts in paths}
        got = self.fs.cat(list(full), on_error="omit")
        return [(parts, got[p]) for p, parts in full.items() if p in got]

    def listdir(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        self._fresh()
        if not self.fs.exists(p):
            return []
        names = (posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False, refresh=True))
        return sorted(n for n in names if n)

    def remove(self, *parts: str) -> None:
        p = self.path(*parts)
        self._fresh()
        try:
            if self.fs.exists(p):
                self.fs.rm(p, recursive=True)
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, p, "removing")) from None
        finally:
            self._fresh()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic write; disk-full and permission errors become one clear OutputError."""
        final = self.path(*parts)
        try:
            if self.local:
                _publish_local(data, final, os.replace)
            else:
                self.fs.pipe_file(final, data)
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, final)) from None
        finally:
            self._fresh()

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Write a new file only if none exists (True), else leave it alone (False), atomically.

        Local disks: a complete temp file hard-linked to the final name (link fails if it exists).
        Object stores: a conditional PUT (If-None-Match: *) where the store supports it (S3 does);
        elsewhere a best effort (check, write, read back) that the lease's heartbeat expiry backs up.
        """
        final = self.path(*parts)
        try:
            if self.local:
                return _link_exclusive(data, final)
            try:
                self.fs.pipe_file(final, data, mode="create")
                return True
            except FileExistsError:
                return False
            except TypeError:  # this fsspec implementation has no exclusive create
                if self.exists(*parts):
                    return False
                self.fs.pipe_file(final, data)
                return self.read_bytes(*parts) == data
        except FileExistsError:
            return False
        except OSError as exc:
            raise OutputError(_describe_os_error(exc, final)) from None
        finally:
            self._fresh()

    def replace_if_match(self, data: bytes, etag: str, *parts: str) -> bool | None:
        """Overwrite a file only if the store still holds the version `etag` (a conditional PUT,
        If-Match, on S3 APIs): True written, False changed or removed since; None where the store has
        no conditional overwrite (local disks, other fsspec stores): the caller must serialise itself."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        if self.local or not {"s3", "s3a"} & set(protocols):
            return None
        final = self.path(*parts)
        try:
            self.fs.pipe_file(final, data, IfMatch=f'"{etag}"')
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
            if code == "PreconditionFailed":
                return False
            if code == "NotImplemented":
                return None
            raise OutputError(_describe_os_error(exc, final)) from None
        finally:
            self._fresh()

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode("utf-8"), *parts)

    def write_table(self, table: pa.Table, *parts: str) -> tuple[str, int]:
        """Write a parquet partition atomically; returns (sha256, bytes)."""
        data = table_to_parquet_bytes(table)
        self.write_bytes(data, *parts)
        return sha256_bytes(data), len(data)

    def open(self, *parts: str, mode: str = "rb") -> Any:
        """A file object for streaming reads (large shards, parquet batches)."""
        return self.fs.open(self.path(*parts), mode)

    def read_table(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        """A parquet file, read whole and parsed from an arrow-owned copy: arrow's threads never hold a
        Python object (an fsspec file, a bytes buffer) that they could free while the process exits
        (see `arrow_owned`)."""
        return parquet_table(self.read_bytes(*parts), columns)

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

    def check_not_a_file(self, what: str = "output directory") -> None:
        """OUT (or a folder above it) that is an existing regular file is one line, not a NotADirectoryError
        traceback from whichever read or write reaches it first."""
        if self.local:
            path = os.path.abspath(self.root_path)
            while not os.path.lexists(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)
            if os.path.exists(path) and not os.path.isdir(path):
                if path == os.path.abspath(self.root_path):
                    raise OutputError(f"{self.root}: is a file, not an {what}")
                raise OutputError(f"{self.root}: cannot be an {what}: {path} is a file")
            return
        try:
            is_file = self.fs.isfile(self.root_path)
        except (OSError, ValueError):  # unreachable, forbidden, a bad bucket name: the command says so itself
            return
        if is_file:
            raise OutputError(f"{self.root}: is an object (a file), not an {what}")

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


@dataclass(frozen=True)
class FileInfo:
    """What the store says about one file: enough to tell that it changed without reading it."""

    size: int
    etag: str | None = None
    mtime: float | None = None


def _file_info(raw: dict[str, Any]) -> FileInfo:
    """FileInfo from an fsspec info/ls entry, whatever the store calls its fields."""
    tag = raw.get("ETag") or raw.get("etag") or raw.get("md5Hash") or raw.get("VersionId")
    mtime = raw.get("mtime") or raw.get("LastModified") or raw.get("last_modified") or raw.get("updated")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return FileInfo(int(raw.get("size") or 0), str(tag).strip('"') if tag else None,
                    float(mtime) if isinstance(mtime, int | float) else None)


def _publish_local(data: bytes, final: str, place: Callable[[str, str], None]) -> None:
    """Write a complete, fsynced temp file beside `final`, then `place` it there (os.replace: atomic
    overwrite; os.link: atomic create that fails if `final` exists); the temp file never outlives us."""
    parent = posixpath.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f"{TMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(final)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _link_exclusive(data: bytes, final: str) -> bool:
    try:
        _publish_local(data, final, os.link)
        return True
    except FileExistsError:
        return False


def _describe_os_error(exc: OSError, path: str, doing: str = "writing") -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: no space left on device while {doing} output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: output location is not writable ({exc.strerror})"
    verb = "write" if doing == "writing" else "remove"
    return f"{path}: cannot {verb} output ({exc.strerror or exc})"
