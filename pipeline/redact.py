"""What a secret looks like, and how editgen blanks one out of everything it writes.

One place decides it for every writer: config keys (`api_key`, `HF_TOKEN`), environment variables
(`AWS_SECRET_ACCESS_KEY`, `EDITGEN_STORAGE_OPTIONS`), and URLs: the userinfo of `scheme://user:pass@host`
and the values of secret-looking query or fragment parameters (`token`, `api_key`, `sig`,
`X-Amz-Signature`, ...). A redacted URL keeps everything else, parameter names included, so a published
URL still says where the data came from; the value becomes `***`.

Inputs are READ with their secrets (ingest opens the real URL, fetch downloads with it); only what is
written (OUT, logs, status, shards, exports, the CLI's lines) goes through `redact_url` / `redact_text`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "***"

#: Config keys whose values are secrets, matched as whole words of the key (HF_TOKEN, api_key,
#: aws_secret_access_key), so `max_tokens` stays visible; a key ending in `_env` holds the NAME of an
#: environment variable (instruct.openai.api_key_env), not the secret.
SECRET_KEY_PARTS = (
    r"api[_-]?key", r"access[_-]?key", r"private[_-]?key", "token", "secret", "passwords?", "passwd",
    "authorization", "credentials?",
)
_SECRET_KEY = re.compile(r"(?:^|[^a-z0-9])(?:" + "|".join(SECRET_KEY_PARTS) + r")(?:$|[^a-z0-9])")

#: One word of a URL parameter or environment variable name that marks its value secret: keys and tokens
#: of any kind (apikey, access_token, X-Amz-Security-Token), signatures (sig, X-Amz-Signature), signing
#: credentials (X-Amz-Credential), passwords, auth..., sessions, cookies.
_SECRET_WORD = re.compile(
    r"[a-z]*(?:key|token|secret|passwd|password)|pass|pwd|auth[a-z]*|sig|signature|credentials?|"
    r"session(?:id)?|cookie|jwt|sas"
)
#: Whole parameter names that are secret although no word of them says so (signed-URL schemes).
_SECRET_PARAMS = frozenset({"googleaccessid", "connectionstring"})
#: Environment variables that carry secrets under a name without a secret word, and ones whose name has
#: one but whose value is no secret (the shell's working directory).
SECRET_ENV_NAMES = frozenset({"EDITGEN_STORAGE_OPTIONS"})
PLAIN_ENV_NAMES = frozenset({"PWD", "OLDPWD"})

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
#: `scheme://` then the userinfo (greedy up to the last @ before the path: a password may hold a raw @).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)()")
#: A URL inside free text (log lines, exception messages).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
#: A `name=value` parameter inside free text, after ? & ; or # (requests prints `url: /x?token=...`).
_PARAM_IN_TEXT = re.compile(r"(?<=[?&;#])([A-Za-z0-9_.\-\[\]]+)=([^&;\s'\"<>#]*)")
#: Known secret values (the forwarded environment's) shorter than this are not searched for in text:
#: a 4-character value would blank out ordinary words.
MIN_KNOWN_SECRET = 8
_known: set[str] = set()


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(name)]


def is_secret_key(key: str) -> bool:
    """A config key whose value must not be written (config.yaml, logs)."""
    k = key.lower()
    return not k.endswith("_env") and _SECRET_KEY.search(k) is not None


def is_secret_param(name: str) -> bool:
    """A URL query/fragment parameter whose value is a credential (case-insensitive)."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return flat in _SECRET_PARAMS or any(_SECRET_WORD.fullmatch(w) for w in [flat, *_words(name)])


def is_secret_env(name: str, value: str = "") -> bool:
    """An environment variable that must reach workers only in memory: a secret word in its name
    (AWS_SECRET_ACCESS_KEY, HF_TOKEN, AZURE_STORAGE_CONNECTION_STRING), a known secret-holding name, or a
    value holding a URL with credentials (HTTPS_PROXY=http://user:pass@proxy)."""
    if name in SECRET_ENV_NAMES or "CONNECTION_STRING" in name.upper():
        return True
    if name in PLAIN_ENV_NAMES:
        return False
    if any(_SECRET_WORD.fullmatch(w) for w in name.lower().split("_") if w):
        return True
    return redact_text(value, known=False) != value


def env_names(config: Any) -> list[str]:
    """The environment variables a config names (string values of keys ending in `_env`, such as
    instruct.openai.api_key_env): they hold secrets, which is why the config holds only their names."""
    found: list[str] = []
    if isinstance(config, dict):
        for k, v in config.items():
            if str(k).endswith("_env") and isinstance(v, str) and v:
                found.append(v)
            else:
                found += env_names(v)
    elif isinstance(config, list):
        for v in config:
            found += env_names(v)
    return found


def _redact_params(part: str) -> str:
    """`a=1&token=x` -> `a=1&token=***` (names and order kept, only secret values replaced)."""
    out = []
    for item in re.split(r"([&;])", part):
        name, eq, value = item.partition("=")
        if eq and value and value != REDACTED and is_secret_param(unquote_plus(name)):
            item = f"{name}={REDACTED}"
        out.append(item)
    return "".join(out)


def _split(url: str) -> tuple[str, str, str, str | None, str | None]:
    """(scheme://, userinfo@, host and path, query or None, fragment or None), nothing decoded."""
    m = _USERINFO.match(url) or _SCHEME.match(url)
    head, userinfo = (m.group(1), m.group(2) or "") if m else ("", "")
    rest = url[m.end():] if m else url
    rest, hash_, fragment = rest.partition("#")
    rest, mark, query = rest.partition("?")
    return head, userinfo, rest, query if mark else None, fragment if hash_ else None


def redact_url(url: str) -> str:
    """`url` with its userinfo and secret parameter values replaced by `***`; everything else as it was.
    Idempotent, and the identity on a URL without credentials (the common case costs a substring test)."""
    if "@" not in url and "=" not in url:
        return url
    head, userinfo, rest, query, fragment = _split(url)
    out = head + (f"{REDACTED}@" if userinfo else "") + rest
    if query is not None:
        out += "?" + _redact_params(query)
    if fragment is not None:
        out += "#" + _redact_params(fragment)
    return out


def has_redaction(url: str) -> bool:
    """Whether a stored URL lost credentials to `redact_url` (so the real one must be read from the input)."""
    if REDACTED not in url:
        return False
    _, userinfo, _, query, fragment = _split(url)
    if userinfo == f"{REDACTED}@":
        return True
    for part in (query, fragment):
        for item in re.split(r"[&;]", part or ""):
            name, _, value = item.partition("=")
            if value == REDACTED and is_secret_param(unquote_plus(name)):
                return True
    return False


def redact_text(text: str, known: bool = True) -> str:
    """Free text (a log line, an exception message) with every URL redacted, every secret `name=value`
    parameter blanked (error messages often print only a URL's path and query), and every known secret
    value (the forwarded environment's) replaced."""
    if not text:
        return text
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if "=" in text:
        text = _PARAM_IN_TEXT.sub(
            lambda m: f"{m.group(1)}={REDACTED}" if m.group(2) and is_secret_param(unquote_plus(m.group(1)))
            else m.group(0), text)
    if known:
        for value in sorted(_known, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
    return text


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values (an environment's) so `redact_text` blanks them wherever they show up; a JSON
    object's values under secret keys count too (EDITGEN_STORAGE_OPTIONS). A path (a credentials file's,
    GOOGLE_APPLICATION_CREDENTIALS) is not the secret, and blanking it would hide which file an error
    names."""
    for value in values:
        for v in [value, *_json_secrets(value)]:
            if isinstance(v, str) and len(v) >= MIN_KNOWN_SECRET and not v.startswith(("/", "~", "./")):
                _known.add(v)


def _json_secrets(value: str) -> list[str]:
    if not value.lstrip().startswith("{"):
        return []
    try:
        obj = json.loads(value)
    except ValueError:
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and (is_secret_key(str(k)) or is_secret_param(str(k))):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(obj)
    return found


class _RedactingFactory:
    """Log record factory: every record's message (and traceback text) redacted when it is made, so no
    handler, file or console, of any logger ever sees a secret."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return record


def install_log_redaction() -> None:
    """Redact every log record of this process from now on (idempotent): the driver's run log and console,
    and on workers whatever Ray writes to its session logs from Python logging."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
