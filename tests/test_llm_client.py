"""ChatClient against the local OpenAI test double: retries, cache, validation, ledger, secrecy."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from openai_double import OpenAIDouble, endpoint_settings
from polyalpaca.llm_client import (ChatClient, ChatRequest, EndpointConfig, EndpointError, InvalidReply,
                                   Ledger, ReplyCache, load_prompt, request_key)

KEY_ENV = "POLYALPACA_TEST_API_KEY"
KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def endpoint(double: OpenAIDouble, **overrides) -> EndpointConfig:
    return EndpointConfig(**endpoint_settings(double, KEY_ENV, **{"model": "double-1", **overrides}))


def ask(text: str, validate=None) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], "test_v1", validate)


def test_faults_are_retried_counted_and_order_kept(double, tmp_path):
    double.latency_s = 0.05  # long enough for requests to overlap
    for kind in ("429", "500", "503", "malformed_json", "bad_body"):
        double.add_fault(kind)
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        results = client.complete_many([ask(f"item {i}") for i in range(12)])
        ledger = client.ledger.to_dict()
    assert [r.text for r in results] == [f"echo: item {i}" for i in range(12)]
    assert all(r.ok and not r.from_cache for r in results)
    assert ledger["retries"] == 5
    assert ledger["requests"] == 12 + 5 == double.request_count()
    assert ledger["errors"] == {"429": 1, "500": 1, "503": 1, "malformed": 2}
    assert ledger["failed"] == 0 and ledger["items"] == 12
    assert 1 < double.max_in_flight <= 4


def test_timeout_is_retried(double):
    double.add_fault("hang", match="slow one")
    with ChatClient(endpoint(double, timeout_s=0.3), progress=False) as client:
        result = client.complete(ask("slow one"))
        assert result.ok and result.text == "echo: slow one"
        assert client.ledger.errors == {"timeout": 1} and client.ledger.retries == 1


def test_gives_up_after_max_retries_and_reports_the_item(double):
    double.add_fault("500", match="doomed", times=100)
    with ChatClient(endpoint(double, max_retries=2), progress=False) as client:
        results = client.complete_many([ask("fine"), ask("doomed"), ask("also fine")])
        assert [r.ok for r in results] == [True, False, True]
        doomed = results[1]
        assert doomed.failure == "request_error" and doomed.text is None and doomed.value is None
        assert "gave up after 3 tries" in doomed.error and "HTTP 500" in doomed.error
        assert client.ledger.failed == 1 and client.ledger.retries == 2 and client.ledger.requests == 5


def test_connection_errors_are_retried_then_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV,
                            max_retries=1, timeout_s=1, backoff_base_s=0.01)
    with ChatClient(config, tmp_path, progress=False) as client:
        result = client.complete(ask("hello"))
        assert not result.ok and "connection" in result.error
        assert client.ledger.errors == {"connection": 2} and len(client.cache) == 0


def test_rerun_is_served_from_the_cache_without_requests(double, tmp_path):
    requests = [ask(f"question {i}") for i in range(8)]
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        first = client.complete_many(requests)
    sent = double.request_count()
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        second = client.complete_many(requests)
        assert client.ledger.requests == 0 and client.ledger.cache_hits == 8
    assert double.request_count() == sent == 8
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.from_cache for r in second)
    # The cache key covers the model, the parameters and the prompt version.
    with ChatClient(endpoint(double, model="double-2"), tmp_path, progress=False) as client:
        client.complete(requests[0])
    with ChatClient(endpoint(double, temperature=0.5), tmp_path, progress=False) as client:
        client.complete(requests[0])
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        client.complete(ChatRequest(requests[0].messages, "test_v2"))
    assert double.request_count() == sent + 3


def test_identical_requests_are_sent_once(double):
    with ChatClient(endpoint(double), progress=False) as client:
        results = client.complete_many([ask("same"), ask("other"), ask("same")])
    assert [r.text for r in results] == ["echo: same", "echo: other", "echo: same"]
    assert double.request_count() == 2


def _must_be_echo(reply: str) -> str:
    if not reply.startswith("echo: "):
        raise InvalidReply(f"not an echo: {reply!r}")
    return reply.removeprefix("echo: ")


def test_invalid_replies_are_retried_then_reported_failed(double, tmp_path):
    double.add_fault("reply", match="flaky", times=2, text="garbage")
    double.add_fault("reply", match="broken", times=100, text="garbage forever")
    requests = [ask("flaky", _must_be_echo), ask("broken", _must_be_echo), ask("good", _must_be_echo)]
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        flaky, broken, good = client.complete_many(requests, max_invalid=3)
        assert client.ledger.invalid_replies == 2 + 3 and client.ledger.failed == 1
    assert flaky.ok and flaky.value == "flaky" and flaky.replies == ["garbage", "garbage", "echo: flaky"]
    assert good.ok and good.value == "good"
    assert not broken.ok and broken.value is None and broken.text is None
    assert broken.failure == "invalid_reply" and "not an echo" in broken.error
    assert broken.replies == ["garbage forever"] * 3 and len(broken.rejections) == 3
    # Every reply was cached, rejected ones included: the rerun sends nothing and says the same.
    sent = double.request_count()
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        again = client.complete_many(requests, max_invalid=3)
    assert double.request_count() == sent
    assert [r.ok for r in again] == [True, False, True] and again[0].replies == flaky.replies


def test_a_validator_bug_is_not_taken_for_an_invalid_reply(double):
    def buggy(reply: str) -> str:
        raise KeyError("bug")

    with ChatClient(endpoint(double), progress=False) as client, pytest.raises(KeyError):
        client.complete(ask("x", buggy))


def test_ledger_estimates_cost_and_writes_json(double, tmp_path):
    config = endpoint(double, price_per_1k_input=1.0, price_per_1k_output=2.0)
    with ChatClient(config, progress=False) as client:
        client.complete(ask("one two three"))
        path = client.ledger.write_json(tmp_path / "ledger.json")
    data = json.loads(path.read_text())
    # The double counts words: 3 prompt tokens; "echo: one two three" is 4 completion tokens.
    assert data["prompt_tokens"] == 3 and data["completion_tokens"] == 4
    assert data["estimated_cost_usd"] == pytest.approx((3 * 1.0 + 4 * 2.0) / 1000)
    assert Ledger(1.0, 2.0).estimated_cost == 0


def test_api_key_never_leaks(double, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    double.add_fault("429")
    double.add_fault("500", match="doomed", times=100)
    double.add_fault("reply", match="bad", times=100, text="nope")
    config = endpoint(double, max_retries=1)
    with ChatClient(config, tmp_path, progress=False) as client:
        results = client.complete_many([ask("ok"), ask("doomed"), ask("bad", _must_be_echo)])
        texts = [repr(client), repr(config), repr(vars(client)), json.dumps(client.ledger.to_dict()),
                 repr(results), *(r.error or "" for r in results)]
    double.add_fault("401")
    with ChatClient(config, tmp_path, progress=False) as client, pytest.raises(EndpointError) as refused:
        client.complete(ask("refused"))
    texts += [str(refused.value), repr(refused.value), caplog.text]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.iterdir() if p.is_file()]
    assert not [t for t in texts if KEY in t]
    assert "HTTP 401" in str(refused.value)
    # The key travels in the Authorization header and nowhere else.
    for request in double.requests:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert KEY not in request.body
        assert KEY not in json.dumps({k: v for k, v in request.headers.items() if k != "authorization"})


def test_missing_key_variable_is_named(monkeypatch, double):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(EndpointError, match=KEY_ENV):
        ChatClient(endpoint(double))


def test_cache_rows_hold_the_request_and_reply(double, tmp_path):
    request = ask("audit me")
    with ChatClient(endpoint(double), tmp_path, progress=False) as client:
        client.complete(request)
        rows = list(client.cache.rows())
    assert len(rows) == 1
    row = rows[0]
    assert row["key"] == request_key("double-1", request.messages, {"temperature": 0.0}, "test_v1")
    assert row["reply"] == "echo: audit me" and row["attempt"] == 0
    assert json.loads(row["request"])["messages"] == request.messages
    assert isinstance(ReplyCache(tmp_path / "chat_cache.sqlite").get(row["key"], 0).reply, str)


def test_prompt_files(tmp_path):
    prompt = load_prompt("judge_v1")
    assert prompt.version == "judge_v1" and prompt.placeholders() == {"question", "response"}
    messages = prompt.render(question="{response} stays literal", response="x")
    assert "{response} stays literal" in messages[-1]["content"]
    with pytest.raises(KeyError, match="judge_v1.*response"):
        prompt.render(question="q")
    bad = tmp_path / "bad_v1.txt"
    bad.write_text("# comment\nstray text\n[user]\nhi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_v1.txt:2"):
        load_prompt(str(bad))
    with pytest.raises(FileNotFoundError, match="nope_v9"):
        load_prompt("nope_v9")


def test_the_double_marks_a_request_cut_off_mid_body(double):
    """The kill-and-resume tests leave out requests the kill cut off; the double must tell them apart."""
    port = int(double.base_url.split(":")[-1].split("/")[0])
    body = json.dumps({"model": "double-1", "messages": [{"role": "user", "content": "hello"}]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)
    assert len(double.requests) == 1
    cut = double.requests[0]
    assert not cut.complete and cut.json is None and cut.user_text() == ""
