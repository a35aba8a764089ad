"""Executing the chapter notebooks with papermill and building the Jupyter Book.

The chapter sources in ``notebooks/`` are saved without outputs. ``execute_chapter`` runs one
with parameters into ``<book_dir>/book/chapters/``; ``build_book`` runs them all for a profile
and then calls ``jupyter-book build``. A book directory other than the project root gets a copy
of the book's own pages and configuration, so a test build never touches the real book.

Every executed chapter records the build it belongs to (``build_identity``: the profile, a digest
of every setting after overrides, and the artefacts folder) in its notebook metadata. A book is
one build: ``build_book`` refuses to render chapters of different builds side by side, and
``polyalpaca run`` writes a chapter executed with other settings to a folder of its own
(``run_output``), never over the book's chapter unless asked to.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import datacheck
from .config import available_profiles, load_profile
from .data import EMBEDDED_TEST_LANGUAGES, EMBEDDED_TRAIN_LANGUAGES, embedded_test, embedded_train
from .design import examples_per_step, optimizer_steps
from .files import atomic_write_text
from .grid import Experiment
from .paths import PROJECT_ROOT
from .planning import disk_estimate, disk_shortfall, plan_table
from .progress import PROGRESS_FILE_ENV
from .recipes import category_mix

# papermill, psutil and pandas are imported where a chapter runs or a page needs them: the
# command line imports this module on every start.

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
CHAPTERS = ["01_data", "02_translation", "03_training", "04_evaluation", "05_findings", "06_dose_response"]
NOTEBOOK_PARAMETERS = ("profile", "artefacts_dir", "overrides")
BOOK_FILES = ["_config.yml", "_toc.yml", "references.bib", "book"]
RUNS_DIR = Path("_build") / "runs"  # in the book's folder: chapters re-run with other settings


def chapter_path(name: str) -> Path:
    matches = [c for c in CHAPTERS if c == name or c.split("_", 1)[1] == name]
    if not matches:
        raise ValueError(f"unknown chapter {name!r}; chapters: {', '.join(CHAPTERS)}")
    return NOTEBOOKS_DIR / f"{matches[0]}.ipynb"


def split_parameters(pairs: list[tuple[str, object]]) -> dict:
    """Notebook parameters from ``-p KEY VALUE`` pairs: ``profile``, ``artefacts_dir`` and
    ``overrides`` are notebook parameters; a dotted key (``lora.epochs``) is a profile override."""
    params: dict = {"overrides": {}}
    for key, value in pairs:
        if key in NOTEBOOK_PARAMETERS:
            params[key] = value
        elif "." in key:
            params["overrides"][key] = value
        else:
            raise ValueError(f"unknown parameter {key!r}: use one of {', '.join(NOTEBOOK_PARAMETERS)} "
                             "or a dotted profile setting such as lora.epochs")
    return params


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell`` so the page shows no clutter."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


class ChapterError(RuntimeError):
    """A chapter failed or ran past its timeout; the message names it."""


class MixedBuildError(ChapterError):
    """Chapters of different builds (profile, settings or artefacts folder) in one book."""


# --- the build a chapter belongs to ----------------------------------------------------------

def build_identity(profile: str, overrides: dict | None = None, artefacts_dir: str | Path = "") -> dict:
    """What the numbers of an executed chapter come from: the profile's name, a digest of every
    setting after the overrides (so ``-s`` values that change nothing name the same build) and
    the artefacts folder (absolute). ``build`` names it: ``<profile>-<digest of both>``."""
    from .config import load_profile

    return profile_identity(load_profile(profile, overrides or {}), artefacts_dir)


def profile_identity(p, artefacts_dir: str | Path = "") -> dict:
    """``build_identity`` of a loaded profile (overrides applied)."""
    import hashlib

    from .paths import artefacts_root

    root = Path(artefacts_dir).resolve() if artefacts_dir else (artefacts_root() / p.name).resolve()
    settings = hashlib.sha256(json.dumps(p.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    build = hashlib.sha256(f"{settings}\0{root}".encode()).hexdigest()[:10]
    return {"build": f"{p.name}-{build}", "profile": p.name, "settings": settings[:10], "artefacts": str(root)}


def describe_build(identity: dict | None) -> str:
    if not identity:
        return "no recorded build (failed, or executed before builds were recorded)"
    return (f"build {identity['build']} (profile {identity['profile']}, settings {identity['settings']}, "
            f"artefacts {identity['artefacts']})")


def stamp_build(path: Path, identity: dict) -> None:
    """Record ``identity`` in an executed chapter's metadata (``metadata.polyalpaca.build``)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {}).setdefault("polyalpaca", {})["build"] = identity
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def chapter_build(path: Path) -> dict | None:
    """The build recorded in an executed chapter; None when it has none."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return nb.get("metadata", {}).get("polyalpaca", {}).get("build")


def executed_builds(chapters_dir: Path) -> dict[str, dict | None]:
    """The build of every executed chapter in ``chapters_dir`` (absent chapters left out)."""
    return {name: chapter_build(chapters_dir / f"{name}.ipynb") for name in CHAPTERS
            if (chapters_dir / f"{name}.ipynb").exists()}


def check_one_build(chapters_dir: Path, identity: dict, skip: list[str] | tuple = ()) -> None:
    """Raise ``MixedBuildError`` when an executed chapter in ``chapters_dir`` (other than those in
    ``skip``, about to be executed) belongs to another build than ``identity``: one book, one build."""
    others = {name: found for name, found in executed_builds(chapters_dir).items()
              if name not in skip and (found or {}).get("build") != identity["build"]}
    if others:
        lines = "\n".join(f"  - {name}: {describe_build(found)}" for name, found in others.items())
        raise MixedBuildError(
            f"the book would mix builds: this one is {describe_build(identity)}, but in {chapters_dir}\n{lines}\n"
            "Every number of a book comes from one build. Execute those chapters with this build's profile, "
            "settings and artefacts (polyalpaca book ... --chapters NAME), or build the whole book again, "
            "or render the book with the settings they were executed with.")


def run_output(chapter: str, identity: dict, book_dir: Path = PROJECT_ROOT, replace: bool = False) -> tuple[Path, str]:
    """Where ``polyalpaca run`` writes a chapter, and why: into the book (``book_dir/book/chapters``)
    when every chapter already there belongs to this same build, or with ``replace``; otherwise
    into ``book_dir/_build/runs/<build>/``, so that a run with another profile, other settings or
    another artefacts folder never overwrites the book's chapters or figures."""
    name = chapter_path(chapter).name
    chapters_dir = Path(book_dir) / "book" / "chapters"
    builds = executed_builds(chapters_dir)
    same = bool(builds) and all((b or {}).get("build") == identity["build"] for b in builds.values())
    if replace or same:
        return chapters_dir / name, ("replacing the book's chapter" if replace and not same else
                                     "the book's build: the same profile, settings and artefacts")
    reason = ("the book has no executed chapters" if not builds else
              "the book is " + "; ".join(sorted({describe_build(b) for b in builds.values()})))
    return Path(book_dir) / RUNS_DIR / identity["build"] / name, reason


class ChapterInterrupted(ChapterError):
    """Ctrl-C while a chapter ran: its processes were stopped; the message says where."""


def _relay(progress_file: Path, offset: int, name: str) -> tuple[int, str]:
    """Print the chapter's new progress lines in the terminal; returns the new offset and the
    last line printed ('' when none was new)."""
    last = ""
    try:
        with progress_file.open(encoding="utf-8") as fh:
            fh.seek(offset)
            for line in fh:
                last = line.rstrip()
                print(f"  {name} {last}", flush=True)
            return fh.tell(), last
    except FileNotFoundError:
        return offset, last


def _process_groups(child: subprocess.Popen) -> set[int]:
    """The process groups of the chapter's executor and of everything it started (the kernel
    runs in a process group of its own)."""
    import psutil

    groups = {child.pid}  # the executor leads its own group (start_new_session)
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for proc in descendants:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    return groups


def _stop_chapter(child: subprocess.Popen, grace_s: float) -> None:
    """Stop a chapter's executor and kernel and wait until they are gone. With ``grace_s`` the
    executor is first asked to end (it then shuts its kernel down and saves the notebook as far as
    it got); whatever is left after that is killed, process group by process group. Results are
    written atomically and a run is marked done last, so a kill loses at most the work in progress."""
    groups = _process_groups(child)
    if grace_s:
        child.terminate()
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    child.wait()


def execute_chapter(name: str, parameters: dict, output: Path, kernel: str = "python3",
                    timeout_s: int | None = None, identity: dict | None = None) -> Path:
    """Execute one chapter with papermill in a child process. Its progress lines (``polyalpaca.
    progress``) are printed here as they come; a chapter running past ``timeout_s`` is stopped
    and reported by name (``ChapterError``), as is a chapter whose cell fails. Ctrl-C stops the
    chapter's executor and kernel (each in a process group of its own) within seconds and raises
    ``ChapterInterrupted``, which says where it stopped. The executed notebook records its build
    (``identity``, by default ``build_identity`` of ``parameters``)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    progress_file = output.with_name(output.stem + ".progress")
    progress_file.write_text("", encoding="utf-8")
    env = {**os.environ, PROGRESS_FILE_ENV: str(progress_file)}
    cmd = [sys.executable, "-m", "polyalpaca.book", "execute", name, str(output), json.dumps(parameters), kernel,
           str(timeout_s or 0)]
    start = time.time()
    child = subprocess.Popen(cmd, env=env, start_new_session=True)
    offset, last = 0, ""
    while True:
        try:
            try:
                code = child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            offset, new = _relay(progress_file, offset, name)
            last = new or last
        except KeyboardInterrupt:  # Ctrl-C reaches this process only: the chapter runs in groups of its own
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the stop short
            try:
                _stop_chapter(child, grace_s=0)
            finally:
                signal.signal(signal.SIGINT, previous)
            progress_file.unlink(missing_ok=True)
            raise ChapterInterrupted(f"stopped by Ctrl-C in chapter {name} after {time.time() - start:.0f} s"
                                     + (f", last finished: {last}" if last else "")) from None
        if code is not None:
            break
        if timeout_s and time.time() - start > timeout_s:
            _stop_chapter(child, grace_s=30)  # the executor shuts its kernel down and saves the notebook
            raise ChapterError(f"chapter {name} timed out after {timeout_s} s and was stopped (the profile's "
                               f"book.chapter_timeout_s; what it executed so far is in {output}). Finished runs and "
                               "answers are stored: run the book again to resume, or raise the timeout.")
    progress_file.unlink(missing_ok=True)
    if code != 0:
        raise ChapterError(f"chapter {name} failed (exit {code}): the failing cell and its error are in {output} "
                           "and printed above")
    hide_injected_parameters(output)
    stamp_build(output, identity or build_identity(parameters.get("profile", "cpu"), parameters.get("overrides"),
                                                   parameters.get("artefacts_dir", "")))
    print(f"[polyalpaca] executed {name} in {time.time() - start:.0f} s -> {output}", flush=True)
    return output


def _execute_here(name: str, output: str, parameters: str, kernel: str, timeout_s: str) -> int:
    """The child process of ``execute_chapter``: papermill, with the chapter's timeout per cell."""
    import papermill as pm

    def stop(signum, frame):
        raise KeyboardInterrupt(f"chapter {name} stopped")

    signal.signal(signal.SIGTERM, stop)
    config = None
    if os.name == "posix":
        from traitlets.config import Config

        # The kernel talks to papermill over local Unix sockets, not unencrypted TCP ports.
        config = Config()
        config.KernelManager.transport = "ipc"
    try:
        pm.execute_notebook(str(chapter_path(name)), output, parameters=json.loads(parameters), kernel_name=kernel,
                            cwd=str(Path(output).parent), progress_bar=False,
                            execution_timeout=int(timeout_s) or None, log_output=False, config=config)
    except pm.PapermillExecutionError as exc:
        print(f"[polyalpaca] chapter {name}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # stopped by the parent at the chapter's timeout
        return 130
    return 0


def stage_book(book_dir: Path) -> None:
    """Copy the book's pages and configuration into ``book_dir`` (unless it is the project root)."""
    if book_dir.resolve() == PROJECT_ROOT.resolve():
        return
    book_dir.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, book_dir / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("chapters", "_build"))
        elif src.exists():
            shutil.copy2(src, book_dir / name)


def build_html(book_dir: Path, strict: bool = True) -> Path:
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe), "build", str(book_dir), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    if subprocess.run(cmd).returncode != 0:
        raise ChapterError(f"the HTML build of {book_dir} failed: the Sphinx warnings above say where "
                           "(strict mode turns every warning into an error; --no-strict builds anyway)")
    return book_dir / "_build" / "html" / "index.html"


def build_book(profile: str = "cpu", book_dir: str | Path | None = None, artefacts_dir: str = "",
               overrides: dict | None = None, chapters: list[str] | None = None, strict: bool = True,
               execute: bool = True) -> Path:
    """Execute every chapter for ``profile`` and build the HTML book; returns index.html. Refuses
    (``MixedBuildError``, before anything runs) when a chapter it does not execute belongs to
    another build than this one."""
    book_dir = Path(book_dir) if book_dir else PROJECT_ROOT
    artefacts_dir = str(Path(artefacts_dir).resolve()) if artefacts_dir else ""  # chapters run in book/chapters
    identity = build_identity(profile, overrides, artefacts_dir)
    names = [chapter_path(n).stem for n in (chapters or CHAPTERS)] if execute else []
    chapters_dir = book_dir / "book" / "chapters"
    check_one_build(chapters_dir, identity, skip=names)
    stage_book(book_dir)
    params = {"profile": profile, "artefacts_dir": artefacts_dir, "overrides": overrides or {}}
    timings = {}
    if execute:
        settings = load_profile(profile, overrides or {})
        warn_if_disk_is_short(settings, artefacts_dir)
        timeout = settings.book.chapter_timeout_s
        record = chapters_dir / "generated" / "timings.json"
        for number, name in enumerate(names, start=1):
            print(f"[polyalpaca] chapter {number}/{len(names)}: {name} "
                  f"(profile {profile}, build {identity['build']}, timeout {timeout} s)", flush=True)
            start = time.time()
            output = execute_chapter(name, params, chapters_dir / f"{name}.ipynb", timeout_s=timeout,
                                     identity=identity)
            timings[name] = round(time.time() - start, 1)
            # The chapter could not know its own time while it ran: record it now and put it on its page.
            record.parent.mkdir(parents=True, exist_ok=True)
            record_timings(record, {name: timings[name]}, identity["profile"])
            refresh_run_time(output, name, identity["profile"], record)
    write_generated_pages(book_dir, timings, profile, overrides or {}, artefacts_dir, identity)
    return build_html(book_dir, strict)


def set_glued_text(path: Path, key: str, text: str) -> bool:
    """Replace the value glued as ``key`` (``chapter.glue``) in an executed notebook; False when the
    notebook glues no such value."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = False
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            book = output.get("metadata", {}).get("scrapbook", {})
            if book.get("name") == key:
                output["data"] = {f"{book.get('mime_prefix', '')}text/plain": repr(text)}
                found = True
    if found:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return found


def _minutes(seconds: float) -> str:
    return "under a minute" if seconds < 60 else f"about {seconds / 60:.0f} min"


def recorded_run_time(chapter: str, profile: str, record: str | Path = "generated/timings.json") -> str | None:
    """Time to re-execute ``chapter`` under ``profile`` from the book's timing record
    (``record_timings``), as prose: the slowest recorded build, which computed the
    artefacts, and the last one, which may have reused them; None when nothing is recorded."""
    path = Path(record)
    known = json.loads(path.read_text()) if path.exists() else {}
    mine = known.get("profiles", {}).get(profile, {})
    slowest, last = mine.get("slowest", {}).get(chapter), mine.get("last", {}).get(chapter)
    if slowest is None:
        return None
    run = f"{_minutes(slowest)} from empty artefacts (the slowest build recorded here)"
    if last is not None and _minutes(last) != _minutes(slowest):
        run += f", {_minutes(last).replace('about ', '')} in the last build"
    return run


def refresh_run_time(output: Path, name: str, profile: str, record: Path) -> None:
    """Put the time to re-execute, as now recorded, in the chapter's glued ``time_run``."""
    text = recorded_run_time(name, profile, record)
    if text is not None:
        set_glued_text(output, "time_run", text)


def warn_if_disk_is_short(profile, artefacts_dir: str | Path = "") -> str:
    """Print (and return) a warning before the chapters run when the artefacts folder's disk has
    less free space than the plan's fully fine-tuned models need: better said now than as a full
    disk in the training chapter. Only a warning: a resumed build needs less than the estimate."""
    exp = Experiment(profile, artefacts_dir or None)
    short = disk_shortfall(disk_estimate(profile, plan_table(exp), exp.root))
    if short:
        print(f"[polyalpaca] warning: {short}", flush=True)
    return short


# --- pages generated from the code and the artefacts ---------------------------------------

def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """Every profile setting with its value in each shipped profile."""
    profiles = {name: load_profile(name) for name in available_profiles()}
    flat: dict[str, dict[str, object]] = {}

    def walk(prefix: str, obj, name: str):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(key + ".", value, name)
            elif key not in ("name", "description"):
                flat.setdefault(key, {})[name] = value

    for name, p in profiles.items():
        walk("", p, name)
    rows = [[f"`{k}`", *[f"`{v.get(n)!r}`" for n in profiles]] for k, v in flat.items()]
    return _md_table(["setting", *profiles], rows)


def write_generated_pages(book_dir: Path, timings: dict[str, float] | None = None, profile: str = "cpu",
                          overrides: dict | None = None, artefacts_dir: str = "", identity: dict | None = None) -> None:
    """Pages made from code and artefacts, included by the hand-written pages; the design page
    names the build (``identity``) its numbers come from."""
    out = book_dir / "book" / "chapters" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.md", settings_table())
    identity = identity or build_identity(profile, overrides, artefacts_dir)
    atomic_write_text(out / "timings.md", record_timings(out / "timings.json", timings or {}, identity["profile"]))
    atomic_write_text(out / "data_stats.md", data_stats_page())
    atomic_write_text(out / "lab_path.md", lab_path_page())
    atomic_write_text(out / "design.md", f"Build `{identity['build']}` (profile `{identity['profile']}`, settings "
                      f"digest `{identity['settings']}`): every number below and in the chapters comes from it.\n\n"
                      + design_page(profile, overrides or {}, artefacts_dir, book_dir))


def design_page(profile_name: str, overrides: dict, artefacts_dir: str = "", book_dir: Path | None = None) -> str:
    """The scope page's facts about this build's grid, from the profile, the plan and the
    artefacts: seeds, steps per run, sample sizes, task categories, the training loss, and what
    the claims table could detect."""
    p = load_profile(profile_name, overrides)
    exp = Experiment(p, artefacts_dir or None)
    d = p.data
    split = exp.split()
    per_lang = {lang: len(split.train[lang]) for lang in d.train_languages}
    sets = exp.training_sets()
    mix = category_mix([ts for ts in sets if ts.recipe == "monolingual"][:1] or sets[:1])
    categories = next(iter(mix.values()), {})
    lines = ["| | this build |", "|---|---|",
             f"| base model | {', '.join(p.grid.models)} |",
             f"| training seeds | {len(p.grid.seeds)} ({', '.join(str(s) for s in p.grid.seeds)}): each seed changes the "
             "LoRA initialisation, the data order, dropout and the downsampled draw |",
             f"| training languages | {', '.join(d.train_languages)} |",
             f"| test languages | seen: {', '.join(exp.seen_languages())}; unseen: {', '.join(exp.unseen_languages()) or 'none'} |",
             f"| training examples per language | {', '.join(f'{k} {v}' for k, v in per_lang.items())} "
             f"(plus {d.validation_size} held out for validation), the same ids in every language |",
             f"| task categories in each language's sample | {len(categories)}: "
             + ", ".join(f"{c} {n}" for c, n in sorted(categories.items())) + " |",
             f"| test prompts per language | {', '.join(f'{l} {len(exp.test_prompts(l))}' for l in d.test_languages)} |"]
    first = [r for r in exp.runs(include_base=False) if r.model == p.grid.models[0] and r.seed == p.grid.seeds[0]]
    for method in p.grid.methods:
        cfg = p.train_config(method)
        # As training counts them: examples per optimizer step from the effective batch (one process).
        steps = {r.name: optimizer_steps(r.train_examples, cfg) for r in first if r.method == method}
        loss = "prompt and response (as the paper's LoRA recipe)" if cfg.loss_on == "all" else \
            "the response only, prompt masked (as the paper's full fine-tuning)"
        lines.append(f"| {method}: steps per run | " + ", ".join(f"{k} {v:g}" for k, v in steps.items()) +
                     f" (batch {examples_per_step(cfg)}, {cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}, learning rate {cfg.learning_rate:g}) |")
        lines.append(f"| {method}: loss on | {loss}, softmax over the whole vocabulary |")
    decoding = dataclasses.asdict(p.eval.decoding)
    lines.append(f"| decoding | greedy, {decoding['max_new_tokens']} new tokens, no_repeat_ngram_size "
                 f"{decoding['no_repeat_ngram_size']}; reference likelihood on "
                 + (f"the first {p.eval.likelihood_sentences} complete sentence"
                    f"{'' if p.eval.likelihood_sentences == 1 else 's'} of each reference (the same content in "
                    "every language)" if p.eval.likelihood_sentences else "the whole of each reference")
                 + f", at most {p.eval.likelihood_max_tokens} tokens |")
    table = plan_table(exp)
    plan, ev = table["totals"], table["evaluation"]
    if "book_minutes" in plan:
        more = plan_table(Experiment(load_profile(profile_name, {**overrides, "grid.seeds": list(p.grid.seeds) + [
            max(p.grid.seeds) + 1 + i for i in range(len(p.grid.seeds))]}), artefacts_dir or None))["totals"]
        lines.append(f"| predicted time from empty artefacts | {plan['book_minutes']} minutes (`polyalpaca plan`): "
                     f"training {plan['cpu_minutes']}, answering {ev['generation'] / 60:.1f}, likelihood scoring "
                     f"{ev['likelihood'] / 60:.1f}, loading models {ev['load'] / 60:.1f}, the other chapters and the "
                     f"HTML build {p.estimate.fixed_minutes:g}; twice the seeds: about {more['book_minutes']} minutes |")
    out = "\n".join(lines) + "\n"
    # The findings chapter's claims table of this build (generated/claims.csv, written next to its
    # figures); older chapters wrote it into the artefacts folder only.
    claims_path = book_dir / "book" / "chapters" / "generated" / "claims.csv" if book_dir else None
    if claims_path is None or not claims_path.exists():
        claims_path = exp.root / "claims.csv"
    if claims_path.exists():
        import pandas as pd

        claims = pd.read_csv(claims_path)
        claims = claims[(claims["prompts"] > 0) & (claims["family"] == "claims")]
        rows = [[r["finding"], r["contrast"], r["test"], f"{r['effect']:.3f}", f"{r['se']:.3f}",
                 f"{r['detectable effect']:.3f}", r["verdict"]] for _, r in claims.iterrows()]
        out += ("\nWhat this build could detect: for each row of the claims table, the standard error of the "
                "effect (its seed and prompt parts together, `polyalpaca.inference`) and about the smallest true "
                "effect it detects with 80% power at the family's strictest Holm level (effects beyond a "
                "non-inferiority margin), each in its measure's units:\n\n"
                + _md_table(["finding", "contrast", "test", "effect", "standard error", "detectable effect",
                             "verdict"], rows))
    return out


#: The re-run page's path for a lab: (settings, what the step recomputes, what to look for).
LAB_STEPS = [
    ({"lora.loss_on": "response"}, "lora",
     "LoRA's validation loss changes but says nothing about which model is better: it is averaged over other "
     "tokens ({doc}`chapters/03_training`, exercise 2); compare the gate and likelihood columns in "
     "{doc}`chapters/05_findings` instead."),
    ({"lora.lora.r": 64, "lora.lora.alpha": 128}, "lora",
     "four times the trainable parameters in the figure of {doc}`chapters/03_training`; with {examples} examples "
     "per language, expect little else to change: rank is not what limits so small a run."),
    ({"data.test_limit": 15}, "evaluation",
     "narrower intervals and smaller detectable effects in the claims table (the prompt part of each standard "
     "error shrinks by about the square root of 15 / {prompts})."),
    ({"grid.seeds": [42, 43, 44]}, "added",
     "verdicts stop being *exploratory* once each model has `findings.min_seeds` ({min_seeds}) seeds; how much "
     "do the seeds disagree?"),
    ({"data.train_limit": 40}, "all",
     "losses fall further; do the multilingual and downsampled models answer in the prompt's language more "
     "often than English-only?"),
]


def lab_path_page(profile_name: str = "class") -> str:
    """The re-run page's path for a lab, on ``profile_name``: each step's setting, what it
    recomputes and the minutes ``polyalpaca plan`` predicts for that on this machine's measured
    rates (from the plan of the profile with and without the change), so the page's numbers are
    the code's, not typed in."""
    import json as json_module
    import tempfile

    from .config import load_profile
    from .grid import Experiment
    from .planning import plan_table

    with tempfile.TemporaryDirectory() as empty:  # predictions from empty artefacts; nothing written here
        def plan(overrides: dict) -> dict:
            return plan_table(Experiment(load_profile(profile_name, overrides), empty))

        base_profile = load_profile(profile_name)
        base = plan({})
        if "book_minutes" not in base["totals"]:
            return f"(`polyalpaca plan --profile {profile_name}` has no measured rates to predict times with.)\n"

        def eval_minutes(table: dict, share: float = 1.0) -> float:
            return table["totals"]["evaluation_minutes"] * share

        def trained(table: dict, method: str | None = None) -> list[dict]:
            return [r for r in table["runs"] if r["trains_new_model"] and (method is None or r["method"] == method)]

        examples = next((r["examples_per_epoch"] for r in base["runs"] if r["recipe"] == "monolingual"), 0)
        fixed = base_profile.estimate.fixed_minutes
        lines = [f"Start from the `{profile_name}` profile, built once (`polyalpaca book --profile {profile_name}`: "
                 f"{base['totals']['book_minutes']:g} minutes as `polyalpaca plan` predicts for this machine), and "
                 "change one setting at a time, in this order. Keep the same artefacts folder: what a change does "
                 "not touch is reused, so each step costs only the computation it adds (the minutes below are "
                 f"`polyalpaca plan --profile {profile_name} -s ...` predictions on the measured rates, computed "
                 "when this book was built) plus re-executing the chapters and the HTML (about "
                 f"{fixed:g} minutes). Pass the same `-s` to `polyalpaca book` to rebuild.", ""]
        for number, (change, kind, look) in enumerate(LAB_STEPS, start=1):
            table = plan(change)
            models = table["evaluation"]["models"]  # every model evaluated, the base model included
            if kind == "lora":
                runs = trained(table, "lora")
                minutes = sum(r["cpu_minutes"] for r in runs) + eval_minutes(table, len(runs) / max(models, 1))
                what = f"the {len(runs)} LoRA models, trained and evaluated"
            elif kind == "evaluation":
                minutes = eval_minutes(table)
                what = "every model's answers and likelihoods, nothing is retrained"
            elif kind == "added":
                added = len(trained(table)) - len(trained(base))
                minutes = (table["totals"]["cpu_minutes"] - base["totals"]["cpu_minutes"]
                           + eval_minutes(table) - eval_minutes(base))
                what = f"{added} more models, trained and evaluated"
            else:
                per_lang = next((r["examples_per_epoch"] for r in table["runs"] if r["recipe"] == "monolingual"), 0)
                minutes = table["totals"]["cpu_minutes"] + eval_minutes(table)
                what = f"every model, on {per_lang} training examples per language, and its answers"
            sets = " ".join(f"-s {k} {json_module.dumps(v) if isinstance(v, list) else v}" for k, v in change.items())
            sets = sets.replace("[42, 43, 44]", "'[42, 43, 44]'")
            text = (look.replace("{examples}", str(examples)).replace("{prompts}", str(base_profile.data.test_limit))
                    .replace("{min_seeds}", str(base_profile.findings.min_seeds)))
            lines.append(f"{number}. `{sets}`. *Recomputes* {what} (about {max(minutes, 0.1):.1f} min). "
                         f"*Look for:* {text}")
    return "\n".join(lines) + "\n"


def record_timings(path: Path, timings: dict[str, float], profile: str) -> str:
    """Add this build's seconds per chapter to ``path`` under ``profile`` and return the intro's
    table for that profile: the last build (fast when the artefacts were reused) and the slowest
    recorded one (the build that computed them: what a first run costs). Each profile has its own
    record, so a quick lab build never stands in for the default's time."""
    known = json.loads(path.read_text()) if path.exists() else {}
    mine = known.setdefault("profiles", {}).setdefault(profile, {})
    mine.setdefault("last", {}).update(timings)
    slowest = mine.setdefault("slowest", {})
    for name, seconds in timings.items():
        slowest[name] = max(seconds, slowest.get(name, 0.0))
    atomic_write_text(path, json.dumps({"profiles": known["profiles"]}, indent=2))

    def minutes(table: dict, name: str) -> str:
        return f"{table[name] / 60:.1f}" if name in table else "not run"

    rows = [[name, minutes(mine["last"], name), minutes(slowest, name)] for name in CHAPTERS]
    return (f"Profile `{profile}`:\n\n"
            + _md_table(["chapter", "minutes in the last build", "minutes in the slowest recorded build"], rows))


def data_stats_page() -> str:
    """Counts, lengths, categories and langdetect agreement of the embedded data."""
    agreement = datacheck.langdetect_agreement()
    rows = []
    for lang in EMBEDDED_TEST_LANGUAGES:
        train = embedded_train(lang).items if lang in EMBEDDED_TRAIN_LANGUAGES else []
        tests = embedded_test(lang).items
        words = [len(r.output.split()) for r in train]
        a = agreement[lang]
        rows.append([lang, len(train), len(tests), sum(t.answer is not None for t in tests),
                     f"{statistics.median(words):.0f}" if words else "-",
                     *[f"{a[k]:.3f}" if k in a and a[k] == a[k] else "-" for k in ("instruction", "output", "prompt", "reference")]])
    table = _md_table(["language", "train records", "test prompts", "verifiable", "median output words",
                       "langdetect: instructions", "outputs", "test prompts", "references"], rows)
    cats = _md_table(["category", "records"], [[k, v] for k, v in datacheck.category_counts().items()])
    return (table + "\nMedian words are whitespace-separated tokens (not meaningful for Chinese). "
            "langdetect columns give the share of texts whose detected language equals the label "
            "(outputs with code blocks removed).\n\nCategories of the training records:\n\n" + cats)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "execute":
        raise SystemExit(_execute_here(*sys.argv[2:]))
    raise SystemExit("internal entry point of polyalpaca.book; use `polyalpaca book` or `polyalpaca run`")
