"""The shared file helpers (atomic writes, JSONL) and metrics."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from polyalpaca.files import (JsonlError, atomic_folder, atomic_open, atomic_write_json, atomic_write_text, iter_jsonl,
                              read_jsonl, write_jsonl)
from polyalpaca.metrics import corpus_chrf, gated_score, sentence_chrf


@dataclass
class Row:
    id: str
    text: str


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "x": "é"\n}\n'
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_open(path) as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "new"  # the old file survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [Row("a", "ü"), {"id": "b", "text": "line\u2028separator"}])
    assert read_jsonl(path) == [{"id": "a", "text": "ü"}, {"id": "b", "text": "line\u2028separator"}]
    path.write_text(json.dumps({"id": 1}) + "\n\n{oops\n", encoding="utf-8")
    rows = list(iter_jsonl(path))
    assert rows[0] == (1, {"id": 1}) and rows[1][0] == 3 and isinstance(rows[1][1], JsonlError)
    with pytest.raises(JsonlError, match=r"rows.jsonl:3: not valid JSON"):
        read_jsonl(path)


def test_atomic_folder_builds_once(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder.name)
        folder.mkdir()
        (folder / "weights").write_text("w")

    final = tmp_path / "models" / "m"
    assert atomic_folder(build, final) == final and atomic_folder(build, final) == final
    assert calls == ["m.partial"] and (final / "weights").read_text() == "w"
    assert not (tmp_path / "models" / "m.partial").exists()


def test_chrf_and_gate():
    assert sentence_chrf("the cat sat", "the cat sat") == pytest.approx(100.0)
    assert sentence_chrf("anything", "") == 0.0
    assert corpus_chrf(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        corpus_chrf(["x"], ["x", "y"])
    assert gated_score(2.5, False) == 0 and gated_score(2.5, True) == 2.5 and gated_score(None, True) is None
