"""The whole tiny book, end to end: every chapter through papermill, then `jupyter-book build`
with warnings as errors, with the judge pointed at the local OpenAI test double and a secret in
the environment. Then the built book is checked: executed notebooks without errors, a figure,
no injected-parameters clutter, no secret anywhere, and every page in headless Chromium."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from openai_double import OpenAIDouble
from polyalpaca.book import CHAPTERS, build_book

SECRET_ENV = "POLYALPACA_BOOK_TEST_KEY"
SECRET = "sk-book-test-SECRET-4711"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-book")
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET
    try:
        with OpenAIDouble() as double:
            overrides = {"eval.judge.base_url": double.base_url, "eval.judge.model": "judge-double",
                         "eval.judge.api_key_env": SECRET_ENV}
            index = build_book("tiny", root, artefacts_dir=str(root / "artefacts"), overrides=overrides, strict=True)
            judge_requests = double.request_count()
            auth = {v for r in double.requests for k, v in r.headers.items() if k.lower() == "authorization"}
    finally:
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old
    return {"root": root, "index": index, "judge_requests": judge_requests, "auth": auth}


def test_every_chapter_executed_without_errors(built_book):
    root = built_book["root"]
    assert built_book["index"].exists()
    for name in CHAPTERS:
        nb = json.loads((root / "book" / "chapters" / f"{name}.ipynb").read_text())
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], name
        stderr = ["".join(o["text"]) for o in outputs if o.get("name") == "stderr"]
        assert not stderr, f"{name}: warnings on the page: {stderr}"
        assert all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"), name
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and all("remove-cell" in c["metadata"]["tags"] for c in injected)
        html = (root / "_build" / "html" / "book" / "chapters" / f"{name}.html").read_text()
        assert str(root / "artefacts") not in html  # the injected values are not on the page


def test_book_has_figures_and_the_judge_ran(built_book):
    html_dir = built_book["root"] / "_build" / "html"
    figures = list(html_dir.glob("_images/*.png"))
    assert figures, "no figure in the built book"
    assert built_book["judge_requests"] > 0 and built_book["auth"] == {f"Bearer {SECRET}"}
    claims = (built_book["root"] / "artefacts" / "claims.csv").read_text()
    assert "verdict" in claims


def test_no_secret_in_notebooks_html_or_artefacts(built_book):
    """Neither the test key nor any secret-looking environment value appears in what the build wrote."""
    import re

    secrets = {SECRET} | {v for k, v in os.environ.items()
                          if re.search(r"KEY|TOKEN|SECRET|PASSWORD", k, re.I) and len(v) >= 8}
    root = built_book["root"]
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in {".ipynb", ".html", ".json", ".jsonl", ".csv", ".txt", ".md", ".js", ".log"}:
            text = path.read_text(errors="ignore")
            for secret in secrets:
                assert secret not in text, path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_pages(html_dir: Path, shots: Path) -> tuple[list[str], list[str]]:
    """Open every page of a built book in headless Chromium; returns (pages, problems) and saves
    a full-page screenshot of each page in ``shots``."""
    from urllib.parse import urljoin, urlparse

    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    pages = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                   if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts)
    server = _serve(html_dir)
    base = f"http://127.0.0.1:{server.server_port}/"
    problems = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for rel in pages:
                response = page.goto(base + rel, wait_until="load")
                if response is None or not response.ok:
                    problems.append(f"{rel}: HTTP {response and response.status}")
                    continue
                page.wait_for_load_state("networkidle")  # index.html redirects to the intro page
                here = page.url
                for img in page.query_selector_all("main img, article img"):
                    ok = page.evaluate("i => i.complete && i.naturalWidth > 0", img)
                    img.scroll_into_view_if_needed()
                    box = img.bounding_box()
                    if not ok or not box or box["width"] < 10 or box["height"] < 10:
                        problems.append(f"{rel}: image {img.get_attribute('src')} not visible")
                for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
                    target = urlparse(urljoin(here, href))
                    if target.netloc != urlparse(base).netloc or not target.path.endswith(".html"):
                        continue
                    if not (html_dir / target.path.lstrip("/")).exists():
                        problems.append(f"{rel}: broken link {href}")
                page.screenshot(path=str(shots / (rel.replace("/", "__") + ".png")), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    return pages, problems


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_every_page_in_headless_chromium(built_book, tmp_path):
    html_dir = built_book["root"] / "_build" / "html"
    shots = Path(os.environ.get("POLYALPACA_SCREENSHOTS", tmp_path / "screenshots"))
    pages, problems = check_pages(html_dir, shots)
    assert len(pages) >= 10
    assert not problems, "\n".join(problems)
    assert len(list(shots.glob("*.png"))) >= len(pages)


def test_every_chapter_follows_the_template():
    """The chapter sources keep the book's template, in order, ending with Summary and Exercises."""
    from polyalpaca.book import chapter_path

    headings = ["## Overview", "## Prerequisites", "## Parameters", "## Imports", "## Summary", "## Exercises"]
    for name in CHAPTERS:
        nb = json.loads(chapter_path(name).read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        lines = [line.strip() for line in text.splitlines()]
        positions = [lines.index(h) if h in lines else -1 for h in headings]
        assert -1 not in positions and positions == sorted(positions), (name, dict(zip(headings, positions)))
        assert lines[positions[-1] + 1:] and lines[positions[-1] + 1].startswith("1."), name
