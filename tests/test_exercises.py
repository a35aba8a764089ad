"""Every chapter's exercises keep one format, and every solution's code runs on the tiny profile.

The format of the Exercises section of a chapter (``notebooks/NN_*.ipynb``, a markdown cell)::

    ## Exercises
    1. **Read.** The question, in one paragraph. (What it costs on this machine.)

    :::{dropdown} Solution
    The answer in prose ("Expected outcome" instead of "Solution" when there is no code).

    ```python
    # exercise-solution
    from polyalpaca import teaching
    ...
    ```
    :::

    2. **Change a parameter.** ...

- Every numbered item starts with its tier in bold, ``**Read.**``, ``**Change a parameter.**`` or
  ``**Extend the code.**`` (``**Extend the run.**`` for a longer run), and its paragraph ends with
  the cost on this machine in parentheses.
- Every item is followed by a collapsed ``{dropdown}`` (a colon fence) with the solution or the
  expected outcome, before the next item starts.
- Code the test runs is a ```` ```python ```` block whose first line is ``# exercise-solution``.
  It runs in a fresh namespace holding what the chapter's Parameters and Imports cells give a
  reader: ``exp`` (the chapter's ``Experiment``), ``profile``, ``artefacts_dir`` and
  ``overrides``; it imports everything else itself. Here they are the tiny profile in a temporary
  folder. Use ``exp`` (or ``chapter.setup(profile, artefacts_dir, overrides)``) rather than naming a
  profile, so that the solution runs on the reader's profile too.
- The solutions of a chapter run in order, in one artefacts folder shared by all chapters, after
  the work of the chapters before and of the chapter itself is done there: for the evaluation and
  findings chapters, the grid is trained and evaluated first (``PREPARE``). A solution may use
  what those chapters store; one that needs more (another setting's run) makes it itself, and
  stored results are reused.
"""
from __future__ import annotations

import json
import os
import re
import textwrap

import pytest

from polyalpaca.book import CHAPTERS, chapter_path

TIERS = ("Read", "Change a parameter", "Extend the code", "Extend the run")
SOLUTION = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P=indent)# exercise-solution[ \t]*\n(?P<code>.*?)^(?P=indent)```",
                      re.MULTILINE | re.DOTALL)
# What must be in the shared artefacts folder before a chapter's solutions run.
PREPARE = {"04_evaluation": ("train", "evaluate"), "05_findings": ("train", "evaluate"),
           "06_dose_response": ("train", "evaluate")}


def markdown(chapter: str) -> str:
    nb = json.loads(chapter_path(chapter).read_text(encoding="utf-8"))
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def exercises_section(chapter: str) -> str:
    text = markdown(chapter)
    start = text.index("\n## Exercises\n")
    end = text.find("\n## ", start + 1)
    return text[start + len("\n## Exercises\n"): end if end != -1 else None]


def solutions(chapter: str) -> list[str]:
    """The code of every ``# exercise-solution`` block of the chapter, in order, dedented."""
    return [textwrap.dedent(m.group("code")) for m in SOLUTION.finditer(markdown(chapter))]


CASES = [pytest.param(chapter, i, code, id=f"{chapter}-{i + 1}",
                      marks=[pytest.mark.slow] if chapter in PREPARE else [])
         for chapter in CHAPTERS for i, code in enumerate(solutions(chapter))]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_exercises_are_tiered_costed_and_answered(chapter):
    section = exercises_section(chapter)
    items = list(re.finditer(r"^(\d+)\. (.*)$", section, re.MULTILINE))
    assert len(items) >= 3, f"{chapter}: at least three exercises (read, change a parameter, extend)"
    assert [int(m.group(1)) for m in items] == list(range(1, len(items) + 1)), chapter
    tiers = set()
    for k, item in enumerate(items):
        paragraph = section[item.start():].split("\n\n", 1)[0].replace("\n", " ")
        tier = re.match(r"\d+\. \*\*(.+?)\.\*\*", paragraph)
        assert tier and tier.group(1) in TIERS, f"{chapter} exercise {k + 1}: starts with a tier in bold, one of {TIERS}"
        tiers.add(tier.group(1))
        assert re.search(r"\([^()]*\)\s*$", paragraph), f"{chapter} exercise {k + 1}: ends with its cost in parentheses"
        following = section[item.end(): items[k + 1].start() if k + 1 < len(items) else len(section)]
        assert re.search(r"^(:::+|```+)\{dropdown\} ", following, re.MULTILINE), \
            f"{chapter} exercise {k + 1}: followed by a {{dropdown}} with its solution or expected outcome"
    assert "Read" in tiers and "Change a parameter" in tiers and any(t.startswith("Extend") for t in tiers), chapter


def test_solution_blocks_are_found():
    """The extraction itself, on both layouts: top level and inside a list item."""
    text = ("```python\n# exercise-solution\nx = 1\n```\n\n"
            "1. item\n\n   ````{dropdown} Solution\n   ```python\n   # exercise-solution\n   y = 2\n   ```\n   ````\n"
            "```python\nnot = 'a solution'\n```\n")
    found = [textwrap.dedent(m.group("code")) for m in SOLUTION.finditer(text)]
    assert found == ["x = 1\n", "y = 2\n"]
    assert sum(len(solutions(c)) for c in CHAPTERS) >= 9


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One tiny-profile artefacts folder for every chapter's solutions, and what has been prepared."""
    return {"root": tmp_path_factory.mktemp("exercises"), "done": set()}


def prepare(workspace, chapter: str):
    from polyalpaca.chapter import setup

    exp = setup("tiny", str(workspace["root"] / "artefacts"), {})
    for step in PREPARE.get(chapter, ()):
        if step not in workspace["done"]:
            getattr(exp, f"{step}_all")()
            workspace["done"].add(step)
    return exp


@pytest.mark.parametrize("chapter, index, code", CASES)
def test_exercise_solution_runs_on_the_tiny_profile(chapter, index, code, workspace, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    exp = prepare(workspace, chapter)
    monkeypatch.chdir(workspace["root"])
    namespace = {"__name__": f"exercise_{chapter}_{index + 1}", "exp": exp, "profile": "tiny",
                 "artefacts_dir": str(workspace["root"] / "artefacts"), "overrides": {}}
    exec(compile(code, f"<{chapter} exercise solution {index + 1}>", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    assert os.getcwd() == str(workspace["root"])
