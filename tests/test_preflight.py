"""The preflight's rules, one test each with the exact messages, on the tiny profile plus overrides
(given as command-line text, as `-s KEY VALUE` would give them)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from polyalpaca import preflight as pf
from polyalpaca.config import SettingsError, load_profile
from polyalpaca.data import LANGUAGES

KEY_ENV = "POLYALPACA_PREFLIGHT_TEST_KEY"


def tiny(**dotted) -> object:
    """The tiny profile with overrides; keys use '__' for '.' (lora__epochs -> lora.epochs)."""
    return load_profile("tiny", {key.replace("__", "."): value for key, value in dotted.items()})


def test_every_rule_is_registered():
    rules = {name for name, f in inspect.getmembers(pf, inspect.isfunction) if name.startswith("check_")}
    assert rules == {f.__name__ for f in pf.SETTINGS_RULES} | {f.__name__ for f in pf.KEY_RULES.values()}


def test_shipped_profiles_pass(monkeypatch):
    assert pf.find_problems(load_profile("tiny")) == []
    assert pf.find_problems(load_profile("cpu")) == []
    # The paper profile calls the judge (its key must be set); its test prompts carry no references.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert pf.find_problems(load_profile("paper", {"eval.likelihood": "false"})) == []


def test_methods():
    assert pf.check_methods(tiny(grid__methods="[]")) == ["grid.methods: empty; expected one or more of lora, full"]
    assert pf.check_methods(tiny(grid__methods='["full", "full"]')) == ["grid.methods: 'full' is listed more than once"]


def test_training_numbers():
    p = tiny(lora__epochs="0", lora__batch_size="0", lora__warmup_ratio="1.0", lora__lora__dropout="1.5",
             full__learning_rate="-1", full__lora__target_modules="[]")
    assert pf.check_training_numbers(p) == [
        "lora.epochs: must be > 0, got 0",
        "lora.batch_size: must be >= 1, got 0",
        "lora.warmup_ratio: must be >= 0 and < 1, got 1",
        "lora.lora.dropout: must be >= 0 and < 1, got 1.5",
        "full.learning_rate: must be > 0, got -1",
        "full.lora.target_modules: empty; name the modules that get an adapter",
    ]


def test_effective_batch():
    assert pf.check_effective_batch(tiny(lora__effective_batch="30", full__effective_batch="-1")) == [
        "lora.effective_batch: 30 is not a multiple of lora.batch_size (4)",
        "full.effective_batch: must be >= 0 (0 = use gradient_accumulation), got -1",
    ]
    assert pf.check_effective_batch(tiny(lora__effective_batch="32")) == []


def test_data_source(tmp_path):
    assert pf.check_data_source(tiny(data__source="files")) == [
        "data.files_pattern: empty; data.source = 'files' needs a pattern such as data/alpaca_{lang}.json"]
    assert pf.check_data_source(tiny(data__source="files", data__files_pattern="alpaca.json")) == [
        "data.files_pattern: 'alpaca.json' has no {lang} placeholder"]
    (tmp_path / "alpaca_en.json").write_text("[]")
    pattern = str(tmp_path / "alpaca_{lang}.json")
    assert pf.check_data_source(tiny(data__source="files", data__files_pattern=pattern)) == [
        f"data.files_pattern: no file {tmp_path}/alpaca_ru.json for training language 'ru'",
        f"data.files_pattern: no file {tmp_path}/alpaca_zh.json for training language 'zh'",
    ]


def test_test_source(tmp_path):
    assert pf.check_test_source(tiny(data__test_source=str(tmp_path / "nope"))) == [
        f"data.test_source: expected embedded, paper-url or a folder with test_{{lang}}.jsonl; no folder '{tmp_path}/nope'"]
    for lang in ("en", "ru"):
        (tmp_path / f"test_{lang}.jsonl").write_text("")
    assert pf.check_test_source(tiny(data__test_source=str(tmp_path))) == [
        f"data.test_source: {tmp_path}/test_zh.jsonl is missing (test language 'zh')",
        f"data.test_source: {tmp_path}/test_bg.jsonl is missing (test language 'bg')",
    ]
    assert pf.check_test_source(tiny(data__test_source="paper-url")) == []


def test_languages_known_to_the_project():
    p = tiny(data__train_languages='["en", "xx"]', data__test_languages='["en", "en"]', translation__languages="[]")
    assert pf.check_languages(p) == [
        f"data.train_languages: unknown language code 'xx'; known: {', '.join(LANGUAGES)}",
        "data.test_languages: 'en' is listed more than once",
        "translation.languages: empty",
    ]


def test_languages_present_in_the_embedded_data():
    p = tiny(data__train_languages='["en", "hi"]', data__test_languages='["en", "ja"]',
             data__unseen_languages='["ja"]', translation__languages='["en", "bn"]')
    assert pf.check_embedded_languages(p) == [
        "data.train_languages: 'hi' is not in the embedded training data (en, bg, cs, de, es, fi, fr, ru, zh); "
        "use data.source = hub or files for it",
        "data.test_languages: 'ja' is not in the embedded test data (en, bg, cs, de, es, fi, fr, ru, zh, bn, no); "
        "use data.test_source = paper-url or a folder for it",
        "translation.languages: 'en' is the language translated from",
        "translation.languages: 'bn' has no embedded reference translations (bg, cs, de, es, fi, fr, ru, zh)",
    ]
    assert pf.check_embedded_languages(tiny(data__source="hub", data__train_languages='["en", "hi"]')) == []


def test_unseen_languages():
    assert pf.check_unseen_languages(tiny(data__unseen_languages='["ru", "bn"]')) == [
        "data.unseen_languages: 'ru' is a training language (data.train_languages)",
        "data.unseen_languages: 'bn' is not a test language (data.test_languages)",
    ]


def test_limits():
    assert pf.check_limits(tiny(data__train_limit="0", data__test_limit="-2", data__validation_size="-1")) == [
        "data.train_limit: must be >= 1 or none (all records), got 0",
        "data.test_limit: must be >= 1 or none (all records), got -2",
        "data.validation_size: must be >= 0, got -1",
    ]
    assert pf.check_limits(tiny(data__validation_size="10")) == [
        "data.validation_size: 10 leaves nothing to train on; it must be smaller than data.train_limit (10)"]
    assert pf.check_limits(tiny(data__train_limit="none", data__validation_size="500")) == []


def test_recipes():
    assert pf.check_recipes(tiny(data__train_languages='["ru", "zh"]')) == [
        "grid.recipes: english-only needs 'en' in data.train_languages"]


def test_grid_models_and_seeds():
    assert pf.check_grid(tiny(grid__seeds="[]", grid__models="[]")) == [
        "grid.models: empty; name at least one base model", "grid.seeds: empty; give at least one training seed"]
    assert pf.check_grid(tiny(grid__seeds="[1, 2, 1]")) == ["grid.seeds: 1 is listed more than once"]


def test_findings():
    p = tiny(findings__alpha="1", findings__margins='{"quality": -0.1, "gate": 0.05}', findings__min_seeds="0")
    assert pf.check_findings(p) == [
        "findings.alpha: must be > 0 and < 1, got 1",
        "findings.margins.quality: must be >= 0, got -0.1",
        "findings.margins.gate: not a measure; expected one of quality, answer_language, robustness",
        "findings.min_seeds: must be >= 1, got 0",
    ]


def test_gate_and_likelihood_span():
    assert pf.check_gate(tiny(eval__likelihood_sentences="-1")) == ["eval.likelihood_sentences: must be >= 0, got -1"]


def test_decoding():
    p = tiny(eval__decoding__num_beams="0", eval__decoding__max_new_tokens="0", eval__decoding__batch_size="0",
             eval__decoding__no_repeat_ngram_size="-1", eval__decoding__repetition_penalty="0",
             eval__decoding_full__num_beams="0")
    assert pf.check_decoding(p) == [
        "eval.decoding.num_beams: must be >= 1, got 0",
        "eval.decoding.max_new_tokens: must be > 0, got 0",
        "eval.decoding.batch_size: must be > 0, got 0",
        "eval.decoding.no_repeat_ngram_size: must be >= 0, got -1",
        "eval.decoding.repetition_penalty: must be > 0, got 0",
        "eval.decoding_full.num_beams: must be >= 1, got 0",
    ]


def test_eval_backend():
    assert pf.check_eval_backend(tiny(eval__backend="server")) == [
        "eval.server.base_url: empty; eval.backend = 'server' needs the server's URL, e.g. http://localhost:8000/v1"]
    # Decoding a completions server cannot do is reported before any run.
    served = tiny(eval__backend="server", eval__server__base_url="http://localhost:8000/v1",
                  eval__decoding__no_repeat_ngram_size="6")
    assert pf.check_eval_backend(served) == [
        "eval.decoding.no_repeat_ngram_size = 6: no completions server (vLLM, llama.cpp, TGI) implements it; set it "
        "to 0 for eval.backend = 'server', or answer in-process (eval.backend = 'local')"]


def test_likelihood_needs_test_prompts_with_references(tmp_path):
    assert pf.check_likelihood_references(tiny(data__test_source="paper-url")) == [
        "eval.likelihood: the paper's test prompts (data.test_source = 'paper-url') have no reference answers "
        "to score; set eval.likelihood false"]
    assert pf.check_likelihood_references(tiny(data__test_source="paper-url", eval__likelihood="false")) == []
    for lang in ("en", "ru", "zh", "bg"):
        (tmp_path / f"test_{lang}.jsonl").write_text(json.dumps({"id": "1", "prompt": "Hi?", "reference": "Hi."}) + "\n")
    assert pf.check_likelihood_references(tiny(data__test_source=str(tmp_path))) == []
    (tmp_path / "test_ru.jsonl").write_text(json.dumps({"id": "1", "prompt": "Привет?"}) + "\n")
    assert pf.check_likelihood_references(tiny(data__test_source=str(tmp_path))) == [
        f"eval.likelihood: {tmp_path}/test_ru.jsonl:1 has no reference answer; set eval.likelihood false or add references"]


def test_judge_needs_url_and_model():
    assert pf.check_judge(tiny(eval__judge__base_url="http://localhost:9/v1")) == [
        "eval.judge.model: empty, but eval.judge.base_url is set; give both, or neither for offline scores"]
    assert pf.check_judge(tiny(eval__judge__model="gpt-x")) == [
        "eval.judge.base_url: empty, but eval.judge.model is set; give both, or neither for offline scores"]


def test_judge_key_is_in_the_environment_and_never_shown(monkeypatch):
    p = tiny(eval__judge__base_url="http://localhost:9/v1", eval__judge__model="gpt-x", eval__judge__api_key_env=KEY_ENV)
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert pf.check_judge_key(p) == [
        f"eval.judge.api_key_env: the environment variable {KEY_ENV} is not set; the judge (gpt-x) needs its key "
        "(or set eval.judge.base_url and eval.judge.model to '' for offline scores only)"]
    monkeypatch.setenv(KEY_ENV, "sk-secret-value")
    assert pf.check_judge_key(p) == []
    monkeypatch.setenv(KEY_ENV, "")
    assert "sk-secret-value" not in " ".join(pf.check_judge_key(p)) and pf.check_judge_key(p)


def test_translation():
    assert pf.check_translation(tiny(translation__backend="api", translation__records="0")) == [
        "translation.base_url: empty; translation.backend = 'api' needs the endpoint's URL",
        "translation.records: must be >= 1, got 0",
    ]


def test_translation_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = tiny(translation__backend="api", translation__base_url="http://localhost:9/v1", translation__api_key_env=KEY_ENV)
    assert pf.check_translation_key(p) == [
        f"translation.api_key_env: the environment variable {KEY_ENV} is not set; translation.backend = 'api' needs its key"]
    assert pf.check_translation_key(tiny()) == []


def test_server_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = tiny(eval__backend="server", eval__server__base_url="http://localhost:8000/v1", eval__server__api_key_env=KEY_ENV)
    assert pf.check_server_key(p) == [
        f"eval.server.api_key_env: the environment variable {KEY_ENV} is not set; eval.backend = 'server' needs its "
        "key (or set eval.server.api_key_env to '' for a server without one)"]
    assert pf.check_server_key(tiny(eval__backend="server", eval__server__api_key_env="")) == []


def test_book():
    assert pf.check_book(tiny(book__chapter_timeout_s="0")) == ["book.chapter_timeout_s: must be > 0, got 0"]


def test_preflight_lists_type_and_rule_problems_together():
    with pytest.raises(SettingsError) as err:
        pf.preflight("tiny", {"lora.epochs": "abc", "lora.loss_on": "everything", "data.train_languages": '["en", "xx"]'})
    assert str(err.value) == (
        "the profile has 3 problems:\n"
        "  - lora.epochs: expected a number, got 'abc'\n"
        "  - lora.loss_on: expected all or response, got 'everything'\n"
        f"  - data.train_languages: unknown language code 'xx'; known: {', '.join(LANGUAGES)}")
    assert len(err.value.problems) == 3


def test_endpoints_choose_which_keys_are_needed(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    overrides = {"eval.judge.base_url": "http://localhost:9/v1", "eval.judge.model": "gpt-x",
                 "eval.judge.api_key_env": KEY_ENV}
    assert pf.preflight("tiny", overrides, endpoints=()).eval.judge.model == "gpt-x"
    with pytest.raises(SettingsError, match=f"the environment variable {KEY_ENV} is not set"):
        pf.preflight("tiny", overrides)


def test_chapter_setup_stops_before_loading_anything(tmp_path):
    """A chapter's first cell with a bad override: one exception with every problem, nothing
    written, torch not imported."""
    code = (
        "import sys\n"
        "from polyalpaca import chapter\n"
        "from polyalpaca.config import SettingsError\n"
        f"try:\n    chapter.setup('tiny', {str(tmp_path)!r}, {{'lora.epochs': 'abc'}})\n"
        "except SettingsError as exc:\n    print(exc)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the profile has 1 problem:\n  - lora.epochs: expected a number, got 'abc'\n"
    assert list(tmp_path.iterdir()) == []


def test_dose_settings_are_checked_together():
    """The dose recipe's settings: every problem named with its key, at once."""
    from polyalpaca.preflight import SettingsError, preflight

    with pytest.raises(SettingsError) as err:
        preflight("tiny", {"grid.doses": [0, 8, 8], "grid.dose_language": "en", "grid.dose_seeds": 3})
    text = str(err.value)
    assert "grid.dose_language: 'en' is not a non-English training language" in text
    assert "grid.doses: 0 is not between 0 and 8" in text and "grid.doses: 8 is listed more than once" in text
    assert "grid.dose_seeds: 3 is not between 0 (every seed) and 1" in text
    assert pf.check_doses(load_profile("tiny", {"grid.recipes": '["english-only"]', "grid.doses": "[0]"})) == []


def test_the_second_language_of_the_dose_chapter_is_checked():
    """``grid.dose_mix_language``: not English, the dose language or an unseen language, with
    training data, and every dose splits into two non-empty halves."""
    problems = pf.check_doses(load_profile("tiny", {"grid.dose_mix_language": "bg", "grid.doses": "[1, 2]"}))
    assert any(p.startswith("grid.dose_mix_language: 'bg' must differ from") for p in problems)
    assert "grid.doses: 1 cannot be split between two languages" in " ".join(problems)
    assert any("'ru'" in p for p in pf.check_doses(load_profile("tiny", {"grid.dose_mix_language": "ru"})))
    assert any("not in the embedded training data" in p
               for p in pf.check_doses(load_profile("tiny", {"grid.dose_mix_language": "bn"})))
    assert pf.check_doses(load_profile("tiny")) == [] and pf.check_doses(load_profile("cpu", {"grid.dose_mix_language": "cs"})) == []
    assert any(p.startswith("grid.dose_mix_language: unknown language code 'xx'")
               for p in pf.check_languages(load_profile("tiny", {"grid.dose_mix_language": "xx"})))
