"""Small helpers the chapter notebooks share, so every chapter starts and reports the same way."""
from __future__ import annotations

import logging
import random
import textwrap
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

# Libraries import tqdm.auto, which in a kernel without ipywidgets warns on every page; the
# chapters print plain progress lines instead (``Progress``), so the notice is noise there.
warnings.filterwarnings("ignore", message="IProgress not found")

from .preflight import preflight  # noqa: E402

if TYPE_CHECKING:
    from .grid import Experiment


def setup(profile: str, artefacts_dir: str = "", overrides: dict | None = None) -> Experiment:
    """Check the profile with its overrides (``polyalpaca.preflight``: a ``SettingsError`` listing
    every problem, before torch is imported or anything is loaded), then seed everything, quiet
    the libraries' logs, and return the ``grid.Experiment``."""
    p = preflight(profile, overrides or {})
    import torch
    import transformers

    from .grid import Experiment

    random.seed(p.data.seed)
    np.random.seed(p.data.seed)
    torch.manual_seed(p.data.seed)
    # Library deprecation notices are for developers, not for the book's pages.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("polyalpaca").setLevel(logging.INFO)
    exp = Experiment(p, artefacts_dir or None)
    exp.write_manifest()
    return exp


def glue(name: str, value, display: bool = False):
    """Make a value available to the page's prose ({glue:text}`name`), as myst-nb does."""
    from myst_nb import glue as _glue

    _glue(name, value, display=display)
    return value


def say(text: str, width: int = 88) -> None:
    """Print a message wrapped to the page's width."""
    print(textwrap.fill(text, width))


class Progress:
    """A progress line that stays readable in an executed notebook: one printed line per step."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label, self.start = total, 0, label, time.time()

    def step(self, what: str, n: int = 1) -> None:
        self.done += n
        print(f"[{self.done}/{self.total}] {self.label}: {what} ({time.time() - self.start:.0f} s)", flush=True)
