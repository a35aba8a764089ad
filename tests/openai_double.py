"""A local stand-in for the OpenAI chat-completions API, for tests and benchmarks only.

``OpenAIDouble`` runs an ``http.server`` on 127.0.0.1 (random port) in a background thread and
answers ``POST /v1/chat/completions``:

- translation requests (the user message holds ``<source>...</source>`` and a line
  ``Target language: NAME (code)``) get a deterministic fake translation: every word of the
  source is replaced by a common word of the target language, chosen by a hash of the word,
  while everything else (markers like ``⟦0⟧``, digits, punctuation, spacing) is kept as is;
- judge requests (the prompt asks for ``Rating: [[N]]``) get ``Rating: [[N]]`` with
  ``N = judge_rating(response_text)`` (2 by default);
- anything else gets ``echo: <last user message>``.

It also answers ``POST /v1/completions`` (the legacy completions API that vLLM, llama.cpp's
server and TGI serve) with ``completion_text(prompt)``, a deterministic function of the prompt
(``default_completion`` by default), cut at the request's ``stop`` strings as vLLM cuts (the stop
string is not included). ``n`` > 1 returns ``n`` choices, the first being the reply, as vLLM's
beam search does with ``use_beam_search``; ``beam_search=False`` makes it a server that ignores
both (one choice), like one without vLLM's extensions. A request for a model not in
``served_models`` (when that is set) gets 404, as vLLM answers for an unknown LoRA adapter.

Faults are injected by rules (``Fault``): the first rule whose ``match`` occurs in the request's
message texts (or that has no ``match``) and still has ``times`` left is applied. Every request is
recorded (path, headers, raw body, parsed JSON, fault applied) for assertions.
"""
from __future__ import annotations

import json
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULT_KINDS = (
    "401",  # authentication refused
    "429",  # rate limited (with Retry-After: 0)
    "500",  # internal server error
    "503",  # service unavailable
    "malformed_json",  # 200 with a body that is not JSON
    "bad_body",  # 200 with JSON that is not a chat completion
    "hang",  # wait ``hang_s`` before answering normally (a client timeout)
    "wrong_language",  # a translation reply that copies the source unchanged
    "drop_token",  # a translation reply that loses its first protected marker
    "reply",  # answer with ``Fault.text`` as the assistant message
)

# Common words per language; a string of them is recognised by langdetect as that language.
VOCABULARY: dict[str, list[str]] = {
    "fr": "maison avec pour nous être très beaucoup aujourd'hui travail jardin pourquoi leurs "
          "toujours quelque chose depuis".split(),
    "de": "und der Haus nicht wir sehr Arbeit heute warum können schön zwischen immer "
          "etwas seit".split(),
    "es": "casa para nosotros muy trabajo hoy porque también ciudad mañana pequeño siempre "
          "algo desde".split(),
    "ru": "дом работа сегодня почему очень мы вместе город хорошо который большой время "
          "всегда что-то".split(),
    "bg": "къща работа днес защо много ние заедно град добре който голям време това "
          "където нещо също".split(),
    "cs": "dům práce dnes proč velmi společně město dobře který čas také vždycky něco "
          "protože".split(),
    "fi": "talo työ tänään miksi hyvin yhdessä kaupunki hyvä joka aika myös aina jotain "
          "koska".split(),
    "zh": "的 了 是 在 这个 他们 我们 你 没有 什么 说 一个 问题 因为".split(),
}

_SOURCE = re.compile(r"<source>\n?(.*?)\n?</source>", re.S)
_TARGET = re.compile(r"Target language: [^\n(]*\((\w[\w-]*)\)")
_RESPONSE = re.compile(r"<response>\n?(.*?)\n?</response>", re.S)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_MARKER = re.compile(r"⟦\d+⟧")


@dataclass
class Fault:
    """Apply ``kind`` to the next ``times`` requests whose messages contain ``match`` (any if None)."""

    kind: str
    match: str | None = None
    times: int = 1
    text: str = ""  # the assistant message for kind == "reply"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: str
    json: dict | None
    fault: str | None
    received_at: float
    complete: bool = True  # False when the client went away before sending the whole body


    def user_text(self) -> str:
        """The content of the last user message ('' when absent)."""
        messages = (self.json or {}).get("messages", [])
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        return users[-1] if users else ""


def default_completion(prompt: str) -> str:
    """A continuation chosen by a hash of the prompt: a short answer, then (like a model that does
    not stop) a new section of the template and more text, which the stop strings cut off."""
    words = VOCABULARY["es"] + VOCABULARY["fr"]
    h = zlib.crc32(prompt.encode("utf-8"))
    answer = " ".join(words[(h >> (3 * i)) % len(words)] for i in range(2 + h % 5))
    return f"{answer.capitalize()}.\n\n### Instruction:\nWrite another answer.\n\n### Response:\nMore text."


def fake_translation(source: str, language: str) -> str:
    """Replace each word of ``source`` by a word of ``language``; markers and digits are kept."""
    words = VOCABULARY.get(language)
    if words is None:
        return f"[{language}] {source}"
    return _WORD.sub(lambda m: words[zlib.crc32(m.group(0).encode()) % len(words)], source)


@dataclass
class OpenAIDouble:
    """The test double. Use as a context manager, or call ``start()`` and ``stop()``."""

    latency_s: float = 0.0
    hang_s: float = 2.0
    judge_rating: Callable[[str], int] = lambda response: 2
    completion_text: Callable[[str], str] = default_completion
    beam_search: bool = True  # honour n > 1 (vLLM's use_beam_search); False: one choice, like other servers
    served_models: tuple[str, ...] = ()  # completions for other models get 404; empty = any model
    faults: list[Fault] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests being served at the same time

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "OpenAIDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                double._handle(self)

            def log_message(self, format: str, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OpenAIDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the double is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- configuration and inspection ------------------------------------------------------
    def add_fault(self, kind: str, match: str | None = None, times: int = 1, text: str = "") -> None:
        with self._lock:
            self.faults.append(Fault(kind, match, times, text))

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.max_in_flight = 0

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -- serving ---------------------------------------------------------------------------
    def _take_fault(self, searchable: str) -> Fault | None:
        for rule in self.faults:
            if rule.times > 0 and (rule.match is None or rule.match in searchable):
                rule.times -= 1
                return rule
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        body = raw.decode("utf-8", errors="replace")
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            payload = None
        with self._lock:
            messages = (payload or {}).get("messages", []) if isinstance(payload, dict) else []
            fault = self._take_fault("\n".join(str(m.get("content", "")) for m in messages) or body)
            self.requests.append(RecordedRequest(handler.path, dict(handler.headers.items()), body, payload,
                                                 fault.kind if fault else None, time.time(),
                                                 complete=len(raw) == length))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._respond(handler, payload, fault)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _respond(self, handler: BaseHTTPRequestHandler, payload: dict | None, fault: Fault | None) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        route = handler.path.rstrip("/")
        chat = route.endswith("/chat/completions")
        if not (chat or route.endswith("/v1/completions")) or payload is None:
            return self._send(handler, 404, {"error": {"message": f"no route {handler.path}", "type": "not_found"}})
        if not chat and self.served_models and payload.get("model") not in self.served_models:
            return self._send(handler, 404, {"error": {"message": f"The model `{payload.get('model')}` does not exist.",
                                                       "type": "NotFoundError"}})
        kind = fault.kind if fault else None
        if kind in ("401", "429", "500", "503"):
            headers = {"Retry-After": "0"} if kind == "429" else {}
            return self._send(handler, int(kind), {"error": {"message": f"injected {kind}", "type": "injected"}},
                              headers)
        if kind == "malformed_json":
            return self._send_raw(handler, 200, b'{"id": "chatcmpl-x", "choices": [')
        if kind == "bad_body":
            return self._send(handler, 200, {"unexpected": True})
        if kind == "hang":
            time.sleep(self.hang_s)
        if not chat:
            text = fault.text if kind == "reply" else self.completion_text(str(payload.get("prompt", "")))
            return self._send(handler, 200, self._text_completion(payload, text))
        content = fault.text if kind == "reply" else self._answer(payload, kind)
        self._send(handler, 200, self._completion(payload, content))

    def _answer(self, payload: dict, kind: str | None) -> str:
        messages = payload.get("messages", [])
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        everything = "\n".join(m.get("content", "") for m in messages)
        sources, target = _SOURCE.findall(user), _TARGET.search(everything)
        if sources and target:
            text = sources[-1]  # the prompt's rules mention the tags before the real block
            if kind == "wrong_language":
                translated = text
            else:
                translated = fake_translation(text, target.group(1))
                if kind == "drop_token":
                    translated = _MARKER.sub("", translated, count=1)
            return f"<translation>\n{translated}\n</translation>"
        if "Rating: [[" in everything:
            responses = _RESPONSE.findall(user)
            rating = self.judge_rating(responses[-1] if responses else "")
            return f"The response addresses the question. Rating: [[{rating}]]"
        return f"echo: {user}"

    @staticmethod
    def _completion(payload: dict, content: str) -> dict:
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in payload.get("messages", []))
        completion_words = len(content.split())
        return {
            "id": f"chatcmpl-{zlib.crc32(content.encode()):08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "double"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words,
                      "total_tokens": prompt_words + completion_words},
        }

    def _text_completion(self, payload: dict, text: str) -> dict:
        stops = payload.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            text = text.split(stop, 1)[0]
        n = int(payload.get("n") or 1) if self.beam_search else 1
        choices = [{"index": i, "text": text if i == 0 else f"{text} (beam {i})", "finish_reason": "stop",
                    "logprobs": None} for i in range(n)]
        prompt_words, completion_words = len(str(payload.get("prompt", "")).split()), len(text.split())
        return {"id": f"cmpl-{zlib.crc32(text.encode()):08x}", "object": "text_completion",
                "created": int(time.time()), "model": payload.get("model", "double"), "choices": choices,
                "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words,
                          "total_tokens": prompt_words + completion_words}}

    def _send(self, handler: BaseHTTPRequestHandler, status: int, obj: dict,
              headers: dict[str, str] | None = None) -> None:
        self._send_raw(handler, status, json.dumps(obj).encode("utf-8"), headers)

    @staticmethod
    def _send_raw(handler: BaseHTTPRequestHandler, status: int, data: bytes,
                  headers: dict[str, str] | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


def endpoint_settings(double: OpenAIDouble, api_key_env: str, **overrides) -> dict:
    """EndpointConfig keyword arguments for a client of ``double`` with fast retries."""
    settings = dict(base_url=double.base_url, api_key_env=api_key_env, max_concurrency=4, max_retries=4,
                    timeout_s=5.0, backoff_base_s=0.01, backoff_max_s=0.05)
    settings.update(overrides)
    return settings
