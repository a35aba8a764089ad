import json

import pytest

from polyalpaca.data import DataError, load_hub_alpaca, load_test_prompts, read_alpaca_file, read_test_file, \
    fetch_paper_test_file


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_jsonl_and_json(tmp_path):
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."}, {"instruction": "Add.", "output": "2"}]
    j = tmp_path / "a.json"
    j.write_text(json.dumps(rows))
    res = read_alpaca_file(j, "en")
    assert [r.instruction for r in res.items] == ["Say hi.", "Add."] and res.items[1].input == ""
    jl = write(tmp_path / "a.jsonl", [json.dumps(r) for r in rows])
    assert len(read_alpaca_file(jl, "en").items) == 2


@pytest.mark.parametrize("line, field, problem", [
    ('{"instruction": "x", "output": ', None, "invalid JSON"),
    ('{"instruction": "x"}', "output", "missing field"),
    ('{"instruction": "  ", "output": "y"}', "instruction", "empty field"),
    ('{"instruction": 3, "output": "y"}', "instruction", "expected a string"),
    ('["not", "an object"]', None, "expected a JSON object"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, field, problem):
    path = write(tmp_path / "bad.jsonl", ['{"instruction": "ok", "output": "fine"}', line])
    with pytest.raises(DataError) as err:
        read_alpaca_file(path, "en")
    assert err.value.line == 2 and err.value.field == field and problem in str(err.value)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_skip_bad_reports_exactly_what_was_skipped(tmp_path):
    path = write(tmp_path / "mixed.jsonl", ['{"instruction": "a", "output": "b"}', '{"instruction": "c"}',
                                            'oops', '{"instruction": "d", "output": "e"}'])
    res = read_alpaca_file(path, "en", skip_bad=True)
    assert [r.instruction for r in res.items] == ["a", "d"]
    assert [(s.line, s.field) for s in res.skipped] == [(2, "output"), (3, None)]


def test_unknown_language_and_duplicate_ids(tmp_path):
    path = write(tmp_path / "x.jsonl", ['{"id": "1", "instruction": "a", "output": "b"}'])
    with pytest.raises(DataError, match="unknown language code 'xx'"):
        read_alpaca_file(path, "xx")
    dup = write(tmp_path / "d.jsonl", ['{"id": "1", "instruction": "a", "output": "b"}'] * 2)
    with pytest.raises(DataError, match="duplicate id"):
        read_alpaca_file(dup, "en")


def test_paper_test_format_from_folder(tmp_path):
    write(tmp_path / "test_ru.jsonl", ['{"id": 1, "prompt": "Привет, как дела?"}', '{"id": 2, "prompt": "Что такое кот?"}'])
    items = load_test_prompts("ru", str(tmp_path)).items
    assert [t.id for t in items] == ["1", "2"] and items[0].reference == "" and items[0].answer is None
    write(tmp_path / "test_bg.jsonl", ['{"id": 1, "prompt": "a"}', '{"id": 2, "promt": "b"}'])
    with pytest.raises(DataError, match=r"test_bg.jsonl, line 2, field 'prompt': missing field"):
        read_test_file(tmp_path / "test_bg.jsonl", "bg")


def test_hub_loader_on_local_files_of_the_same_schema(tmp_path):
    rows = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(5)]
    path = tmp_path / "alpaca-cleaned-fr.json"
    path.write_text(json.dumps(rows))
    res = load_hub_alpaca(str(path), "fr")
    assert [r.id for r in res.items] == [f"alpaca-{i:05d}" for i in range(5)] and res.items[0].lang == "fr"


def test_paper_url_download_checksum_and_cache(tmp_path, monkeypatch):
    """The URL loader against a local HTTP server: downloads once, pins the checksum, detects tampering."""
    import hashlib
    import http.server
    import threading

    body = b'{"id": 1, "prompt": "Hello there, how are you?"}\n'
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/test_{{lang}}.jsonl"
        digest = hashlib.sha256(body).hexdigest()
        path = fetch_paper_test_file("en", url, cache=tmp_path, sha256=digest)
        again = fetch_paper_test_file("en", url, cache=tmp_path, sha256=digest)
        assert path == again and hits == ["/test_en.jsonl"]  # the second read used the cache
        with pytest.raises(DataError, match="does not match"):
            fetch_paper_test_file("en", url, cache=tmp_path, sha256="0" * 64)
        path.write_bytes(body + b"tampered\n")
        with pytest.raises(DataError, match="does not match"):
            fetch_paper_test_file("en", url, cache=tmp_path)  # the recorded checksum catches it
    finally:
        server.shutdown()
