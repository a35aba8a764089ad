"""Shared fixtures. Tests run on the tiny random Gemma 3 (real tokenizer) and never touch the
real book or artefacts: everything goes to pytest's temporary folders."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from polyalpaca.models import tiny_gemma_folder

    return tiny_gemma_folder()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from polyalpaca.models import TINY_GEMMA, load_tokenizer

    return load_tokenizer(TINY_GEMMA)


@pytest.fixture(scope="session")
def template():
    from polyalpaca.prompts import load_template

    return load_template()


@pytest.fixture
def double():
    """A fresh local OpenAI-API test double (tests/openai_double.py) for one test."""
    from openai_double import OpenAIDouble

    with OpenAIDouble(hang_s=1.0) as d:
        yield d
