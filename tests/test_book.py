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


def _tree_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_every_chapter_records_the_build_and_names_it(built_book):
    """Each executed chapter carries its build (profile, settings digest, artefacts folder) in its
    metadata, all the same; the pages name it."""
    from polyalpaca.book import chapter_build

    root = built_book["root"]
    builds = [chapter_build(root / "book" / "chapters" / f"{name}.ipynb") for name in CHAPTERS]
    assert builds[0] and all(b == builds[0] for b in builds), builds
    assert builds[0]["profile"] == "tiny" and builds[0]["artefacts"] == str((root / "artefacts").resolve())
    assert builds[0]["build"] in (root / "_build" / "html" / "book" / "scope.html").read_text()
    for name in CHAPTERS[:4]:  # the findings chapter glues it too (its page may say it)
        html = (root / "_build" / "html" / "book" / "chapters" / f"{name}.html").read_text()
        assert builds[0]["build"] in html, name


def _page_text(path: Path) -> str:
    """A built page's text as a reader sees it: tags removed, entities decoded, spaces collapsed."""
    import html as html_module
    import re

    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
    text = html_module.unescape(re.sub(r"<[^>]+>", " ", text)).replace("\u2019", "'").replace("\u201c", '"')
    return " ".join(text.replace("\u201d", '"').split())


@pytest.mark.slow
def test_the_pages_say_what_the_build_shows(built_book):
    """The statements a reader of the built book found contradicted by its own numbers stay true:
    each chapter shows the time just recorded (never 'not recorded' once a record exists), the
    training chapter the steps its runs took, the evaluation chapter labelled tables, an explained
    accuracy column and one prompt answered by every model; the glossary's echo is the gate's."""
    root = built_book["root"]
    html = root / "_build" / "html" / "book"
    pages = {name: _page_text(html / "chapters" / f"{name}.html") for name in CHAPTERS}
    record = json.loads((root / "book" / "chapters" / "generated" / "timings.json").read_text())["profiles"]["tiny"]
    for name, text in pages.items():
        assert name in record["slowest"]
        assert "not recorded" not in text, name
        if name != "05_findings":  # its time is the findings chapter's own prose
            assert "(the slowest build recorded here)" in text, name
    for page in ("intro.html", "scope.html", "rerun.html", "glossary.html", "data-card.html"):
        assert "not recorded" not in _page_text(html / page), page

    # Training: the steps the runs took, not a guess; the schedules' colours and zeros; no empty answers box.
    steps = sorted({json.loads(p.read_text())["steps"] for p in (root / "artefacts").glob("runs/*/train_result.json")})
    said = f"{steps[0]} optimizer steps" if steps[0] == steps[-1] else f"{steps[0]} to {steps[-1]} optimizer steps"
    assert f"this build's take {said}" in pages["03_training"]
    assert "a few dozen steps" not in pages["03_training"]
    assert "No answers are stored yet" not in pages["03_training"]

    # Translation: what is rejected, and that paraphrases pass.
    assert "bad replies are rejected and reported" not in pages["02_translation"]
    assert "continue the prompt's worked examples are rejected" in pages["02_translation"]

    # Evaluation: row labels on the decoding and the main table, accuracy explained, one prompt side by side.
    evaluation = (html / "chapters" / "04_evaluation.html").read_text(encoding="utf-8")
    assert ">setting</th>" in evaluation and ">method</th>" in evaluation and ">recipe</th>" in evaluation
    assert "accuracy is the share of the verifiable prompts" in pages["04_evaluation"].replace("`", "")
    assert "One prompt, every model" in pages["04_evaluation"] and "Prompt (ru, " in pages["04_evaluation"]
    assert "Time to read: about 15 minutes" not in pages["04_evaluation"]

    glossary = _page_text(html / "glossary.html")
    assert "repeats or restates the question" not in glossary and "restated in other words is not a copy" in glossary


@pytest.mark.slow
def test_a_run_with_other_settings_leaves_the_book_unchanged(built_book, tmp_path):
    """`polyalpaca run` of the findings chapter with another artefacts folder and another setting
    writes to _build/runs/<build>/, figures included; the book's chapters and figures stay byte
    for byte as they were. Rendering the book with that chapter in it is refused."""
    import subprocess
    import sys

    from polyalpaca.book import MixedBuildError, chapter_build, check_one_build

    root = built_book["root"]
    before = _tree_digest(root / "book" / "chapters")
    other = tmp_path / "other-artefacts"
    shutil.copytree(root / "artefacts", other)
    done = subprocess.run([sys.executable, "-m", "polyalpaca", "run", "findings", "--book-dir", str(root),
                           "--profile", "tiny", "--artefacts", str(other), "-s", "findings.alpha", "0.1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree_digest(root / "book" / "chapters") == before
    (run,) = (root / "_build" / "runs").glob("tiny-*/05_findings.ipynb")
    assert (run.parent / "generated" / "key_figure.png").exists()
    assert "the book is unchanged" in done.stdout and str(run) in done.stdout
    book = chapter_build(root / "book" / "chapters" / "05_findings.ipynb")
    mine = chapter_build(run)
    assert mine["artefacts"] == str(other.resolve()) and run.parent.name == mine["build"] != book["build"]

    # A book with that chapter put in it: refused, naming the chapter and both builds.
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "book" / "chapters", mixed / "book" / "chapters")
    shutil.copy(run, mixed / "book" / "chapters" / "05_findings.ipynb")
    with pytest.raises(MixedBuildError, match=r"would mix builds(.|\n)*05_findings: build " + mine["build"]):
        check_one_build(mixed / "book" / "chapters", book)
    check_one_build(mixed / "book" / "chapters", book, skip=["05_findings"])  # re-executing it is fine
    from polyalpaca.cli import main

    code = main(["book", "--no-execute", "--book-dir", str(mixed), "--profile", "tiny", "--artefacts", str(other),
                 "-s", "findings.alpha", "0.1"])
    assert code == 2 and not (mixed / "_build" / "html").exists()


def test_run_goes_into_the_book_only_for_the_books_build(tmp_path):
    """Where `polyalpaca run` writes: no book or another build -> its own folder; the same build or
    --replace-book-chapter -> the book's chapter."""
    from polyalpaca.book import build_identity, run_output, stamp_build

    mine = build_identity("tiny", {}, tmp_path / "a")
    other = build_identity("tiny", {"findings.alpha": 0.1}, tmp_path / "a")
    assert mine["build"] != other["build"] and mine == build_identity("tiny", {"lora.epochs": "1"}, tmp_path / "a")
    out, why = run_output("data", mine, tmp_path)
    assert out == tmp_path / "_build" / "runs" / mine["build"] / "01_data.ipynb" and "no executed" in why
    chapters = tmp_path / "book" / "chapters"
    chapters.mkdir(parents=True)
    (chapters / "05_findings.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    stamp_build(chapters / "05_findings.ipynb", mine)
    assert run_output("data", mine, tmp_path)[0] == chapters / "01_data.ipynb"
    out, why = run_output("data", other, tmp_path)
    assert out == tmp_path / "_build" / "runs" / other["build"] / "01_data.ipynb" and mine["build"] in why
    assert run_output("data", other, tmp_path, replace=True)[0] == chapters / "01_data.ipynb"


@pytest.mark.slow
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


@pytest.mark.slow
def test_book_has_figures_and_the_judge_ran(built_book):
    html_dir = built_book["root"] / "_build" / "html"
    figures = list(html_dir.glob("_images/*.png"))
    assert figures, "no figure in the built book"
    assert built_book["judge_requests"] > 0 and built_book["auth"] == {f"Bearer {SECRET}"}
    claims = (built_book["root"] / "artefacts" / "claims.csv").read_text()
    assert "verdict" in claims


@pytest.mark.slow
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


# Widths the browser test reads every page at: a laptop and a phone. The phone is emulated as one
# (mobile layout, touch, and scrollbars that overlay the content and take no room, as on phones
# and on macOS), so a box that scrolls sideways without drawing a scrollbar is found.
WIDTHS = {"desktop": 1280, "phone": 390}
MOBILE = {"phone"}

# In the browser, on one page: what a reader cannot see. Every element of the article whose
# content is wider than its box must scroll sideways (overflow-x auto or scroll) with a scrollbar
# drawn (it takes room: offsetHeight > clientHeight + borders, which needs Chromium run without
# Playwright's --hide-scrollbars) and in sight (the box no taller than the window); content cut
# by overflow hidden is clipped. Tables, figures, images and outputs must lie within the window's
# width, and the page itself must not scroll sideways. Returns one line per problem.
CLIPPED_JS = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!article) return ['no article element'];
  const vw = document.documentElement.clientWidth, vh = window.innerHeight;
  const describe = el => {
    const cls = (typeof el.className === 'string' && el.className.trim()) ? '.' + el.className.trim().split(/\\s+/).join('.') : '';
    const text = (el.innerText || el.getAttribute('src') || '').trim().slice(0, 50).replace(/\\s+/g, ' ');
    return `${el.tagName.toLowerCase()}${cls} "${text}"`;
  };
  const shown = el => { const r = el.getBoundingClientRect(); return r.width > 0 || r.height > 0; };
  const problems = [];
  for (const el of article.querySelectorAll('*')) {
    if (!shown(el) || el.scrollWidth <= el.clientWidth + 1) continue;
    const s = getComputedStyle(el);
    if (['svg', 'path', 'g', 'text'].includes(el.tagName.toLowerCase()) || s.display === 'inline') continue;
    if (s.overflowX === 'hidden' || s.overflowX === 'clip') {
      if (s.textOverflow === 'ellipsis') continue;  // a deliberately shortened label
      problems.push(`cut off (overflow ${s.overflowX}, ${el.scrollWidth} px of content in ${el.clientWidth}): ${describe(el)}`);
    } else if (s.overflowX === 'auto' || s.overflowX === 'scroll') {
      const bar = el.offsetHeight - el.clientHeight - parseFloat(s.borderTopWidth) - parseFloat(s.borderBottomWidth);
      if (bar < 4) problems.push(`scrolls sideways without a visible scrollbar: ${describe(el)}`);
      if (el.getBoundingClientRect().height > vh) problems.push(`scrolls sideways but is taller than the window (scrollbar out of sight): ${describe(el)}`);
    }
  }
  for (const el of article.querySelectorAll('table, img, figure, pre, div.cell_output, div.output, .pst-scrollable-table-container')) {
    if (!shown(el)) continue;
    let holder = el.parentElement;
    while (holder && holder !== article && !['auto', 'scroll'].includes(getComputedStyle(holder).overflowX)) holder = holder.parentElement;
    const r = (holder && holder !== article ? holder : el).getBoundingClientRect();
    if (r.right > vw + 1 || r.left < -1) {
      problems.push(`runs past the window's edge (${Math.round(r.left)}..${Math.round(r.right)} px of ${vw}): ${describe(el)}`);
    }
  }
  if (document.documentElement.scrollWidth > vw + 1) {
    problems.push(`the page scrolls sideways (${document.documentElement.scrollWidth} px in a ${vw} px window)`);
  }
  return problems;
}"""


READ_THROUGH_JS = """async () => {
  const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  await document.fonts.ready;
  for (let y = 0; y < document.documentElement.scrollHeight; y += window.innerHeight) { window.scrollTo(0, y); await frame(); }
  window.scrollTo(0, 0); await frame();
}"""


def check_pages(html_dir: Path, shots: Path, widths: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """Open every page of a built book in headless Chromium at each width of ``widths`` (default
    ``WIDTHS``); returns (pages, problems) and saves a full-page screenshot of each page and width
    in ``shots``. Problems: HTTP errors, images that do not load, broken links, and tables,
    figures or outputs clipped at that width (see ``CLIPPED_JS``)."""
    from urllib.parse import urljoin, urlparse

    from playwright.sync_api import sync_playwright

    widths = widths or WIDTHS
    shots.mkdir(parents=True, exist_ok=True)
    pages = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                   if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts)
    server = _serve(html_dir)
    base = f"http://127.0.0.1:{server.server_port}/"
    problems = []
    try:
        with sync_playwright() as pw:
            # Scrollbars drawn as a reader's browser draws them (Playwright hides them by default).
            browser = pw.chromium.launch(executable_path=CHROMIUM, ignore_default_args=["--hide-scrollbars"], args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            for label, width in widths.items():
                for rel in pages:
                    # A fresh tab per page: a full-page screenshot leaves Chromium's layout state
                    # (its scrollbars) changed for the next page loaded in the same tab.
                    page = browser.new_page(viewport={"width": width, "height": 900}, is_mobile=label in MOBILE,
                                            has_touch=label in MOBILE)
                    response = page.goto(base + rel, wait_until="load")
                    if response is None or not response.ok:
                        problems.append(f"{rel}: HTTP {response and response.status}")
                        page.close()
                        continue
                    page.wait_for_load_state("networkidle")  # index.html redirects to the intro page
                    here = page.url
                    # Measure as a reader sees the page: fonts loaded, every part scrolled past once.
                    page.evaluate(READ_THROUGH_JS)
                    for img in page.query_selector_all("main img, article img"):
                        if not page.evaluate("i => i.getBoundingClientRect().width > 0 || !i.closest('details')", img):
                            continue  # inside a closed dropdown
                        ok = page.evaluate("i => i.complete && i.naturalWidth > 0", img)
                        img.scroll_into_view_if_needed()
                        box = img.bounding_box()
                        if not ok or not box or box["width"] < 10 or box["height"] < 10:
                            problems.append(f"{rel} at {width} px: image {img.get_attribute('src')} not visible")
                    for problem in page.evaluate(CLIPPED_JS):
                        problems.append(f"{rel} at {width} px ({label}): {problem}")
                    if label == next(iter(widths)):
                        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
                            target = urlparse(urljoin(here, href))
                            if target.netloc != urlparse(base).netloc or not target.path.endswith(".html"):
                                continue
                            if not (html_dir / target.path.lstrip("/")).exists():
                                problems.append(f"{rel}: broken link {href}")
                    page.screenshot(path=str(shots / f"{rel.replace('/', '__')}.{width}.png"), full_page=True)
                    page.close()
            browser.close()
    finally:
        server.shutdown()
    return pages, problems


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
@pytest.mark.slow
def test_every_page_in_headless_chromium(built_book, tmp_path):
    """Every page loads with its images and links, at a laptop's and a phone's width, and no
    table, figure or output is cut off: what is wider than the column scrolls inside its box."""
    html_dir = built_book["root"] / "_build" / "html"
    shots = Path(os.environ.get("POLYALPACA_SCREENSHOTS", tmp_path / "screenshots"))
    pages, problems = check_pages(html_dir, shots)
    assert len(pages) >= 10
    assert not problems, "\n".join(problems)
    assert len(list(shots.glob("*.png"))) >= len(pages) * len(WIDTHS)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_clipping_check_sees_a_clipped_table(tmp_path):
    """The check itself, on an emulated phone: a table wider than the window is reported when it
    is cut off, or when its box scrolls with the phone's overlay scrollbar (nothing drawn); it
    passes in a box that scrolls with the book's drawn scrollbar. An oversized image is reported."""
    wide = "<table>" + "<tr>" + "".join(f"<td>column-{i}-with-long-text</td>" for i in range(20)) + "</tr></table>"
    page = """<html><head><meta name="viewport" content="width=device-width, initial-scale=1">
    <style>body{{margin:0}} .box{{overflow-x:{ox};max-width:100%}}
    .drawn::-webkit-scrollbar{{height:10px}} .drawn::-webkit-scrollbar-thumb{{background:#888}}</style></head>
    <body><article class="bd-article"><div class="box {cls}">{body}</div></article></body></html>"""
    cases = {"clipped": ("hidden", "", wide), "scrolls": ("auto", "drawn", wide), "overlay": ("auto", "", wide),
             "image": ("visible", "", '<img src="x.png" style="width:900px;height:20px">')}
    for name, (ox, cls, body) in cases.items():
        (tmp_path / f"{name}.html").write_text(page.format(ox=ox, cls=cls, body=body))
    from PIL import Image

    Image.new("RGB", (900, 20), "white").save(tmp_path / "x.png")
    _, problems = check_pages(tmp_path, tmp_path / "shots", {"phone": 390})
    assert any(p.startswith("clipped.html") and "cut off" in p for p in problems), problems
    assert not [p for p in problems if p.startswith("scrolls.html")], problems
    assert any(p.startswith("overlay.html") and "without a visible scrollbar" in p for p in problems), problems
    assert any(p.startswith("image.html") and "past the window" in p for p in problems), problems


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


# --- the workflows that build, test and publish the book ------------------------------------

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def test_workflows_pass_the_workflow_linter():
    """GitHub's workflow schema (check-jsonschema's vendored copy: actionlint's PyPI wrapper
    downloads its binary from GitHub when installed, which offline machines cannot do)."""
    import subprocess
    import sys

    linter = Path(sys.executable).parent / "check-jsonschema"
    assert linter.exists(), "check-jsonschema is in the test extra: make test installs it"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) >= 2
    done = subprocess.run([str(linter), "--builtin-schema", "vendor.github-workflows", *files],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_book_workflow_builds_caches_and_publishes():
    import yaml

    book = yaml.safe_load((WORKFLOWS / "book.yml").read_text())
    steps = _steps(book)
    runs = " ".join(s.get("run", "") for s in steps)
    assert "make book" in runs
    cached = {s["with"]["path"]: s["with"]["key"] for s in steps if s.get("uses", "").startswith("actions/cache@")}
    assert "~/.cache/polyalpaca" in cached and "artefacts" in cached
    assert "PROFILE" in cached["artefacts"] and "profiles/" in cached["artefacts"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in steps)
    assert book["permissions"]["pages"] == "write" and book["permissions"]["id-token"] == "write"
    # Every action is pinned to a release, never a moving branch.
    for step in steps:
        if "uses" in step:
            assert "@v" in step["uses"], step["uses"]


def test_tests_workflow_runs_make_test_where_chromium_can_be_installed():
    import yaml

    tests = yaml.safe_load((WORKFLOWS / "tests.yml").read_text())
    job = next(iter(tests["jobs"].values()))
    assert "make test" in " ".join(s.get("run", "") for s in job["steps"])
    assert "bookworm" in job["container"]  # Debian, as root: make system-deps installs chromium


# --- Ctrl-C and resume of the whole book ---------------------------------------------------

def _book_until(root: Path, overrides: dict, stop_at: str | None) -> dict:
    """``polyalpaca book`` on the tiny profile in a process group of its own. With ``stop_at``,
    Ctrl-C (SIGINT to that group, as a terminal sends it) once a printed line contains it; returns
    the exit status, the output, the seconds from Ctrl-C to exit and the processes left behind."""
    import psutil
    import signal
    import subprocess
    import sys
    import time

    sets = sum((["-s", k, v] for k, v in overrides.items()), [])
    cmd = [sys.executable, "-m", "polyalpaca", "book", "--profile", "tiny", "--book-dir", str(root),
           "--artefacts", str(root / "artefacts"), *sets]
    # A terminal's Ctrl-C reaches a process that handles SIGINT; a test run started in the background
    # of a non-interactive shell inherits SIGINT ignored, so the child is given the default back.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, stopped, family = [], None, []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if stop_at and stopped is None and stop_at in line:
            family = psutil.Process(proc.pid).children(recursive=True)  # the executor and its kernel
            os.killpg(proc.pid, signal.SIGINT)
            stopped = time.time()
    code = proc.wait(timeout=60)
    return {"code": code, "lines": lines, "stop_s": time.time() - stopped if stopped else None,
            "left": [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]}


def _results(artefacts: Path) -> dict:
    """What an interrupted and resumed build must reproduce: every run's losses, every answer, the claims."""
    losses = {p.parent.name: [(h.get("step"), h.get("loss"), h.get("eval_loss"), h.get("grad_norm"))
                              for h in json.loads(p.read_text())["log_history"]]
              for p in artefacts.glob("runs/*/train_result.json")}
    answers = {str(p.relative_to(artefacts)): p.read_text() for p in artefacts.glob("answers/*/*.jsonl")}
    return {"losses": losses, "answers": answers, "claims": (artefacts / "claims.csv").read_text()}


@pytest.mark.slow
def test_ctrl_c_in_training_and_in_evaluation_then_the_book_resumes_identically(built_book, tmp_path):
    root = tmp_path / "book"
    os.environ[SECRET_ENV] = SECRET
    try:
        with OpenAIDouble() as double:
            overrides = {"eval.judge.base_url": double.base_url, "eval.judge.model": "judge-double",
                         "eval.judge.api_key_env": SECRET_ENV}
            stops = [_book_until(root, overrides, "03_training [2/"),
                     _book_until(root, overrides, "04_evaluation [2/")]
            final = _book_until(root, overrides, None)
    finally:
        os.environ.pop(SECRET_ENV, None)
    for stop, chapter in zip(stops, ("03_training", "04_evaluation")):
        output = "\n".join(stop["lines"])
        assert stop["code"] == 130 and "Traceback" not in output, output
        assert stop["lines"][-1].startswith(f"polyalpaca: stopped by Ctrl-C in chapter {chapter} after "), output
        assert stop["lines"][-1].endswith("goes on from there"), output
        assert stop["stop_s"] < 10 and not stop["left"], stop
    assert final["code"] == 0, "\n".join(final["lines"])
    assert "(stored)" in "\n".join(final["lines"])  # what finished before a stop was reused
    assert _results(root / "artefacts") == _results(built_book["root"] / "artefacts")
    assert not list((root / "artefacts").glob("runs/*full*/model"))  # the full fine-tunes were not kept
