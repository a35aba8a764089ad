"""The chapters' reports (``polyalpaca.reports``): a section glues its values and shows its items
in order, and the data chapter's sections hold the values its prose reads."""
from __future__ import annotations

import json
import re

import pandas as pd

from polyalpaca import reports
from polyalpaca.book import chapter_path
from polyalpaca.config import load_profile
from polyalpaca.grid import Experiment


def test_a_section_glues_then_shows_in_order(monkeypatch, capsys):
    glued, shown = [], []
    monkeypatch.setattr(reports.chapter, "glue", lambda name, value: glued.append((name, value)))
    monkeypatch.setattr(reports, "display", lambda obj: shown.append(obj))
    frame = pd.DataFrame({"a": [1.23456]})
    reports.Section({"x": 1, "y": "two"}, [reports.Text("a line", wrap=False), reports.StyledTable(frame),
                                           reports.Html("<p>hi</p>")]).show()
    assert glued == [("x", 1), ("y", "two")]
    assert capsys.readouterr().out == "a line\n"
    assert "1.23" in shown[0].to_html() and "1.2346" not in shown[0].to_html()  # precision 2, as teaching.table
    assert shown[1].data == "<p>hi</p>"


def _glue_names(chapter: str) -> set[str]:
    nb = json.loads(chapter_path(chapter).read_text(encoding="utf-8"))
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return set(re.findall(r"\{glue:text\}`(\w+)", text))


def test_the_data_chapter_report_glues_what_its_prose_reads(tiny_model_dir, tmp_path):
    """Every value the data chapter's prose reads comes from its report, and the token example
    counts what the methods train on."""
    data = reports.DataChapter(Experiment(load_profile("tiny"), tmp_path))
    sections = [data.opener(), data.records(), data.tokens(), data.token_costs(), data.languages(), data.recipes(),
                data.training_sets()]
    glued = {name: value for s in sections for name, value in s.glue.items()}
    assert _glue_names("01_data") - {"build"} <= set(glued)
    assert glued["full_trained"] < glued["lora_trained"] < glued["example_tokens"]  # tiny: LoRA on all, full on the response
    assert glued["n_train_langs"] == 3 and glued["multi_units"] == "3"
    (table,) = data.records().shown
    assert list(table.frame["language"]) == ["en", "ru", "zh"]
