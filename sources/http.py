"""Downloading one image per URL over HTTP(S), politely and with hard limits (the fetch stage's network
half; `sources.image` is the other).

Behaviour follows img2dataset's downloader, rebuilt on requests (img2dataset itself cannot be installed
beside this stack, docs/fetch.md): a user agent that names the tool, X-Robots-Tag opt-outs honoured for
every crawler or for our token, retries with backoff on connection errors, timeouts, 5xx and 429 (never
on other 4xx). Beyond it: bodies are streamed and cut at `max_bytes`; a whole attempt (DNS, connect,
TLS, headers, body, every redirect hop) ends by `max_seconds` however slowly the server drips; redirects
are followed by hand so every hop's URL is checked; and with `block_private_addresses` every address a
connection goes to is checked (`sources.netguard`, `sources.addresses`). One `Fetcher` (one
requests.Session, its connection pool and resolver pool sized to the worker's threads) per worker;
`fetch` is safe to call from many threads.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from editgen.pipeline.settings.fetch import FetchConfig
from editgen.sources.addresses import BlockedAddress
from editgen.sources.netguard import ConnectPolicy, GuardedAdapter, deadline_scope

BAD_URL = "fetch_bad_url"
HTTP_ERROR = "fetch_http_error"
TIMEOUT = "fetch_timeout"
CONNECTION = "fetch_connection_error"
NOT_IMAGE = "fetch_not_image"
TOO_LARGE = "fetch_too_large"
OPTED_OUT = "fetch_opted_out"
DECODE_ERROR = "fetch_decode_error"
#: Content types that may still hold an image (many servers label images this way); anything else that
#: is not image/* (text/html error pages, JSON) is fetch_not_image before the body is read.
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/binary",
                     "application/x-binary", "application/unknown"})
CHUNK = 64 * 1024
#: A numeric Retry-After (429 / 503) is honoured up to this many seconds.
MAX_RETRY_AFTER = 30.0
MAX_ERROR_CHARS = 300


@dataclass
class Download:
    """What one URL gave: the body, or a drop reason with its detail; `unreachable` = no connection at
    all (refused, DNS, connect timeout), the only failures the systemic check counts."""

    url: str
    data: bytes | None = None
    status: int | None = None
    reason: str | None = None
    error: str | None = None
    retry: bool = False
    unreachable: bool = False
    retry_after: float | None = None
    attempts: int = 0
    nbytes: int = 0

    def fail(self, reason: str, error: str, *, retry: bool = False, unreachable: bool = False) -> Download:
        self.reason, self.error = reason, error[:MAX_ERROR_CHARS]
        self.retry, self.unreachable, self.data = retry, unreachable, None
        return self


def check_url(url: object) -> str | None:
    """Why `url` cannot be fetched (missing, not http(s), no host), or None."""
    if not isinstance(url, str) or not url.strip():
        return "missing URL"
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL (scheme {parts.scheme!r})"
    if not parts.hostname:
        return "URL has no host"
    return None


def opted_out(values: list[str], token: str, directives: set[str]) -> bool:
    """img2dataset's X-Robots-Tag rule: each header value is `directive, ...` (every crawler) or
    `useragent: directive, ...` (that crawler only); any disallowed directive for us opts the image out."""
    for value in values:
        head, sep, tail = value.partition(":")
        scope = head.strip().lower() if sep else None
        words = {w.strip().lower() for w in (tail if sep else head).split(",")}
        if (scope is None or scope == token) and words & directives:
            return True
    return False


def backoff_delay(url: str, attempt: int, base: float) -> float:
    """base * 2**attempt, jittered by a factor in [0.5, 1.5) drawn from (url, attempt): retries of many
    rows spread out, and a rerun waits exactly as long."""
    digest = hashlib.sha256(f"{url}\n{attempt}".encode()).digest()
    return base * 2**attempt * (0.5 + int.from_bytes(digest[:8], "big") / 2**64)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, min(float(value), MAX_RETRY_AFTER)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff applies


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """No cookies: a row's download never depends on which rows the session fetched before."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:  # type: ignore[override]
        return False


class Fetcher:
    """One per worker: a requests.Session shared by the worker's download threads."""

    def __init__(self, settings: FetchConfig) -> None:
        self.s = settings
        self.directives = {d.lower() for d in settings.disallowed_header_directives}
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.5"})
        self.session.cookies.set_policy(_NoCookies())
        self.session.trust_env = False  # no env proxy (it would resolve names past the guard), no .netrc logins
        self.policy = ConnectPolicy(settings.block_private_addresses, settings.threads)
        adapter = GuardedAdapter(self.policy, settings.threads)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()
        self.policy.close()

    def fetch(self, url: str) -> Download:
        """The URL's body after up to `retries` retries of transient failures, or why not."""
        bad = check_url(url)
        if bad:
            return Download(str(url) if url is not None else "").fail(BAD_URL, bad)
        url = url.strip()
        for attempt in range(self.s.retries + 1):
            d = self._attempt(url)
            d.attempts = attempt + 1
            if not d.retry or attempt == self.s.retries:
                return d
            time.sleep(max(backoff_delay(url, attempt, self.s.backoff), d.retry_after or 0.0))
        raise AssertionError("unreachable")

    def _attempt(self, url: str) -> Download:
        """One try within one deadline: every socket call of every hop is bounded by it (sources.netguard)."""
        deadline = time.monotonic() + self.s.max_seconds
        with deadline_scope(deadline):
            d = self._attempt_within(url, deadline)
        if d.reason in (TIMEOUT, CONNECTION) and time.monotonic() >= deadline:
            d.fail(TIMEOUT, f"request took over fetch.max_seconds={self.s.max_seconds:g} ({d.error})",
                   retry=True, unreachable=d.unreachable)
        return d

    def _attempt_within(self, url: str, deadline: float) -> Download:
        d = Download(url)
        try:
            resp = self._get(url, deadline)
        except Exception as exc:  # noqa: BLE001 - every failure becomes this row's reason
            return _failed(d, exc, responded=False)
        with resp:
            d.status = resp.status_code
            try:
                self._read(resp, d, deadline)
            except Exception as exc:  # noqa: BLE001
                return _failed(d, exc, responded=True)
        return d

    def _get(self, url: str, deadline: float) -> requests.Response:
        """GET with redirects followed by hand, each hop's URL checked before it is requested (its address
        is checked by the connection, sources.netguard)."""
        for _ in range(self.s.max_redirects + 1):
            if time.monotonic() > deadline:
                raise requests.exceptions.Timeout(f"redirects took over fetch.max_seconds={self.s.max_seconds:g}")
            resp = self.session.get(url, stream=True, timeout=self.s.timeout, allow_redirects=False)
            if not resp.is_redirect:
                return resp
            resp.close()
            url = requests.utils.requote_uri(urljoin(url, resp.headers["location"]))
            bad = check_url(url)
            if bad:
                raise requests.exceptions.InvalidURL(f"redirect to a bad URL: {bad}")
        raise requests.exceptions.TooManyRedirects(f"more than {self.s.max_redirects} redirects")

    def _read(self, resp: requests.Response, d: Download, deadline: float) -> None:
        """Status, opt-out and content type from the headers, then the body, streamed within the limits."""
        if resp.status_code >= 300:
            transient = resp.status_code >= 500 or resp.status_code == 429
            d.retry_after = _retry_after(resp.headers.get("Retry-After")) if transient else None
            d.fail(HTTP_ERROR, f"HTTP {resp.status_code} {resp.reason or ''}".strip(), retry=transient)
            return
        if opted_out(resp.raw.headers.getlist("X-Robots-Tag"), self.s.robots_name, self.directives):
            d.fail(OPTED_OUT, "X-Robots-Tag: " + "; ".join(resp.raw.headers.getlist("X-Robots-Tag")))
            return
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/") and ctype not in UNTYPED:
            d.fail(NOT_IMAGE, f"content type {ctype}")
            return
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.s.max_bytes:
            d.fail(TOO_LARGE, f"Content-Length {length} > fetch.max_bytes={self.s.max_bytes}")
            return
        buf = bytearray()
        for chunk in resp.iter_content(CHUNK):
            buf += chunk
            d.nbytes = len(buf)
            if len(buf) > self.s.max_bytes:
                d.fail(TOO_LARGE, f"body over fetch.max_bytes={self.s.max_bytes}")
                return
            if time.monotonic() > deadline:
                d.fail(TIMEOUT, f"download took over fetch.max_seconds={self.s.max_seconds:g}", retry=True)
                return
        d.data = bytes(buf)


def _failed(d: Download, exc: BaseException, responded: bool) -> Download:
    """Map an exception to this row's reason: which failures are transient (retried) and which mean
    there was no connection at all (`unreachable`: counted by the systemic check)."""
    exc_ = requests.exceptions
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if isinstance(exc, exc_.ConnectTimeout):
        return d.fail(TIMEOUT, text, retry=True, unreachable=not responded)
    if isinstance(exc, exc_.Timeout) or (isinstance(exc, exc_.ConnectionError) and exc.args
                                         and isinstance(exc.args[0], ReadTimeoutError)):
        return d.fail(TIMEOUT, text, retry=True)  # iter_content reports a read timeout as ConnectionError
    if isinstance(exc, exc_.TooManyRedirects):
        return d.fail(HTTP_ERROR, text)
    if isinstance(exc, BlockedAddress | exc_.InvalidURL | exc_.InvalidSchema | exc_.MissingSchema
                  | exc_.URLRequired | UnicodeError):
        return d.fail(BAD_URL, text)
    if isinstance(exc, exc_.ContentDecodingError):
        return d.fail(DECODE_ERROR, text)
    if isinstance(exc, exc_.SSLError):
        return d.fail(CONNECTION, text)  # the host's certificate: retrying will not change it
    if isinstance(exc, exc_.ConnectionError) and not responded:
        return d.fail(CONNECTION, text, retry=True, unreachable=True)
    if isinstance(exc, exc_.RequestException | OSError):
        return d.fail(CONNECTION, text, retry=True)  # reset or cut off mid-body
    return d.fail(BAD_URL if isinstance(exc, ValueError) else CONNECTION, text)
