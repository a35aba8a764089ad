"""Small helpers the chapter notebooks share, so every chapter starts and reports the same way
(what the data, translation, training and evaluation chapters show is ``polyalpaca.reports``)."""
from __future__ import annotations

import logging
import random
import textwrap
import warnings
from pathlib import Path

import numpy as np

# Libraries import tqdm.auto, which in a kernel without ipywidgets warns on every page; the
# chapters print plain progress lines instead (``Progress``), so the notice is noise there.
warnings.filterwarnings("ignore", message="IProgress not found")

from .grid import Experiment  # noqa: E402
from .preflight import preflight  # noqa: E402
from .teaching import table  # noqa: E402

# torch and transformers are imported in ``setup``, after the profile is checked: a bad setting
# is reported before the seconds they take to import.


def setup(profile: str, artefacts_dir: str = "", overrides: dict | None = None) -> Experiment:
    """Check the profile with its overrides (``polyalpaca.preflight``: a ``SettingsError`` listing
    every problem, before torch is imported or anything is loaded), then seed everything, quiet
    the libraries' logs, and return the ``grid.Experiment``."""
    p = preflight(profile, overrides or {})
    import torch
    import transformers

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
    from .book import profile_identity

    # The build this page's numbers come from (the book records it in every executed chapter).
    glue("build", profile_identity(p, artefacts_dir)["build"])
    return exp


def glue(name: str, value, display: bool = False) -> None:
    """Make a value available to the page's prose ({glue:text}`name`), as myst-nb does. Returns
    nothing, so a cell that ends with it shows no stray value."""
    from myst_nb import glue as _glue

    _glue(name, value, display=display)


def save_figure(fig, name: str) -> None:
    """Save a figure for the book's other pages (``book/chapters/generated/NAME.png``); chapters
    run in ``book/chapters``."""
    folder = Path("generated")
    folder.mkdir(exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")


def save_table(frame, name: str) -> None:
    """Save a table for the book's generated pages (``book/chapters/generated/NAME.csv``, next to
    the figures): it belongs to this build, as the page does, where a file in the artefacts folder
    may have been rewritten since by a run with other settings."""
    from pathlib import Path

    folder = Path("generated")
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / f"{name}.csv", index=False)


def say(text: str, width: int = 88) -> None:
    """Print a message wrapped to the page's width."""
    print(textwrap.fill(text, width))


def show(frame, caption: str = "", collapsed: bool = False, precision: int = 3, formats: dict | None = None) -> None:
    """Display a table without the index column, numbers rounded (``formats`` maps columns to
    format strings, as ``teaching.table``); with ``collapsed`` inside a closed ``<details>`` block
    (opened by a click) so a long table does not take over the page."""
    from IPython.display import HTML, display

    html = table(frame, precision=precision, formats=formats).to_html()
    if collapsed:
        display(HTML(f"<details><summary>{caption or 'the full table'} (click to open)</summary>{html}</details>"))
    else:
        if caption:
            display(HTML(f"<p><em>{caption}</em></p>"))
        display(HTML(html))


from .progress import Progress  # noqa: E402,F401  (the chapters' progress lines)
