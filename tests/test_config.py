"""Typed settings (``polyalpaca.config``): profiles, overrides checked against the declared types,
every problem at once, help for every setting, and which settings enter cache keys."""
import json
import subprocess
import sys

import pytest

from polyalpaca.config import (DecodingConfig, Scheduler, SettingsError, allowed, available_profiles, describe_type,
                               load_profile, settings_help)


def test_profiles_load_and_differ():
    assert {"tiny", "cpu", "paper"} <= set(available_profiles())
    paper = load_profile("paper")
    assert paper.lora.lora.r == 8 and paper.lora.lora.alpha == 16 and paper.lora.epochs == 5
    assert paper.lora.loss_on == "all" and paper.full.loss_on == "response" and paper.full.epochs == 3
    assert paper.eval.decoding.num_beams == 4 and paper.eval.decoding_full.repetition_penalty == 1.1
    assert paper.data.validation_size == 1000


def test_overrides_and_typos():
    p = load_profile("tiny", {"lora.epochs": 3, "data.seed": 7})
    assert p.lora.epochs == 3 and p.data.seed == 7
    with pytest.raises(SettingsError) as err:
        load_profile("tiny", {"lora.epoch": 3, "lorra.epochs": 2})
    assert err.value.problems == [
        "lora.epoch: unknown setting; known in [lora]: batch_size, best_by_validation, effective_batch, epochs, "
        "eval_every_epoch, fast_path, gradient_accumulation, gradient_checkpointing, learning_rate, logging_steps, "
        "lora, loss_on, max_length, method, precision, scheduler, seed, template, use_validation, validation_limit, "
        "warmup_ratio, warmup_steps, weight_decay",
        "lorra: unknown setting; known at the top level: book, data, description, estimate, estimate_device, estimate_mfu, "
        "estimate_tflops, eval, findings, full, grid, lora, name, storage, tokens_per_second_estimate, translation",
    ]
    with pytest.raises(FileNotFoundError, match="available"):
        load_profile("nope")


def problems(overrides: dict, profile: str = "tiny") -> list[str]:
    """The problems ``load_profile`` reports (it must report some)."""
    with pytest.raises(SettingsError) as err:
        load_profile(profile, overrides)
    return err.value.problems


def test_values_are_checked_against_the_declared_types():
    assert problems({"lora.epochs": "abc"}) == ["lora.epochs: expected a number, got 'abc'"]
    assert problems({"lora.batch_size": 2.5}) == ["lora.batch_size: expected a whole number, got 2.5"]
    assert problems({"lora.batch_size": True}) == ["lora.batch_size: expected a whole number, got True"]
    assert problems({"data.train_limit": "all"}) == ["data.train_limit: expected a whole number or none, got 'all'"]
    assert problems({"lora.fast_path": "yes"}) == ["lora.fast_path: expected true or false, got 'yes'"]
    assert problems({"eval.judge.model": 3}) == ["eval.judge.model: expected a string, got 3"]
    assert problems({"data.train_languages": "en,ru"}) == ["data.train_languages: expected a list of strings, got 'en,ru'"]
    assert problems({"grid.seeds": '[1, "two"]'}) == ["grid.seeds: expected a list of whole numbers, got '[1, \"two\"]'"]
    assert problems({"findings.margins": {"quality": "wide"}}) == [
        "findings.margins: expected a table of numbers, got {'quality': 'wide'}"]
    assert problems({"eval.decoding.stop_strings": "###"}) == [
        "eval.decoding.stop_strings: expected a list of strings, got '###'"]
    assert problems({"eval.decoding_full": "beams"}) == ["eval.decoding_full: expected a table of settings or none, got 'beams'"]
    assert problems({"eval.decoding_full.num_beams": "four"}) == ["eval.decoding_full.num_beams: expected a whole number, got 'four'"]
    assert problems({"lora.lora": 3}) == ["lora.lora: expected a table of settings, got 3"]
    assert problems({"lora.epochs.x": 1}) == ["lora.epochs.x: lora.epochs is a single value, not a table of settings"]
    assert problems({"lora.learning_rate": "nan"}) == ["lora.learning_rate: expected a number, got 'nan'"]


def test_a_long_value_is_shown_shortened():
    assert problems({"lora.epochs": "abc" * 300}) == [f"lora.epochs: expected a number, got {repr('abc' * 300)[:57]}..."]


def test_every_problem_is_reported_at_once():
    assert problems({"lora.epochs": "abc", "full.batch_size": "x", "grid.nope": 1}) == [
        "lora.epochs: expected a number, got 'abc'",
        "full.batch_size: expected a whole number, got 'x'",
        "grid.nope: unknown setting; known in [grid]: compute_note, dose_language, dose_mix_language, dose_seeds, doses, "
        "methods, model_params_billions, models, recipes, records_per_language_estimate, seeds, tokens_per_example_estimate",
    ]
    with pytest.raises(SettingsError, match=r"^the profile has 3 problems:\n  - lora.epochs: "):
        load_profile("tiny", {"lora.epochs": "abc", "full.batch_size": "x", "grid.nope": 1})


def test_command_line_text_converts_where_unambiguous():
    p = load_profile("tiny", {"lora.epochs": "2", "lora.learning_rate": "1e-3", "lora.batch_size": "8",
                              "lora.fast_path": "TRUE", "data.train_limit": "none", "data.test_limit": "null",
                              "data.train_languages": '["en", "ru"]', "grid.seeds": "[1, 2]",
                              "findings.margins": '{"quality": 0.1}', "eval.decoding.stop_strings": '["###"]',
                              "eval.judge.model": "123", "eval.decoding_full": "none"})
    assert p.lora.epochs == 2 and isinstance(p.lora.epochs, float)  # a float field holds a float
    # One setting, one run id: 0, 0.0 and "0" for a float field are the same value.
    same = [load_profile("tiny", {"lora.lora.dropout": v}).lora.lora.dropout for v in (0, 0.0, "0")]
    assert all(d == 0.0 and isinstance(d, float) for d in same)
    assert p.lora.learning_rate == 0.001 and p.lora.batch_size == 8 and p.lora.fast_path is True
    assert p.data.train_limit is None and p.data.test_limit is None
    assert p.data.train_languages == ["en", "ru"] and p.grid.seeds == [1, 2]
    assert p.findings.margins == {"quality": 0.1} and p.eval.decoding.stop_strings == ("###",)
    assert p.eval.judge.model == "123" and p.eval.decoding_full is None
    full = load_profile("tiny", {"eval.decoding_full.num_beams": "4"}).eval.decoding_full
    assert full == DecodingConfig(num_beams=4)


def test_typed_overrides_equal_text_overrides():
    typed = load_profile("tiny", {"lora.epochs": 2, "grid.methods": ["lora"], "data.train_limit": None})
    text = load_profile("tiny", {"lora.epochs": "2", "grid.methods": '["lora"]', "data.train_limit": "none"})
    assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(text.to_dict(), sort_keys=True)


def test_a_toml_mistake_names_the_file(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text('[lora]\nepochs = "many"\n[data\n')
    with pytest.raises(SettingsError, match="mine.toml: not valid TOML"):
        load_profile(str(bad))
    bad.write_text('[lora]\nepochs = "many"\n')
    assert problems({}, str(bad)) == ["lora.epochs: expected a number, got 'many'"]


def test_every_setting_has_help():
    rows = settings_help(load_profile("cpu"))
    assert ("lora.epochs", "a number", "1.0", "passes over the training set") in rows
    assert ("eval.decoding_full", "a table of settings or none", "null",
            "decoding for full fine-tuning, when it differs") in rows
    assert [key for key, _, _, text in rows if not text] == []


def test_config_and_generate_share_decoding_without_torch():
    from polyalpaca import config

    assert config.DecodingConfig is __import__("polyalpaca.generate", fromlist=["x"]).DecodingConfig
    code = "import sys; from polyalpaca.config import load_profile; load_profile('paper'); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_new_settings_enter_keys_only_when_changed():
    """Settings added for the paper profile keep the run ids and cache keys of results made before
    them (at their defaults), and change them when set."""
    import dataclasses

    from polyalpaca.config import TrainConfig, keyed_settings

    assert keyed_settings(TrainConfig()) == {k: v for k, v in dataclasses.asdict(TrainConfig()).items()
                                              if k not in ("template", "use_validation", "validation_limit")}
    assert keyed_settings(DecodingConfig()) == {k: v for k, v in dataclasses.asdict(DecodingConfig()).items()
                                                if k not in ("template", "skip_special_tokens")}
    assert keyed_settings(TrainConfig(template="alpaca-full"))["template"] == "alpaca-full"


def test_paper_profile_follows_the_released_code_per_method():
    p = load_profile("paper")
    assert (p.lora.template, p.lora.validation_limit, p.lora.best_by_validation) == ("alpaca", 1000, True)
    assert (p.full.template, p.full.use_validation, p.full.best_by_validation) == ("alpaca-full", False, False)
    assert p.eval.decoding.repetition_penalty == 1.0 and p.eval.decoding_full.repetition_penalty == 1.1
    assert p.eval.decoding_full.template == "alpaca-full-inference" and not p.eval.decoding_full.skip_special_tokens
    assert p.eval.decoding_full.stop_strings == ("### Response:",) and p.eval.decoding.stop_strings == ("\n### ",)


def test_allowed_values_are_declared_on_the_fields_and_checked_with_the_types():
    """One home per setting: a value outside a field's ``Literal`` is a problem of its type."""
    assert problems({"grid.methods": '["lora", "lorra"]'}) == [
        'grid.methods: expected a list of values among lora, full, got \'["lora", "lorra"]\'']
    assert problems({"grid.recipes": '["bilingual"]'}) == [
        "grid.recipes: expected a list of values among monolingual, multilingual, english-only, downsampled, "
        "dose, got '[\"bilingual\"]'"]
    assert problems({"lora.loss_on": "everything"}) == ["lora.loss_on: expected all or response, got 'everything'"]
    assert problems({"full.scheduler": "cosin"}) == [f"full.scheduler: expected {describe_type(Scheduler)}, got 'cosin'"]
    assert problems({"lora.precision": "fp16"}) == ["lora.precision: expected auto, fp32 or bf16, got 'fp16'"]
    assert problems({"full.gradient_checkpointing": "yes"}) == [
        "full.gradient_checkpointing: expected auto, on or off, got 'yes'"]
    assert problems({"data.source": "disk"}) == ["data.source: expected embedded, hub or files, got 'disk'"]
    assert problems({"eval.gate_languages": "some", "eval.english_answers": "never"}) == [
        "eval.gate_languages: expected study or all, got 'some'",
        "eval.english_answers: expected every-seed or first-seed, got 'never'"]
    assert problems({"eval.backend": "vllm"}) == ["eval.backend: expected local or server, got 'vllm'"]
    assert problems({"translation.backend": "cloud"}) == ["translation.backend: expected local or api, got 'cloud'"]
    assert load_profile("tiny", {"lora.loss_on": "response"}).lora.loss_on == "response"
    help_kinds = {key: kind for key, kind, _, _ in settings_help(load_profile("tiny"))}
    assert help_kinds["lora.precision"] == "auto, fp32 or bf16"


def test_scheduler_names_are_transformers_own():
    from transformers.trainer_utils import SchedulerType

    assert set(allowed(Scheduler)) == {s.value for s in SchedulerType}
