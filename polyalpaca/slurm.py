"""A profile's grid as a SLURM array job: one array task trains one model of the grid.

    polyalpaca slurm jobs --profile paper      index<TAB>run<TAB>done|todo, one line a job
                                               (a 4th column names runs sharing the model)
    polyalpaca slurm array --profile paper     the indices still to train, for sbatch --array
    polyalpaca slurm run --profile paper --index 7    the run id of job 7 (for polyalpaca train)

``scripts/slurm/train_grid.sbatch`` uses them: each array task trains its job with ``accelerate
launch ... -m polyalpaca train --run RUN_ID`` on N nodes x G GPUs, into the shared artefacts
folder (``POLYALPACA_ARTEFACTS``). A job is one trained model: runs that train exactly the same
model (the English-only run *is* the English monolingual run) are one job, so no two tasks ever
train into the same folder. A task that is stopped resumes from its last checkpoint when it runs
again; a job that is done is skipped.

The jobs are the grid's trained models (``polyalpaca.design.trained_models``: the recipes' rules,
in grid order), so the indices are the same on a machine without the data and in the array tasks
that have them. Where the training data can be read, each job also carries its run id and "done"
comes from the run folder; where they cannot (the paper's data are on the Hugging Face Hub),
"done" is read from the run records (``run.json`` and ``DONE``) in the artefacts folder.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from . import design, store
from .data import DataError
from .grid import Experiment


@dataclass(frozen=True)
class Job:
    """One array task: the model it trains and the grid runs that use that model."""

    index: int
    label: str  # the first run's label, METHOD-NAME-sSEED (what people read)
    model: str
    method: str
    seed: int
    done: bool
    run_id: str = ""  # what `polyalpaca train --run` is given; "" when the data cannot be read here
    shared_with: tuple[str, ...] = ()  # labels of the other runs that use this trained model

    @property
    def status(self) -> str:
        return "done" if self.done else "todo"


@dataclass(frozen=True)
class JobList:
    jobs: list[Job]
    from_data: bool  # built from the data (exact run ids) or from the profile's grid description
    note: str = ""


def grid_jobs(exp: Experiment) -> JobList:
    """The jobs of ``exp``'s grid, one per trained model (``design.trained_models``), in grid order
    (models, methods, seeds, recipes). Where the training data can be read, each job carries the
    run id that ``polyalpaca train --run`` is given."""
    models = design.trained_models(exp.profile)
    try:
        runs = {run.label: run for run in exp.runs(include_base=False)}
    except (OSError, DataError) as exc:  # e.g. the Hub is unreachable: ConnectionError is an OSError
        return JobList(_jobs_from_records(exp, models), from_data=False,
                       note=f"training data not readable here ({type(exc).__name__}: {exc}); jobs from the "
                            "profile's grid description, done from the run records")
    jobs = []
    for cells in models:
        run = runs[cells[0].label]
        jobs.append(Job(len(jobs), run.label, run.model, run.method, run.seed, exp.is_trained(run), run.run_id,
                        tuple(c.label for c in cells[1:])))
    return JobList(jobs, from_data=True)


def _jobs_from_records(exp: Experiment, models: list[list[design.Cell]]) -> list[Job]:
    """The same jobs without the data: done when a finished run record (``run.json`` and
    ``DONE``) has the job's model, method, seed, settings and one of its cells' names."""
    p = exp.profile
    finished = store.finished_run_records(exp.root)
    jobs: list[Job] = []
    for cells in models:
        first = cells[0]
        train_config = _plain(dataclasses.asdict(dataclasses.replace(p.train_config(first.method), seed=first.seed)))
        done_names = {r["name"] for r in finished
                      if (r["model"], r["method"], r["seed"]) == (first.model, first.method, first.seed)
                      and _plain(r["train_config"]) == train_config}
        done = any(c.name in done_names for c in cells)
        jobs.append(Job(len(jobs), first.label, first.model, first.method, first.seed, done,
                        shared_with=tuple(c.label for c in cells[1:])))
    return jobs


def _plain(value) -> str:
    """A canonical text of JSON-like data (tuples and lists alike), for comparing settings."""
    return json.dumps(value, sort_keys=True)


def array_spec(indices: list[int]) -> str:
    """SLURM's --array syntax for ``indices``: ranges joined by commas, e.g. ``0-3,5,7-8``."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        parts.append(str(ordered[start]) if start == end else f"{ordered[start]}-{ordered[end]}")
        start = end + 1
    return ",".join(parts)
