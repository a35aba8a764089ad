"""Answering the test prompts through a serving engine (``eval.backend = "server"``).

Any server with the OpenAI completions API (``POST /v1/completions``: vLLM, llama.cpp's server,
TGI) generates the answers instead of ``transformers`` in this process. The prompts, the stop
strings and the cutting of the answer are those of ``polyalpaca.evaluate.answer_prompts``: the
template's prompt is sent as is, the server stops at the decoding's ``stop_strings`` (temperature
0, ``max_tokens`` = ``max_new_tokens``), and the answer is the text after the response marker up to
the next section, so both backends give the same answer for the same continuation.

Requests go through the judge's client machinery (``polyalpaca.llm_client``): at most
``eval.server.max_concurrency`` in flight, results in input order, retries with back-off on 429,
5xx, timeouts and broken connections, and every reply stored in the reply cache under a key of
the served model, the prompt and every decoding parameter, so an interrupted evaluation resumes
without asking twice. The key's environment variable (``eval.server.api_key_env``, "" for none)
is read once; the key itself is never stored.

Decoding that a server cannot do is refused before any request, naming the setting:
``no_repeat_ngram_size`` (no server implements it), and a ``repetition_penalty`` together with
beam search (vLLM's beam search has no penalty). Beam search itself is vLLM's extension
(``use_beam_search`` with ``n`` beams; the best beam is the first choice); a server that returns
one choice for ``n`` beams is not doing beam search, and the run stops saying so. vLLM's beam
search and ``transformers``' may still pick different beams on near-ties.

Models: the untuned base model is requested by its served name (``eval.server.model``, else the
grid's model spec). A trained run is requested by its model key (``GridRun.model_key``): with
``eval.server.lora_adapters`` every LoRA run is an adapter of one served base model (vLLM
multi-LoRA: ``vllm serve BASE --enable-lora --lora-modules KEY=RUN/model ...``); a full fine-tune is
served on its own (``vllm serve RUN/model --served-model-name KEY``). ``vllm_serve_commands``
writes those commands from the grid's trained runs:

    polyalpaca serve --profile paper
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .config import DecodingConfig, ServerSettings
from .data import TestPrompt
from .llm_client import ChatClient, ChatRequest, EndpointConfig, EndpointError, MalformedReply
from .prompts import PromptTemplate

# generate and models (torch, transformers) are imported only when an answer is cut or a
# command names a converted model: the client side needs neither.


@dataclass(frozen=True)
class RetryPolicy:
    """How long a request is retried: ``max_retries`` after the first try, back-off doubling from
    ``backoff_base_s`` up to ``backoff_max_s`` (with jitter), ``timeout_s`` per request."""

    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 600.0  # one answer: beam search on a busy server can take minutes


RETRY_POLICY = RetryPolicy()


class ServerDecodingError(ValueError):
    """The decoding asks for something the server cannot do."""


class ServerError(RuntimeError):
    """The server gave no answer for some prompts (after every retry)."""


def server_decoding_problems(decoding: DecodingConfig) -> list[str]:
    """Why ``decoding`` cannot be honoured by a completions server (empty when it can)."""
    problems = []
    if decoding.no_repeat_ngram_size:
        problems.append(f"no_repeat_ngram_size = {decoding.no_repeat_ngram_size}: no completions server "
                        "(vLLM, llama.cpp, TGI) implements it; set it to 0 for eval.backend = 'server', "
                        "or answer in-process (eval.backend = 'local')")
    if decoding.num_beams > 1 and decoding.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty = {decoding.repetition_penalty} with num_beams = {decoding.num_beams}: "
                        "vLLM's beam search takes no repetition penalty; set repetition_penalty to 1.0 or "
                        "num_beams to 1")
    return problems


@dataclass
class CompletionEndpoint(EndpointConfig):
    """An ``EndpointConfig`` for ``/v1/completions``: the decoding's stop strings and beams, and the
    server's extension parameters, are request parameters (sent, and part of the cache key)."""

    stop: tuple[str, ...] = ()
    beams: int = 1
    server_extras: dict[str, Any] = field(default_factory=dict)  # sent in the body (vLLM's extensions)

    def request_params(self) -> dict[str, Any]:
        params = super().request_params()
        if self.stop:
            params["stop"] = list(self.stop)
        if self.beams > 1:
            params["n"] = self.beams
        if self.server_extras:
            params["extra_body"] = dict(self.server_extras)
        return params


def completion_endpoint(settings: ServerSettings, model: str, decoding: DecodingConfig) -> CompletionEndpoint:
    """The endpoint for ``model`` with ``decoding``; raises ``ServerDecodingError`` for decoding
    no server can do."""
    problems = server_decoding_problems(decoding)
    if problems:
        raise ServerDecodingError("the decoding cannot be done by a completions server: " + "; ".join(problems))
    if not settings.base_url:
        raise ServerDecodingError("eval.backend = 'server' needs eval.server.base_url, e.g. http://localhost:8000/v1")
    extras: dict[str, Any] = {}
    if decoding.num_beams > 1:
        extras["use_beam_search"] = True
    elif decoding.repetition_penalty != 1.0:
        extras["repetition_penalty"] = decoding.repetition_penalty
    return CompletionEndpoint.of(settings, model=model, timeout_s=RETRY_POLICY.timeout_s,
                                 max_retries=RETRY_POLICY.max_retries, backoff_base_s=RETRY_POLICY.backoff_base_s,
                                 backoff_max_s=RETRY_POLICY.backoff_max_s,
                                 temperature=0.0, max_tokens=decoding.max_new_tokens,
                                 stop=tuple(decoding.stop_strings), beams=decoding.num_beams, server_extras=extras)


class CompletionClient(ChatClient):
    """The judge's client (concurrency, order, retries, cache, ledger) sending completions: each
    request carries one message of role ``prompt`` whose content is the raw prompt."""

    config: CompletionEndpoint

    def _request(self, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        (message,) = messages
        response = self._openai.completions.create(model=self.config.model, prompt=message["content"],
                                                   **self.config.request_params())
        choices = getattr(response, "choices", None)
        if not choices or not isinstance(getattr(choices[0], "text", None), str):
            raise MalformedReply("no text choice in the body")
        if self.config.beams > 1 and len(choices) != self.config.beams:
            raise EndpointError(
                f"asked {self.config.base_url} for beam search with {self.config.beams} beams (use_beam_search, "
                f"n = {self.config.beams}) and got {len(choices)} choice(s): the server does not do vLLM's beam "
                "search. Serve the model with vLLM, or set num_beams = 1 in the decoding.")
        usage = getattr(response, "usage", None)
        return (choices[0].text, int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0))


def answer_from_continuation(template: PromptTemplate, continuation: str, stop_strings) -> str:
    """The answer in a generated continuation, cut as the in-process backend cuts it."""
    from .generate import cut_at_stop

    return template.extract_response(template.response_marker + "\n" + cut_at_stop(continuation, stop_strings))


def answer_prompts_via_server(prompts: list[TestPrompt], template: PromptTemplate, decoding: DecodingConfig,
                              settings: ServerSettings, adapter_name: str | None, cache_dir: str | Path | None,
                              *, base_model: str = "", progress: bool = False) -> list[str]:
    """One answer per prompt, in order, from the completions server of ``settings``: the same
    contract as ``polyalpaca.evaluate.answer_prompts``.

    ``adapter_name``: the served name of a trained run (its model key: a LoRA adapter, or a full
    fine-tune's ``--served-model-name``); None asks the base model, ``settings.model`` or else
    ``base_model``. Replies are cached in ``cache_dir`` (None: no cache). Raises
    ``ServerDecodingError`` before any request when the decoding cannot be honoured,
    ``EndpointError`` when the server refuses the model or key, and ``ServerError`` when prompts
    are left without an answer after every retry (a server that is down)."""
    model = adapter_name or settings.model or base_model
    if not model:
        raise ServerDecodingError("no model name to request: set eval.server.model (the served base model's name)")
    endpoint = completion_endpoint(settings, model, decoding)
    requests = [ChatRequest([{"role": "prompt", "content": template.build(p.prompt)}], f"completion:{template.name}")
                for p in prompts]
    with CompletionClient(endpoint, cache_dir, progress=progress) as client:
        try:
            results = client.complete_many(requests, desc=f"answers ({model})")
        except EndpointError as exc:
            hint = (f" For a trained run, the server must serve {model!r}: see `python -m polyalpaca.serving "
                    "vllm-command`." if adapter_name else "")
            raise EndpointError(f"{exc}.{hint}") from None
    failed = [(p, r) for p, r in zip(prompts, results) if not r.ok]
    if failed:
        raise ServerError(f"{len(failed)} of {len(prompts)} prompts got no answer from {settings.base_url} "
                          f"(model {model!r}); first: prompt {failed[0][0].id}: {failed[0][1].error}. Replies "
                          "received are cached: run again once the server is up.")
    return [answer_from_continuation(template, r.text, decoding.stop_strings) for r in results]


# --- serving the grid's runs with vLLM ---------------------------------------------------------

def vllm_serve_commands(exp, port: int = 8000) -> list[str]:
    """``vllm serve`` commands for the trained runs of ``exp``'s grid: per base model, one server
    with every finished LoRA run as an adapter (``eval.server.lora_adapters``), and one server per
    finished full fine-tune. Each run is served under its model key, the name the evaluation asks
    for; the base model under ``eval.server.model`` or its spec (``pypi:`` and ``tiny-`` specs are
    given as their converted folder, converted once if needed)."""
    from .models import resolve_model

    p = exp.profile
    server = p.eval.server
    trained: dict[str, dict[str, list]] = {}
    for run in exp.runs(include_base=False):
        if exp.is_trained(run):
            runs = trained.setdefault(run.model, {"lora": [], "full": []})[run.method]
            if all(r.model_key != run.model_key for r in runs):
                runs.append(run)
    commands = []
    for model in p.grid.models:
        lora = trained.get(model, {}).get("lora", [])
        served = server.model or model
        cmd = ["vllm", "serve", resolve_model(model), "--served-model-name", served, "--port", str(port), "--dtype", "auto"]
        if lora and server.lora_adapters:
            cmd += ["--enable-lora", "--max-lora-rank", str(p.lora.lora.r), "--max-loras", str(min(len(lora), 8)),
                    "--lora-modules", *[f"{r.model_key}={store.model_folder(exp.run_dir(r))}" for r in lora]]
        commands.append(shlex.join(cmd))
        for run in trained.get(model, {}).get("full", []):
            # A run folder holds no copy of the tokenizer: it is the base model's.
            commands.append(shlex.join(["vllm", "serve", str(store.model_folder(exp.run_dir(run))), "--tokenizer",
                                        resolve_model(model), "--served-model-name", run.model_key, "--port",
                                        str(port), "--dtype", "auto"]))
        if lora and not server.lora_adapters:
            commands.append(f"# {len(lora)} LoRA run(s) of {model}: set eval.server.lora_adapters = true to serve "
                            "them as adapters of the base model")
    return commands
