"""Translation against the OpenAI test double (and a tiny local model): protected spans, checks,
failures, order, the CLI, and resuming after ``kill -9``."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openai_double import OpenAIDouble, endpoint_settings, fake_translation
from polyalpaca.config import TranslationSettings
from polyalpaca.langid import detect_language
from polyalpaca.llm_client import ChatClient, EndpointConfig, ChatPrompt, InvalidReply, ReplyCache, load_prompt
from polyalpaca.metrics import chrf_by_language
from polyalpaca.translate import (COMMAND_PROMPT_VERSION, ApiBackend, LocalBackend, TranslationJob,
                                  chrf_for_translations, protect, read_records, to_translate,
                                  translate_records)


def chat_settings(*languages: str, **settings) -> TranslationSettings:
    """Translation settings into ``languages`` with the command's chat prompt (unless given)."""
    return TranslationSettings(languages=list(languages), **{"prompt_version": COMMAND_PROMPT_VERSION, **settings})


def translate_main(argv: list[str]) -> int:
    """``polyalpaca translate ARGV`` through the project's one parser."""
    from polyalpaca.cli import main

    return main(["translate", *argv])


ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "POLYALPACA_TEST_API_KEY"
KEY = "sk-test-SECRET-translate-42"

CODE = "```python\nfor i in range(3):\n    print(i)\n```"
RECORDS = [
    {"id": "a", "instruction": "Explain what the following program prints and why it does so.",
     "input": CODE, "output": "It prints the numbers 0, 1 and 2, one per line, because range(3) stops early."},
    {"id": "b", "instruction": "Write a friendly greeting for {name} that mentions https://example.com/docs.",
     "input": "", "output": "Hello {name}! Please have a look at https://example.com/docs before 10:30 today."},
    {"id": "c", "instruction": "Use `git status` to see which files have changed in the working tree.",
     "input": "", "output": "42"},
]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def client_for(double: OpenAIDouble, cache=None, **overrides) -> ChatClient:
    settings = endpoint_settings(double, KEY_ENV, **{"model": "double-1", "max_retries": 3, **overrides})
    return ChatClient(EndpointConfig(**settings), cache, progress=False)


def spans(text: str) -> list[str]:
    return list(protect(text).spans)


# -- protected spans --------------------------------------------------------------------------
def test_protect_and_restore_round_trip():
    text = "Call {name} at 10:30, see https://example.com/a?b=1. Pi is 3.14; run `ls -la` then\n" + CODE
    protected = protect(text)
    assert protected.spans == ("{name}", "10:30", "https://example.com/a?b=1", "3.14", "`ls -la`", CODE)
    assert "{" not in protected.text and "http" not in protected.text and "print" not in protected.text
    assert protected.restore(protected.text) == text
    assert protected.restore(protected.text.replace("⟦1⟧", "⟦ 1 ⟧")) == text  # spacing is tolerated
    with pytest.raises(InvalidReply, match="missing ⟦2⟧"):
        protected.restore(protected.text.replace("⟦2⟧", ""))
    with pytest.raises(InvalidReply, match="duplicated or unknown ⟦0⟧ ⟦9⟧"):
        protected.restore(protected.text + " ⟦0⟧ ⟦9⟧")


def test_fields_without_words_are_not_translated():
    assert to_translate("") is None and to_translate("   ") is None
    assert to_translate("42") is None and to_translate(CODE) is None and to_translate("https://x.org") is None
    assert to_translate("Look at https://x.org") is not None


def test_reply_checks():
    job = TranslationJob(protect("Send the report to {boss} before Friday evening, please."), "en", "fr")
    good = f"<translation>{fake_translation(job.protected.text, 'fr')}</translation>"
    assert "{boss}" in job.protected.restore(job.check_reply(good))
    with pytest.raises(InvalidReply, match="one <translation>"):
        job.check_reply("Bien sûr ! Voici la traduction.")
    with pytest.raises(InvalidReply, match="missing ⟦0⟧"):
        job.check_reply(good.replace("⟦0⟧", ""))
    with pytest.raises(InvalidReply, match="expected 'fr'"):
        job.check_reply(f"<translation>{job.protected.text}</translation>")


# -- API backend ------------------------------------------------------------------------------
def test_translation_keeps_spans_empties_and_order(double):
    config = chat_settings("fr", "de")
    with client_for(double) as client:
        out = translate_records(RECORDS, config, ApiBackend(client))
    assert [(t.language, t.index) for t in out] == [(lang, i) for lang in ("fr", "de") for i in range(3)]
    assert all(t.ok and not t.failures for t in out)
    for item in out:
        source, new = RECORDS[item.index], item.record
        assert new["id"] == source["id"]
        for name in ("instruction", "input", "output"):
            assert spans(new[name]) == spans(source[name]), (item.language, item.index, name)
        assert detect_language(new["instruction"]) == item.language
    a_fr = out[0].record
    assert a_fr["input"] == CODE and "0, 1 and 2" not in a_fr["output"] and "range(3)" not in a_fr["output"]
    assert out[1].record["input"] == "" and out[2].record["output"] == "42"  # empty / number-only: kept
    # 2 languages x 6 texts with words (the code-only input, the empty inputs and "42" need no request)
    assert double.request_count() == 2 * 5


def test_texts_differing_only_in_protected_spans_share_one_request(double):
    records = [{"instruction": "Add the two numbers and explain every step of the sum.", "input": "2 and 3",
                "output": "The sum of 2 and 3 is 5, as counting on from the first number shows."},
               {"instruction": "Add the two numbers and explain every step of the sum.", "input": "40 and 2",
                "output": "The sum of 40 and 2 is 42, as counting on from the first number shows."}]
    with client_for(double) as client:
        out = translate_records(records, chat_settings("es"), ApiBackend(client))
    assert double.request_count() == 3  # instruction, input ("⟦0⟧ and ⟦1⟧") and output: once each
    assert [spans(t.record["output"]) for t in out] == [["2", "3", "5"], ["40", "2", "42"]]
    assert [spans(t.record["input"]) for t in out] == [["2", "3"], ["40", "2"]]
    assert out[0].record["input"] != "2 and 3"  # translated


def test_wrong_language_is_retried_then_reported(double):
    double.add_fault("wrong_language", match="friendly greeting", times=1)
    double.add_fault("wrong_language", match="working tree", times=100)
    double.add_fault("drop_token", match="Please have a look", times=1)
    double.add_fault("reply", match="the following program", times=1, text="Sure! Here you go.")
    with client_for(double) as client:
        out = translate_records(RECORDS, chat_settings("fr"), ApiBackend(client))
        ledger = client.ledger.to_dict()
    assert out[0].ok and out[1].ok  # one bad reply each, then a good one
    assert not out[2].ok and out[2].record is None
    (failure,) = out[2].failures
    assert (failure.index, failure.language, failure.field) == (2, "fr", "instruction")
    assert "expected 'fr'" in failure.reason and len(failure.replies) == 3
    assert ledger["invalid_replies"] == 3 + 3 and ledger["failed"] == 1


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="record 1: field 'input' is missing"):
        translate_records([RECORDS[0], {"instruction": "x", "output": "y"}], chat_settings("fr"), None)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        translate_records(RECORDS, chat_settings("xx"), None)


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"in.jsonl:3: not valid JSON"):
        read_records(path)
    path.write_text(json.dumps({"instruction": "x", "input": 3, "output": ""}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"in.jsonl:1: field 'input' must be a string, got int"):
        read_records(path)


# -- command line -----------------------------------------------------------------------------
def write_records(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cli_args(double, tmp_path, languages="fr,de") -> list[str]:
    return ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
            "--languages", languages, "--base-url", double.base_url, "--model", "double-1",
            "--api-key-env", KEY_ENV, "--concurrency", "4", "--cache", str(tmp_path / "cache"),
            "--ledger", str(tmp_path / "ledger.json"), "--no-progress"]


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_translates_then_reruns_from_cache(double, tmp_path, capsys):
    write_records(tmp_path / "in.jsonl", RECORDS)
    assert translate_main(cli_args(double, tmp_path)) == 0
    rows = read_output(tmp_path / "out.jsonl")
    assert [(r["language"], r["source_index"], r["id"]) for r in rows] == \
        [(lang, i, RECORDS[i]["id"]) for lang in ("fr", "de") for i in range(3)]
    first = json.loads((tmp_path / "ledger.json").read_text())
    assert first["requests"] == 10 and first["cache_hits"] == 0
    assert translate_main(cli_args(double, tmp_path)) == 0
    again = json.loads((tmp_path / "ledger.json").read_text())
    assert again["requests"] == 0 and again["cache_hits"] == 10 and double.request_count() == 10
    assert read_output(tmp_path / "out.jsonl") == rows
    assert KEY not in capsys.readouterr().err


def test_cli_reports_failures_and_never_writes_them(double, tmp_path):
    write_records(tmp_path / "in.jsonl", RECORDS)
    double.add_fault("wrong_language", match="working tree", times=100)
    assert translate_main(cli_args(double, tmp_path, languages="fr")) == 1
    rows = read_output(tmp_path / "out.jsonl")
    assert [r["source_index"] for r in rows] == [0, 1]
    failures = read_output(tmp_path / "out.jsonl.failures.jsonl")
    assert [(f["index"], f["language"], f["field"]) for f in failures] == [(2, "fr", "instruction")]
    assert failures[0]["replies"] and "expected 'fr'" in failures[0]["reason"]


def test_cli_help_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as done:
        translate_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--input", "--output", "--languages", "--backend", "--base-url", "--model", "--api-key-env",
                 "--concurrency", "--cache", "--ledger"):
        assert flag in text
    with pytest.raises(SystemExit):
        translate_main(["--input", "a", "--output", "b", "--languages", "fr", "--model", "m",
                        "--backend", "local", "--cache", "c"])
    assert "--cache only apply to --backend api" in capsys.readouterr().err


def test_cli_errors_name_the_problem(double, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n", encoding="utf-8")
    assert translate_main(cli_args(double, tmp_path)) == 2
    assert "in.jsonl:2: expected a JSON object, got list" in capsys.readouterr().err
    write_records(tmp_path / "in.jsonl", RECORDS)
    double.add_fault("401")
    assert translate_main(cli_args(double, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and KEY_ENV in err and KEY not in err
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(SystemExit):
        translate_main(cli_args(double, tmp_path) + ["--max-new-tokens", "5"])
    assert "--max-new-tokens only apply to --backend local" in capsys.readouterr().err


# -- kill -9 and resume -----------------------------------------------------------------------
def many_records(n: int) -> list[dict]:
    subjects = ["garden", "river", "library", "mountain", "kitchen", "harbour", "forest", "market"]
    things = ["morning light", "old bicycle", "quiet evening", "winter coat", "paper boat"]
    pairs = list(itertools.product(subjects, things))[:n]
    return [{"id": f"r{i}", "instruction": f"Describe the {s} and the {t} in a few careful sentences.",
             "input": "" if i % 2 else f"The {s} was crowded while the {t} waited nearby.",
             "output": f"The {s} looked peaceful, and the {t} made everything feel calm and warm."}
            for i, (s, t) in enumerate(pairs)]


def run_cli_subprocess(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "polyalpaca", "translate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_midway_then_resume_sends_nothing_twice(double, tmp_path):
    records = many_records(30)
    write_records(tmp_path / "in.jsonl", records)
    args = cli_args(double, tmp_path)
    double.latency_s = 0.05
    proc = run_cli_subprocess(args)
    deadline = time.monotonic() + 60
    while double.request_count() < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err1 = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "out.jsonl").exists()

    cache = ReplyCache(tmp_path / "cache" / "chat_cache.sqlite")
    cached = {json.loads(row["request"])["messages"][-1]["content"] for row in cache.rows()}
    cache.close()
    # A request the kill cut off mid-body never reached the server as a request: leave it out.
    restart = time.time()
    first_run = [r.user_text() for r in double.requests if r.complete and r.received_at < restart]
    assert 0 < len(cached) <= len(first_run)

    double.latency_s = 0.0
    proc = run_cli_subprocess(args)
    _, err2 = proc.communicate(timeout=60)
    assert proc.returncode == 0, err2
    second_run = [r.user_text() for r in double.requests if r.complete and r.received_at >= restart]
    assert not set(second_run) & cached, "a request whose reply was cached was sent again"
    assert len(second_run) == len(set(second_run))
    assert len(set(second_run) & set(first_run)) <= 4  # at most the requests in flight at the kill
    jobs = {t for r in records for t in (r["instruction"], r["input"], r["output"]) if t}
    assert len(set(first_run) | set(second_run)) == 2 * len(jobs)

    rows = read_output(tmp_path / "out.jsonl")
    assert [(r["language"], r["id"]) for r in rows] == [(lang, r["id"]) for lang in ("fr", "de") for r in records]
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert ledger["cache_hits"] == len(cached) and ledger["requests"] == len(second_run)
    assert KEY not in err1 + err2


# -- local backend ----------------------------------------------------------------------------
def test_local_backend_plumbing_with_a_fake_generator(monkeypatch):
    calls = []

    def fake_generate(model, tokenizer, prompts, decoding, on_batch=None):
        calls.append(decoding)
        replies = []
        for prompt in prompts:
            text = re.search(r"<source>\n(.*?)\n</source>", prompt, re.S).group(1)
            target = re.search(r"Target language: .*?\((\w+)\)", prompt).group(1)
            broken = "working tree" in text  # this one comes back unusable
            replies.append("no tags here" if broken else f"<translation>{fake_translation(text, target)}</translation>")
        if on_batch:
            on_batch(len(prompts))
        return replies

    monkeypatch.setattr("polyalpaca.generate.generate_texts", fake_generate)
    out = translate_records(RECORDS, chat_settings("es", max_new_tokens=99),
                            LocalBackend(model=None, tokenizer=None, progress=False))
    assert calls[0].max_new_tokens == 99 and calls[0].stop_strings == ()
    assert [t.ok for t in out] == [True, True, False]
    assert out[0].record["input"] == CODE and spans(out[1].record["output"]) == spans(RECORDS[1]["output"])
    assert out[2].failures[0].field == "instruction" and "one <translation>" in out[2].failures[0].reason


def test_local_backend_with_a_tiny_random_model():
    from polyalpaca.models import load_model, load_tokenizer, tiny_gemma_folder

    folder = str(tiny_gemma_folder())
    backend = LocalBackend(load_model(folder), load_tokenizer(folder), progress=False)
    config = chat_settings("fr", max_new_tokens=4, batch_size=4)
    out = translate_records(RECORDS, config, backend)
    # A random model writes garbage: every field needing translation is reported, none is written.
    assert [t.index for t in out] == [0, 1, 2] and not any(t.ok for t in out)
    assert [[f.field for f in t.failures] for t in out] == [["instruction", "output"], ["instruction", "output"],
                                                            ["instruction"]]
    assert all(len(f.replies) == 1 for t in out for f in t.failures)


# -- chrF ---------------------------------------------------------------------------------------
def test_chrf_per_language():
    refs = {"fr": ["le chat dort", "il pleut"], "de": ["die Katze schläft"]}
    scores = chrf_by_language({"fr": ["le chat dort", "il pleut"], "de": ["der Hund bellt"]}, refs)
    assert scores["fr"] == pytest.approx(100.0) and 0 <= scores["de"] < 50
    with pytest.raises(ValueError, match="fr: 1 hypotheses but 2 references"):
        chrf_by_language({"fr": ["x"]}, refs)
    with pytest.raises(KeyError, match="'es'"):
        chrf_by_language({"es": ["x"]}, refs)


def test_chrf_for_translated_records(double):
    with client_for(double) as client:
        out = translate_records(RECORDS, chat_settings("fr"), ApiBackend(client))
    references = {"fr": [t.record for t in out]}
    assert chrf_for_translations(out, references) == {"fr": pytest.approx(100.0)}


def test_base_model_prompt_with_worked_examples_and_stops(monkeypatch):
    prompt = load_prompt("translate_base_v2")
    assert prompt.stop == ("\n\n",) and "{example_source}" in prompt.example
    job = TranslationJob(protect("Add 2 and 3."), "en", "es",
                         examples=(("Name a colour.", "Nombra un color."), ("Say hi.", "Di hola.")))
    text = job.messages(prompt)[0]["content"]
    assert text == ("English: Name a colour.\nSpanish: Nombra un color.\n\n"
                    "English: Say hi.\nSpanish: Di hola.\n\nEnglish: Add ⟦0⟧ and ⟦1⟧.\nSpanish:")
    calls = []

    def fake_generate(model, tokenizer, prompts, decoding, on_batch=None):
        calls.append(decoding)
        return [" Suma ⟦0⟧ y ⟦1⟧." for _ in prompts]  # the continuation, cut at the stop string

    monkeypatch.setattr("polyalpaca.generate.generate_texts", fake_generate)
    config = chat_settings("es", prompt_version="translate_base_v2")
    out = translate_records([{"instruction": "Add 2 and 3.", "input": "", "output": "5"}], config,
                            LocalBackend(model=None, tokenizer=None, progress=False),
                            examples={"es": [["Name a colour.", "Nombra un color."]]})
    assert calls[0].stop_strings == ("\n\n",)
    assert out[0].ok and out[0].record == {"instruction": "Suma 2 y 3.", "input": "", "output": "5"}


def test_a_reply_that_continues_the_worked_examples_is_rejected(monkeypatch):
    """A base model that writes its translation and then goes on with the prompt's pattern
    ("English: ..." on the next line) is not translating: the reply is rejected and reported."""
    def fake_generate(model, tokenizer, prompts, decoding, on_batch=None):
        return [" Di hola al mundo.\nEnglish: Say bye.\nSpanish: Di adiós." if "world" in p else " Di hola."
                for p in prompts]

    monkeypatch.setattr("polyalpaca.generate.generate_texts", fake_generate)
    config = chat_settings("es", prompt_version="translate_base_v2")
    records = [{"instruction": "Say hello to the world.", "input": "", "output": ""},
               {"instruction": "Say hi.", "input": "", "output": ""}]
    out = translate_records(records, config, LocalBackend(model=None, tokenizer=None, progress=False),
                            examples={"es": [["Name a colour.", "Nombra un color."]]})
    assert [t.ok for t in out] == [False, True]
    assert "continues the prompt's worked examples ('English: Say bye.')" in out[0].failures[0].reason
    assert out[1].record["instruction"] == "Di hola."


def test_cli_worked_examples_file_is_checked(double, tmp_path, capsys):
    from polyalpaca.translate import read_examples

    good = tmp_path / "examples.json"
    good.write_text(json.dumps({"es": [["Say hi.", "Di hola."]]}), encoding="utf-8")
    assert read_examples(good) == {"es": [["Say hi.", "Di hola."]]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"es": [["Say hi."]]}), encoding="utf-8")
    write_records(tmp_path / "in.jsonl", RECORDS)
    with pytest.raises(SystemExit):
        translate_main(cli_args(double, tmp_path) + ["--examples", str(bad)])
    assert "bad.json: 'es'[0]: expected [source, translation]" in capsys.readouterr().err
    bad.write_text('{"es": [\n["a", ', encoding="utf-8")
    with pytest.raises(SystemExit):
        translate_main(cli_args(double, tmp_path) + ["--examples", str(bad)])
    assert "bad.json: line 2: invalid JSON" in capsys.readouterr().err


def test_tagged_base_prompt_uses_the_same_example_mechanism():
    job = TranslationJob(protect("Say hello."), "en", "fr", examples=(("Say hi.", "Dis salut."),))
    text = job.messages(load_prompt("translate_base_v1"))[0]["content"]
    assert text.endswith("English: <source>Say hi.</source>\nFrench: <translation>Dis salut.</translation>\n\n"
                         "English: <source>Say hello.</source>\nFrench: <translation>")
    broken = ChatPrompt(version="x", system="", user="{examples}", example="{example_target} {nope}")
    with pytest.raises(KeyError, match="nope"):
        broken.render([("a", "b")])
