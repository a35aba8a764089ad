"""The teaching pictures (polyalpaca.teaching) on the tiny profile: the random two-layer Gemma with
the real Gemma tokenizer, so token counts, masks and parameter counts are the real mechanisms."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from polyalpaca import teaching
from polyalpaca.chapter import setup
from polyalpaca.data import EMBEDDED_TRAIN_LANGUAGES, Record


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return setup("tiny", str(tmp_path_factory.mktemp("teaching")), {})


@pytest.fixture(scope="module")
def tokenizer(exp):
    from polyalpaca.models import load_tokenizer

    return load_tokenizer(exp.profile.grid.models[0])


def methods(exp):
    return {"lora": exp.profile.lora, "full": exp.profile.full}


def test_the_first_token_and_masked_labels_are_never_targets():
    assert teaching.trained_positions([2, 10, 11, 12]) == [False, True, True, True]
    assert teaching.trained_positions([-100, -100, 11, 1]) == [False, False, True, True]


def test_token_picture_marks_what_each_method_learns_from(exp, tokenizer):
    from polyalpaca.prompts import tokenize_example

    record = teaching.example_record(exp.split().train["en"])
    assert record.input.strip(), "the example shows every part of the template"
    frame = teaching.token_training_frame(record, tokenizer, exp.template, methods(exp))
    ids = tokenize_example(record, tokenizer, exp.template, exp.profile.lora.max_length, "all")["input_ids"]
    assert frame["token_id"].tolist() == ids
    assert frame.loc[0, "token"] == "<bos>" and not frame.loc[0, "trained: lora"] and not frame.loc[0, "trained: full"]
    # LoRA (loss on everything): every token after <bos>; full tuning: exactly the response (eos included).
    assert frame["trained: lora"].sum() == len(frame) - 1
    assert (frame["trained: full"] == (frame["part"] == "response")).all()
    parts = frame["part"].tolist()
    assert parts == sorted(parts, key=lambda p: p == "response"), "the prompt comes first, then the response"
    assert frame["token"].iloc[-1] == tokenizer.decode([tokenizer.eos_token_id])
    # The pieces put together give the text that was tokenised.
    text = "".join(frame["token"].iloc[1:-1])
    assert record.instruction in text and record.output in text

    summary = teaching.token_training_summary(frame, methods(exp)).set_index("method")
    assert summary.loc["LoRA", "tokens trained on"] == len(frame) - 1
    assert summary.loc["full tuning", "tokens trained on"] == (frame["part"] == "response").sum()

    html = teaching.token_training_html(frame, methods(exp))
    assert html.count("<span style=") == 2 * len(frame) + 2  # every token once per method, and the legend
    assert f"{len(frame) - 1} of {len(frame)} tokens" in html


def test_example_record_prefers_a_short_record_with_an_input():
    records = [Record("a", "en", "long instruction " * 5, "", "out"), Record("b", "en", "x", "some input", "y" * 50),
               Record("c", "en", "x", "in", "y")]
    assert teaching.example_record(records).id == "c"
    assert teaching.example_record(records, with_input=False).id == "c"
    assert teaching.example_record([records[0]]).id == "a"


def test_tokens_per_character_compares_the_same_records(tokenizer):
    frame = teaching.tokens_per_character(tokenizer, ["en", "ru", "zh"]).set_index("language")
    assert list(frame.index) == ["en", "ru", "zh"]
    assert frame.loc["en", "tokens relative to English"] == 1.0
    assert (frame["records"] == frame.loc["en", "records"]).all()
    assert (frame["tokens per character"] > 0).all() and (frame["tokens"] > 0).all()
    # Chinese spends far more tokens per character than a Latin or Cyrillic script.
    assert frame.loc["zh", "tokens per character"] > 2 * frame.loc["en", "tokens per character"]
    every = teaching.tokens_per_character(tokenizer)
    assert sorted(every["language"]) == sorted(EMBEDDED_TRAIN_LANGUAGES)
    fig = teaching.plot_tokens_per_language(every, ["en", "ru"])
    assert len(fig.axes) == 2


def test_parameter_counts_come_from_the_model_and_peft(exp):
    from polyalpaca.models import load_model

    counts = teaching.parameter_counts(exp.profile.grid.models[0], exp.profile)
    table = counts["table"].set_index("method")
    model = load_model(exp.profile.grid.models[0])
    total = sum(p.numel() for p in model.parameters())
    assert table.loc["full tuning", "trainable"] == table.loc["full tuning", "total"] == total == counts["base_total"]
    # LoRA: r x (d_in + d_out) for every adapted projection of every layer.
    r = exp.profile.lora.lora.r
    expected = sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if name.split(".")[-1] in exp.profile.lora.lora.target_modules)
    assert table.loc["LoRA", "trainable"] == expected
    assert table.loc["LoRA", "total"] == total + expected
    assert 0 < table.loc["LoRA", "share trained"] < 0.01
    assert counts["embedding"] == model.get_input_embeddings().weight.numel()
    assert counts["layers"] == model.config.num_hidden_layers
    assert (counts["r"], counts["alpha"]) == (r, exp.profile.lora.lora.alpha)
    fig = teaching.plot_lora_update(counts)
    assert len(fig.axes) == 2


def test_learning_rates_from_the_profile_and_the_trainer_log(exp):
    rates = teaching.learning_rate_table(exp.profile).set_index("method")
    assert rates.loc["LoRA", "learning rate"] == f"{exp.profile.lora.learning_rate:g}"
    assert rates.loc["full tuning", "learning rate"] == f"{exp.profile.full.learning_rate:g}"
    assert teaching.learning_rate_frame(exp).empty  # nothing trained yet
    run = next(r for r in exp.runs(include_base=False) if r.method == "lora" and r.name == "monolingual-en")
    exp.train(run)
    frame = teaching.learning_rate_frame(exp)
    assert set(frame["run"]) == {"monolingual-en"} and set(frame["method"]) == {"LoRA"}
    assert frame["learning rate"].max() <= exp.profile.lora.learning_rate
    assert frame["progress"].max() == 1.0
    fig = teaching.plot_learning_rates(frame)
    # Linear axes from 0: every logged rate is drawn, the 0 where a linear decay ends included,
    # in LoRA's colour of every other figure.
    from matplotlib.colors import to_rgb

    from polyalpaca.findings import method_colours

    (ax,) = fig.axes
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    points = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert sorted(points) == sorted(frame["learning rate"])
    assert {to_rgb(line.get_color()) for line in ax.get_lines()} == {to_rgb(method_colours(["lora"])["lora"])}


def test_method_settings_on_the_page_show_lora_settings_for_lora_only(exp):
    table = exp.method_settings()
    assert table.loc["lora.r", "lora"] == str(exp.profile.lora.lora.r)
    full = table.loc["lora.r", "full"]
    assert pd.isna(full) or full == ""
    html = teaching.table(table.rename_axis("setting").reset_index()).to_html()
    row = html[html.index(">lora.r<"):].split("</tr>")[0]
    assert f">{exp.profile.lora.lora.r}<" in row and (">–<" in row or "><" in row)


def _answers():
    rows = []
    for run, method, name, seed in [("base", "base", "base", None), ("lora-multilingual-s1", "lora", "multilingual", 1),
                                    ("lora-multilingual-s2", "lora", "multilingual", 2),
                                    ("full-monolingual-ru-s1", "full", "monolingual-ru", 1)]:
        for lang in (["en", "ru"] if method != "full" else ["ru"]):
            for pid in ("p1", "p2"):
                rows.append({"run": run, "method": method, "recipe": name.split("-")[0], "name": name, "seed": seed,
                             "lang": lang, "prompt_id": f"{pid}@{lang}", "prompt": f"question {pid} {lang}",
                             "response": f"answer of {run} " + "word " * 60, "gate_reason": "ok"})
    return pd.DataFrame(rows)


def test_side_by_side_shows_one_prompt_for_every_model():
    assert teaching.side_by_side(pd.DataFrame()) is None
    side = teaching.side_by_side(_answers(), width=40)
    assert side.attrs["lang"] == "ru" and side.attrs["prompt_id"] == "p1@ru"
    assert side["model"].tolist() == ["base model", "LoRA · multilingual", "full tuning · monolingual-ru"]
    assert all(len(a) <= 40 for a in side["answer"]) and side["answer"].str.endswith("…").all()
    assert "s2" not in " ".join(side["answer"])  # the first seed only
    assert teaching.side_by_side(_answers(), lang="en")["model"].tolist() == ["base model", "LoRA · multilingual"]
    only_base = _answers().query("method == 'base'")
    assert teaching.side_by_side(only_base, languages=["en", "ru"]).attrs["lang"] == "ru"


def test_chapter_times_read_the_timing_record(exp, tmp_path):
    assert teaching.reading_minutes("01_data") >= 1
    record = tmp_path / "timings.json"
    record.write_text(json.dumps({"profiles": {"tiny": {"last": {"03_training": 30.0}, "slowest": {"03_training": 600.0}},
                                               "cpu": {"slowest": {"01_data": 600.0}}}}))
    times = teaching.chapter_times("training", exp, record)
    assert times["read"].startswith("about ") and times["read"].endswith(" min")
    assert times["run"].startswith("about 10 min from empty artefacts") and "under a minute in the last build" in times["run"]
    assert "not recorded yet" in teaching.chapter_times("data", exp, record)["run"]  # cpu's record is not tiny's
    missing = teaching.chapter_times("data", exp, tmp_path / "none.json")
    assert "not recorded yet for the tiny profile" in missing["run"]
    predicted = teaching.chapter_times("training", exp, tmp_path / "none.json")
    assert "polyalpaca plan" in predicted["run"]


def test_variants_change_a_copy_and_keep_the_artefacts_folder(exp):
    other = teaching.variant(exp, {"lora.lora.r": 2, "data.seed": 7})
    assert other.profile.lora.lora.r == 2 and other.profile.data.seed == 7
    assert exp.profile.lora.lora.r == 4 and exp.profile.data.seed == 42
    assert other.root == exp.root
    with pytest.raises(ValueError, match="lora.rank: unknown setting"):
        teaching.variant(exp, {"lora.rank": 2})
    with pytest.raises(ValueError, match="lora.epochs: expected a number, got 'many'"):
        teaching.variant(exp, {"lora.epochs": "many"})


def test_tables_leave_the_index_out():
    frame = pd.DataFrame({"value": [1234.5678, None]}, index=["index-label-a", "index-label-b"])
    html = teaching.table(frame).to_html()
    assert "index-label-a" not in html and "1,234.57" in html and "–" in html
    assert "index-label-a" in teaching.table(frame, index=True).to_html()
    assert "12%" in teaching.table(pd.DataFrame({"share": [0.123]}), formats={"share": "{:.0%}"}).to_html()


def test_the_learning_rate_check_the_book_shows_is_in_the_repository():
    """The training chapter shows the stored check of the CPU default's rates: it travels with the
    code (a clean clone has it), and it is the profile's and at its chosen rates."""
    from polyalpaca.config import load_profile

    frame, record = teaching.learning_rate_check("cpu")
    p = load_profile("cpu")
    assert record["profile"] == "cpu" and len(record["git"]) == 40
    rates = set(zip(frame["method"], frame["learning rate"]))
    assert {("lora", p.lora.learning_rate), ("full", p.full.learning_rate)} <= rates
    assert frame["validation loss after"].lt(frame["validation loss before"]).all()
