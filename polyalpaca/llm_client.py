"""An OpenAI-compatible chat client for translating and judging at scale.

What it adds to the ``openai`` package:

- **configuration as data** (``EndpointConfig``, the profile's ``config.Endpoint`` with the
  client's retries, timeouts and sampling): base URL, model, and the *name* of the
  environment variable that holds the API key; the key itself is read when the client is built
  and never appears in a repr, a log line, an exception message, the cache or the ledger;
- **bounded concurrency** (a thread pool of ``max_concurrency``) with **input order preserved**;
- **retries** with exponential back-off and jitter on 429, 5xx, timeouts, connection errors and
  malformed bodies, counted by us (the ``openai`` package's own retries are disabled);
- a **persistent cache** (SQLite, one row committed per reply, ``synchronous=FULL``): every reply
  received is stored under ``(key, attempt)`` where ``key`` hashes model, messages, parameters
  and prompt version, so a run killed at any point (even ``kill -9``) resumes without sending
  any request whose reply was stored;
- a **validation hook**: ``ChatRequest.validate`` checks a reply and raises ``ValueError``
  (e.g. ``InvalidReply``) to ask again; after ``max_invalid`` rejected replies the item is
  reported as failed (``ChatResult.ok`` is False), never returned as if it were good;
- a **ledger** of requests, retries, cache hits, tokens and estimated cost, writable as JSON;
- progress with plain ``tqdm`` (text, to stderr) at a low refresh rate, so executed notebooks stay readable.

Prompt templates are versioned data files (``ChatPrompt``, ``load_prompt``), shared by
``polyalpaca.translate`` and ``polyalpaca.judge``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import openai
from tqdm import tqdm

from .config import Endpoint
from .files import atomic_write_json
from .prompts import read_resource

log = logging.getLogger(__name__)

CACHE_FILENAME = "chat_cache.sqlite"
FATAL_STATUS = (401, 403, 404)  # wrong key, no access, wrong URL or model: stop the whole run
RETRYABLE_STATUS = (408, 409, 429)  # plus every 5xx


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class EndpointConfig(Endpoint):
    """An OpenAI-compatible endpoint (``config.Endpoint``: base URL, model, the environment
    variable holding the key, "" for servers that need none, and requests in flight) with the
    client's retries, timeouts and sampling; prices are USD per 1000 tokens, for cost estimates.
    ``EndpointConfig.of`` makes one from a profile's endpoint."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"
    max_retries: int = 6  # retries after the first try, for transient errors
    timeout_s: float = 60.0
    price_per_1k_input: float = 0.0
    price_per_1k_output: float = 0.0
    temperature: float = 0.0
    max_tokens: int | None = None
    backoff_base_s: float = 1.0  # first back-off; doubled per retry, with jitter
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"EndpointConfig.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"EndpointConfig.max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"EndpointConfig.timeout_s must be > 0, got {self.timeout_s}")

    @classmethod
    def of(cls, endpoint: Endpoint, **client):
        """The client's endpoint for a profile's ``endpoint`` (its base URL, model, key variable and
        concurrency), with ``client`` settings (retries, timeouts, sampling, or another model)."""
        where = {f.name: getattr(endpoint, f.name) for f in dataclasses.fields(Endpoint)}
        return cls(**{**where, **client})

    def request_params(self) -> dict[str, Any]:
        """The sampling parameters sent with every request (and hashed into the cache key)."""
        params: dict[str, Any] = {"temperature": self.temperature}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params


# --------------------------------------------------------------------------------------------
# Versioned prompt templates
# --------------------------------------------------------------------------------------------
_SECTION = re.compile(r"^\[(system|user|example|stop)\]\s*$", re.M)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class ChatPrompt:
    """A chat prompt template loaded from a data file; ``version`` is the file's stem.

    File format: lines starting with ``#`` before the first section are comments; a line
    ``[system]`` or ``[user]`` starts a section; ``{name}`` is a placeholder (any other brace
    is literal). Placeholders are filled in one pass, so values may contain braces.

    Prompts for base models, which continue a document instead of following instructions, may
    add an ``[example]`` section, filled once per worked example (``{example_source}``,
    ``{example_target}``) and joined into the ``{examples}`` placeholder, and a ``[stop]``
    section: one string a line (``\n`` written as ``\\n``) at which generation stops.
    """

    version: str
    system: str
    user: str
    path: str = ""
    example: str = ""
    stop: tuple[str, ...] = ()

    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.system)) | set(_PLACEHOLDER.findall(self.user))

    def render(self, examples: Sequence[Sequence[str]] = (), **values: str) -> list[dict[str, str]]:
        """The messages for one request; ``examples`` are (source, target) pairs for ``[example]``."""
        if self.example:
            values["examples"] = "".join(self._fill(self.example, {**values, "example_source": src,
                                                                   "example_target": tgt})
                                         for src, tgt in examples)
        messages = [{"role": "system", "content": self._fill(self.system, values)}] if self.system else []
        messages.append({"role": "user", "content": self._fill(self.user, values)})
        return messages

    def _fill(self, text: str, values: Mapping[str, str]) -> str:
        missing = set(_PLACEHOLDER.findall(text)) - values.keys()
        if missing:
            raise KeyError(f"prompt {self.path or self.version}: no value for placeholder(s) {sorted(missing)}")
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def load_prompt(name: str) -> ChatPrompt:
    """Load ``polyalpaca/resources/prompts/NAME.txt`` (or a ``.txt`` file given by path)."""
    path, text = read_resource(name, "prompts", ".txt", "prompt template")
    parts = _SECTION.split(text)
    head, sections = parts[0], dict(zip(parts[1::2], parts[2::2], strict=True))
    for lineno, line in enumerate(head.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            raise ValueError(f"{path}:{lineno}: text before the first [system]/[user] section: {line[:60]!r}")
    if "user" not in sections:
        raise ValueError(f"{path}: no [user] section")
    example = sections.get("example", "").strip("\n")
    stop = tuple(line.replace("\\n", "\n") for line in sections.get("stop", "").splitlines() if line)
    return ChatPrompt(version=path.stem, system=sections.get("system", "").strip("\n"),
                      user=sections["user"].strip("\n"), path=str(path),
                      example=example + "\n\n" if example else "", stop=stop)


# --------------------------------------------------------------------------------------------
# Requests, results, errors
# --------------------------------------------------------------------------------------------
class InvalidReply(ValueError):
    """Raised by a validator: the reply is unusable and the request should be asked again."""


class EndpointError(RuntimeError):
    """The endpoint refuses every request (wrong key, URL or model): the run stops."""


class _RequestFailed(Exception):
    """One request could not be completed after all retries (or was refused with a 4xx)."""


@dataclass
class ChatRequest:
    """One chat request. ``validate(reply)`` returns the parsed value or raises ``ValueError``.

    ``validate`` is not part of the cache key: replies are cached raw and checked again on
    every run, so a changed validator never serves a stale verdict.
    """

    messages: list[dict[str, str]]
    prompt_version: str = ""
    validate: Callable[[str], Any] | None = None


@dataclass
class ChatResult:
    """The outcome of one request. ``ok`` means a reply passed validation; then ``text`` is that
    reply and ``value`` what the validator returned (the text when there is no validator).
    ``failure`` is "invalid_reply" (every reply rejected) or "request_error" (transport)."""

    key: str
    ok: bool
    text: str | None = None
    value: Any = None
    replies: list[str] = field(default_factory=list)  # every reply received, rejected ones too
    rejections: list[str] = field(default_factory=list)  # why each rejected reply was rejected
    failure: str | None = None
    error: str | None = None
    from_cache: bool = False  # the accepted reply came from the cache


def request_key(model: str, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any],
                prompt_version: str) -> str:
    """The cache key: SHA-256 of the canonical JSON of what determines a reply."""
    canonical = json.dumps({"model": model, "messages": list(messages), "params": dict(params),
                            "prompt_version": prompt_version}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """Counters for one client. ``requests`` counts HTTP requests sent (retries included);
    ``retries`` the transient failures that were retried; ``errors`` every transient failure
    by kind ("429", "500", "timeout", "connection", "malformed", ...); ``cache_hits`` the
    replies read from the cache instead of being requested; ``invalid_replies`` the replies a
    validator rejected; ``failed`` the items reported as failed. Tokens count sent requests only."""

    price_per_1k_input: float = 0.0
    price_per_1k_output: float = 0.0
    items: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    invalid_replies: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: float) -> None:
        """Add to counters, thread-safely: ``ledger.add(requests=1, prompt_tokens=12)``."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def add_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def estimated_cost(self) -> float:
        return (self.prompt_tokens * self.price_per_1k_input
                + self.completion_tokens * self.price_per_1k_output) / 1000

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "items": self.items, "requests": self.requests, "retries": self.retries,
                "cache_hits": self.cache_hits, "invalid_replies": self.invalid_replies,
                "failed": self.failed, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "estimated_cost_usd": round(self.estimated_cost, 6),
                "price_per_1k_input": self.price_per_1k_input,
                "price_per_1k_output": self.price_per_1k_output,
                "elapsed_s": round(self.elapsed_s, 3), "errors": dict(sorted(self.errors.items())),
            }

    def write_json(self, path: str | Path) -> Path:
        """Write the ledger atomically (a temporary file renamed into place)."""
        return atomic_write_json(path, self.to_dict())


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedReply:
    reply: str
    prompt_tokens: int
    completion_tokens: int


class ReplyCache:
    """Every reply received, keyed by (request key, attempt), in one SQLite file.

    Each row is committed on its own with ``synchronous=FULL`` in WAL mode, so it survives a
    killed process; several threads (and processes) may share the file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies ("
            " key TEXT NOT NULL, attempt INTEGER NOT NULL, model TEXT NOT NULL,"
            " prompt_version TEXT NOT NULL, request TEXT NOT NULL, reply TEXT NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
            " created_at REAL NOT NULL, PRIMARY KEY (key, attempt))")

    def get(self, key: str, attempt: int) -> CachedReply | None:
        with self._lock:
            row = self._db.execute("SELECT reply, prompt_tokens, completion_tokens FROM replies"
                                   " WHERE key = ? AND attempt = ?", (key, attempt)).fetchone()
        return CachedReply(*row) if row else None

    def put(self, key: str, attempt: int, request: Mapping[str, Any], reply: str,
            prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, attempt, request["model"], request["prompt_version"],
                 json.dumps(request, ensure_ascii=False), reply, prompt_tokens, completion_tokens, time.time()))

    def rows(self) -> Iterator[dict[str, Any]]:
        """All stored rows (for audits and tests)."""
        with self._lock:
            cursor = self._db.execute("SELECT key, attempt, model, prompt_version, request, reply,"
                                      " prompt_tokens, completion_tokens, created_at FROM replies")
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        for row in rows:
            yield dict(zip(names, row, strict=True))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------
class MalformedReply(Exception):
    """The server answered 200 but the body is not a usable chat completion."""


class _Secret:
    """Holds the API key; its repr and str never show it."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__


class ChatClient:
    """Bounded-concurrency, retrying, caching chat client for one ``EndpointConfig``.

    ``cache_dir``: folder of the reply cache (``chat_cache.sqlite``); None disables caching.
    Use ``complete_many`` for batches (results in input order) and ``ledger`` for accounting.
    """

    def __init__(self, config: EndpointConfig, cache_dir: str | Path | None = None, *,
                 progress: bool = True, progress_interval_s: float = 5.0):
        self.config = config
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self._secret = _Secret(self._read_key(config.api_key_env))
        self.ledger = Ledger(config.price_per_1k_input, config.price_per_1k_output)
        self.cache = ReplyCache(Path(cache_dir) / CACHE_FILENAME) if cache_dir is not None else None
        self._openai = openai.OpenAI(api_key=self._secret.reveal(), base_url=config.base_url,
                                     timeout=config.timeout_s, max_retries=0)
        self._jitter = random.Random()

    @staticmethod
    def _read_key(env_name: str) -> str:
        if not env_name:
            return "no-key"  # a local server that ignores authentication
        value = os.environ.get(env_name, "")
        if not value:
            raise EndpointError(f"environment variable {env_name} (EndpointConfig.api_key_env) is not set or empty")
        return value

    def __repr__(self) -> str:
        cache = str(self.cache.path) if self.cache else None
        return (f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r}, "
                f"api_key_env={self.config.api_key_env!r}, cache={cache!r})")

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self._openai.close()

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the API key replaced by ***."""
        key = self._secret.reveal()
        return text.replace(key, "***") if len(key) >= 4 else text

    # -- public API --------------------------------------------------------------------------
    def key_for(self, request: ChatRequest) -> str:
        return request_key(self.config.model, request.messages, self.config.request_params(),
                           request.prompt_version)

    def complete(self, request: ChatRequest, max_invalid: int = 3) -> ChatResult:
        """One request (the same path as ``complete_many``: cache, retries, validation)."""
        return self.complete_many([request], max_invalid=max_invalid, desc="")[0]

    def complete_many(self, requests: Sequence[ChatRequest], *, max_invalid: int = 3,
                      desc: str = "chat") -> list[ChatResult]:
        """All requests, ``max_concurrency`` at a time; results in input order.

        Requests with identical content (same cache key) are sent once and share a result.
        Raises ``EndpointError`` (after cancelling what has not started) when the endpoint
        refuses the key, the URL or the model.
        """
        if max_invalid < 1:
            raise ValueError(f"max_invalid must be >= 1, got {max_invalid}")
        start = time.perf_counter()
        keys = [self.key_for(r) for r in requests]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        self.ledger.add(items=len(first))
        unique: dict[str, ChatResult] = {}
        bar = tqdm(total=len(first), desc=desc or None, disable=not self.progress or not first,
                   mininterval=self.progress_interval_s, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, max(1, len(first))))
        try:
            futures = {pool.submit(self._complete_one, requests[i], key, max_invalid): key
                       for key, i in first.items()}
            for future in as_completed(futures):
                unique[futures[future]] = future.result()
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running requests finish and are cached
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
            self.ledger.add(elapsed_s=time.perf_counter() - start)
        return [unique[key] for key in keys]

    # -- one item ------------------------------------------------------------------------------
    def _complete_one(self, request: ChatRequest, key: str, max_invalid: int) -> ChatResult:
        payload = {"model": self.config.model, "messages": request.messages,
                   "params": self.config.request_params(), "prompt_version": request.prompt_version}
        result = ChatResult(key=key, ok=False)
        for attempt in range(max_invalid):
            cached = self.cache.get(key, attempt) if self.cache else None
            if cached is not None:
                self.ledger.add(cache_hits=1)
                text = cached.reply
            else:
                try:
                    text, prompt_tokens, completion_tokens = self._send(request.messages)
                except _RequestFailed as exc:
                    self.ledger.add(failed=1)
                    result.failure, result.error = "request_error", str(exc)
                    return result
                if self.cache is not None:
                    self.cache.put(key, attempt, payload, text, prompt_tokens, completion_tokens)
            result.replies.append(text)
            try:
                value = request.validate(text) if request.validate else text
            except ValueError as exc:
                self.ledger.add(invalid_replies=1)
                result.rejections.append(self.redact(str(exc)) or type(exc).__name__)
                continue
            result.ok, result.text, result.value, result.from_cache = True, text, value, cached is not None
            return result
        self.ledger.add(failed=1)
        result.failure = "invalid_reply"
        result.error = f"{max_invalid} invalid replies; last: {result.rejections[-1]}"
        return result

    def _request(self, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        """One HTTP request, no retries: (reply, prompt tokens, completion tokens). The one method a
        client of another OpenAI endpoint overrides (``polyalpaca.serving``: completions)."""
        response = self._openai.chat.completions.create(model=self.config.model, messages=messages,
                                                        **self.config.request_params())
        return _reply_content(response)

    def _send(self, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        """POST one request with retries; returns (reply, prompt tokens, completion tokens)."""
        cfg = self.config
        last_error = ""
        for retry in range(cfg.max_retries + 1):
            self.ledger.add(requests=1)
            retry_after = 0.0
            try:
                text, prompt_tokens, completion_tokens = self._request(messages)
                self.ledger.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
                return text, prompt_tokens, completion_tokens
            except openai.APIStatusError as exc:
                status = exc.status_code
                message = self.redact(f"HTTP {status} from {cfg.base_url}: {exc.message}")
                if status in FATAL_STATUS:
                    raise EndpointError(f"{message} (check {cfg.api_key_env or 'the key'}, base_url and model "
                                        f"{cfg.model!r})") from None
                if status not in RETRYABLE_STATUS and status < 500:
                    raise _RequestFailed(message) from None
                kind, last_error = str(status), message
                retry_after = _retry_after_s(exc.response)
            except openai.APITimeoutError:
                kind, last_error = "timeout", f"no reply from {cfg.base_url} within {cfg.timeout_s} s"
            except openai.APIConnectionError as exc:
                kind, last_error = "connection", self.redact(f"connection to {cfg.base_url} failed: {exc}")
            except (json.JSONDecodeError, openai.APIResponseValidationError, MalformedReply) as exc:
                kind, last_error = "malformed", self.redact(f"malformed reply from {cfg.base_url}: {exc}")
            self.ledger.add_error(kind)
            if retry == cfg.max_retries:
                break
            self.ledger.add(retries=1)
            delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** retry) * self._jitter.uniform(0.5, 1.0)
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
            log.debug("retry %d after %s; sleeping %.2f s", retry + 1, kind, delay)
            time.sleep(delay)
        raise _RequestFailed(f"gave up after {cfg.max_retries + 1} tries; last error: {last_error}")


def _reply_content(response: Any) -> tuple[str, int, int]:
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("no choices in the body")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise MalformedReply("the first choice has no text content")
    usage = getattr(response, "usage", None)
    return (content, int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0))


def _retry_after_s(response: Any) -> float:
    """The server's Retry-After in seconds (0 when absent or not a number)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except (AttributeError, TypeError, ValueError):
        return 0.0
