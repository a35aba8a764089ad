"""The artefact store (``polyalpaca.store``): cache keys, keyed results, and the run-folder
accessors that are the only code naming a run folder's files."""
from __future__ import annotations

import ast
import json
from pathlib import Path

from polyalpaca import store
from polyalpaca.store import Cached, key, text_digest

PACKAGE = Path(__file__).resolve().parents[1] / "polyalpaca"


def test_keys_name_everything_that_made_a_result():
    assert key({"a": 1, "b": (1, 2)}) == key({"b": [1, 2], "a": 1})  # key order and tuples do not matter
    assert key({"a": 1}) != key({"a": 2}) and len(key({})) == store.KEY_LENGTH
    assert text_digest(["ab", "c"]) != text_digest(["a", "bc"])  # the boundaries between texts count
    assert text_digest(["x", "y"]) != text_digest(["y", "x"])


def test_a_keyed_result_records_its_inputs(tmp_path):
    result = Cached(tmp_path / "answers" / "run", "en", {"model": "m", "prompts": "p"})
    assert not result.exists() and result.path.name == f"en-{result.key}.jsonl"
    result.write_rows([{"prompt_id": "1", "response": "hi"}])
    assert result.exists() and result.read_rows() == [{"prompt_id": "1", "response": "hi"}]
    assert json.loads(result.inputs_path.read_text(encoding="utf-8")) == {"model": "m", "prompts": "p"}
    assert Cached(tmp_path / "answers" / "run", "en", {"model": "m", "prompts": "q"}).path != result.path


def test_run_folder_accessors(tmp_path):
    run = store.run_folder(tmp_path, "tiny-lora-s1-abc")
    assert run == tmp_path / "runs" / "tiny-lora-s1-abc" and store.model_folder(run) == run / "model"
    assert not store.is_done(run) and store.read_train_result(run) is None and store.read_run_record(run) is None
    run.mkdir(parents=True)
    store.write_run_record(run, {"name": "multilingual", "seed": 1})
    store.write_train_ids(run, [{"lang": "en", "id": "a"}])
    store.write_train_result(run, {"steps": 3, "log_history": []})
    assert store.finished_run_records(tmp_path) == []  # not done yet
    store.mark_done(run)
    assert store.is_done(run) and store.read_train_result(run) == {"steps": 3, "log_history": []}
    assert store.finished_run_records(tmp_path) == [{"name": "multilingual", "seed": 1}]


def test_nothing_else_names_a_run_folders_files():
    """Only the store says ``run.json``, ``train_ids.jsonl``, ``train_result.json`` or ``DONE``."""
    names = {store.RUN_RECORD, store.TRAIN_IDS, store.TRAIN_RESULT, store.DONE}
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "store.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)}
        found += [f"{path.name}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                  and any(name in n.value for name in names)]
    assert not found, found
