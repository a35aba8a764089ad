"""Answers through an OpenAI-compatible completions server (the local test double): the same
answers as the in-process backend for the same continuations, request parameters, multi-LoRA
adapter names, decoding a server cannot do, order, cache, retries, a server that is down, and the
vLLM commands that serve a grid's runs."""
from __future__ import annotations

import socket

import pytest
import torch

from openai_double import default_completion
from polyalpaca import serving
from polyalpaca.config import DecodingConfig, ServerSettings, load_profile
from polyalpaca.data import load_test_prompts
from polyalpaca.evaluate import answer_prompts
from polyalpaca.llm_client import EndpointError
from polyalpaca.serving import (RetryPolicy, ServerDecodingError, ServerError, answer_prompts_via_server,
                                vllm_serve_commands)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(serving, "RETRY_POLICY", RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05,
                                                             timeout_s=5.0))


@pytest.fixture(scope="module")
def prompts():
    return load_test_prompts("ru", "embedded").items[:3] + load_test_prompts("en", "embedded").items[:3]


def settings(double, **overrides) -> ServerSettings:
    return ServerSettings(**{"base_url": double.base_url, "model": "served-base", "api_key_env": "",
                             "max_concurrency": 4, **overrides})


class ScriptedModel:
    """Stands in for a causal LM in ``answer_prompts``: continues each known prompt with the text
    given for it, as token ids (the real tokenizer decodes them, the real cutting follows)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, continuations: dict[str, str]):
        self.tokenizer = tokenizer
        self.continuations = {tuple(tokenizer(prompt)["input_ids"]): tokenizer(text, add_special_tokens=False)["input_ids"]
                              for prompt, text in continuations.items()}

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        rows = [self.continuations[tuple(ids[mask.bool()].tolist())] for ids, mask in zip(input_ids, attention_mask)]
        new = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        for i, row in enumerate(rows):
            new[i, :len(row)] = torch.tensor(row)
        return torch.cat([input_ids, new], dim=1)


def test_same_answers_as_the_in_process_backend(double, tmp_path, prompts, template, tokenizer):
    decoding = DecodingConfig(max_new_tokens=40, batch_size=4)
    served = answer_prompts_via_server(prompts, template, decoding, settings(double), None, tmp_path)
    texts = [template.build(p.prompt) for p in prompts]
    local = answer_prompts(ScriptedModel(tokenizer, {t: default_completion(t) for t in texts}), tokenizer, template,
                           prompts, decoding)
    assert served == local
    assert served == [default_completion(t).split("\n\n### ")[0] for t in texts]  # the answer, not the next section
    assert len(set(served)) == len(prompts) and all(served)
    bodies = sorted((r.json for r in double.requests), key=lambda b: texts.index(b["prompt"]))
    assert [b["prompt"] for b in bodies] == texts
    for body in bodies:
        assert body["model"] == "served-base" and body["temperature"] == 0.0 and body["max_tokens"] == 40
        assert body["stop"] == ["\n### "] and "n" not in body and "use_beam_search" not in body
        assert all(r.path == "/v1/completions" for r in double.requests)


def test_lora_adapters_and_beam_search(double, tmp_path, prompts, template):
    """Each LoRA run is its adapter name on one server; the paper's beams go as vLLM's beam search."""
    double.served_models = ("served-base", "tiny-random-gemma3-lora-s42-abc")
    beams = DecodingConfig(max_new_tokens=256, num_beams=4, no_repeat_ngram_size=0)
    answers = answer_prompts_via_server(prompts, template, beams, settings(double, lora_adapters=True),
                                        "tiny-random-gemma3-lora-s42-abc", tmp_path)
    assert answers == [default_completion(template.build(p.prompt)).split("\n\n### ")[0] for p in prompts]
    body = double.requests[0].json
    assert (body["model"], body["n"], body["use_beam_search"], body["max_tokens"]) == \
        ("tiny-random-gemma3-lora-s42-abc", 4, True, 256)
    # An adapter the server does not serve: refused at once (404), with the way to serve it.
    double.reset()
    with pytest.raises(EndpointError, match=r"does not exist.*vllm-command"):
        answer_prompts_via_server(prompts, template, beams, settings(double, lora_adapters=True),
                                  "tiny-random-gemma3-lora-s42-other", tmp_path)
    assert double.request_count() <= len(prompts)  # a refusal is not retried


def test_decoding_a_server_cannot_do_is_refused_before_any_request(double, tmp_path, prompts, template):
    paper = load_profile("paper").eval
    with pytest.raises(ServerDecodingError, match=r"no_repeat_ngram_size = 6: no completions server"):
        answer_prompts_via_server(prompts, template, paper.decoding, settings(double), None, tmp_path)
    full = DecodingConfig(num_beams=4, repetition_penalty=1.1)
    with pytest.raises(ServerDecodingError, match=r"repetition_penalty = 1.1 with num_beams = 4"):
        answer_prompts_via_server(prompts, template, full, settings(double), None, tmp_path)
    assert double.request_count() == 0
    # A greedy repetition penalty is sent as vLLM's extension parameter.
    answer_prompts_via_server(prompts[:1], template, DecodingConfig(repetition_penalty=1.1), settings(double), None,
                              tmp_path)
    assert double.requests[0].json["repetition_penalty"] == 1.1
    # A server that ignores vLLM's beam search (one choice for n = 4) stops the run.
    double.beam_search = False
    with pytest.raises(EndpointError, match=r"4 beams .* got 1 choice"):
        answer_prompts_via_server(prompts, template, DecodingConfig(num_beams=4), settings(double), None, tmp_path)


def test_order_retries_and_cache(double, tmp_path, prompts, template):
    double.latency_s = 0.05  # requests overlap
    for kind in ("500", "429", "503", "bad_body"):
        double.add_fault(kind)
    decoding = DecodingConfig(max_new_tokens=16)
    first = answer_prompts_via_server(prompts, template, decoding, settings(double), None, tmp_path)
    assert first == [default_completion(template.build(p.prompt)).split("\n\n### ")[0] for p in prompts]
    assert double.request_count() == len(prompts) + 4 and double.max_in_flight > 1
    # Interrupted or repeated: every stored reply is reused, no request is sent.
    double.reset()
    assert answer_prompts_via_server(prompts, template, decoding, settings(double), None, tmp_path) == first
    assert double.request_count() == 0
    # Another decoding parameter is another request.
    answer_prompts_via_server(prompts, template, DecodingConfig(max_new_tokens=17), settings(double), None, tmp_path)
    assert double.request_count() == len(prompts)


def test_a_server_that_is_down(tmp_path, prompts, template):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    down = ServerSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env="")
    with pytest.raises(ServerError, match=rf"6 of 6 prompts got no answer from http://127.0.0.1:{port}/v1 .*"
                                          r"gave up after 4 tries; last error: connection"):
        answer_prompts_via_server(prompts, template, DecodingConfig(), down, None, tmp_path)


def test_a_key_is_read_from_the_environment_only(double, tmp_path, prompts, template, monkeypatch):
    monkeypatch.delenv("POLYALPACA_SERVER_KEY", raising=False)
    with pytest.raises(EndpointError, match="POLYALPACA_SERVER_KEY"):
        answer_prompts_via_server(prompts, template, DecodingConfig(), settings(double, api_key_env="POLYALPACA_SERVER_KEY"),
                                  None, tmp_path)
    monkeypatch.setenv("POLYALPACA_SERVER_KEY", "sk-serving-SECRET-42")
    answer_prompts_via_server(prompts[:1], template, DecodingConfig(), settings(double, api_key_env="POLYALPACA_SERVER_KEY"),
                              None, tmp_path)
    assert double.requests[0].headers["authorization"] == "Bearer sk-serving-SECRET-42"
    assert b"SECRET" not in (tmp_path / "chat_cache.sqlite").read_bytes()


def test_vllm_commands_serve_each_trained_run_under_its_model_key(tmp_path, tiny_model_dir):
    from polyalpaca.grid import Experiment
    from polyalpaca.models import resolve_model

    exp = Experiment(load_profile("tiny", {"grid.recipes": '["multilingual", "english-only"]',
                                           "eval.server.lora_adapters": "true"}), tmp_path)
    runs = {r.label: r for r in exp.runs(include_base=False)}
    assert vllm_serve_commands(exp)[0].endswith("--dtype auto")  # nothing trained: the base model only
    for label in ("lora-multilingual-s42", "lora-english-only-s42", "full-multilingual-s42"):
        (exp.run_dir(runs[label]) / "model").mkdir(parents=True)
        (exp.run_dir(runs[label]) / "DONE").write_text("done\n")
    base, full = vllm_serve_commands(exp, port=8001)
    lora = [runs["lora-multilingual-s42"], runs["lora-english-only-s42"]]
    assert base == (f"vllm serve {resolve_model('tiny-random-gemma3')} --served-model-name tiny-random-gemma3 "
                    "--port 8001 --dtype auto --enable-lora --max-lora-rank 4 --max-loras 2 --lora-modules "
                    + " ".join(f"{r.model_key}={exp.run_dir(r) / 'model'}" for r in lora))
    key = runs["full-multilingual-s42"].model_key
    assert full == (f"vllm serve {exp.run_dir(runs['full-multilingual-s42']) / 'model'} --tokenizer "
                    f"{resolve_model('tiny-random-gemma3')} --served-model-name {key} --port 8001 --dtype auto")
