import pytest

from polyalpaca.config import available_profiles, load_profile
from polyalpaca.prompts import load_template


def test_template_builds_prompts_with_and_without_input():
    t = load_template()
    with_input = t.build("Translate the text.", "Hello")
    assert "### Input:\nHello" in with_input and with_input.endswith("### Response:\n")
    without = t.build("Name a colour.")
    assert "### Input" not in without and without.startswith("Below is an instruction")


def test_extract_response_cuts_at_next_section():
    t = load_template()
    text = t.build("Q?") + "Answer line 1\nline 2\n### Instruction:\nmore"
    assert t.extract_response(text) == "Answer line 1\nline 2"
    assert t.extract_response("### Response:\n### Instruction: x") == ""


def test_profiles_load_and_differ():
    assert {"tiny", "cpu", "paper"} <= set(available_profiles())
    paper = load_profile("paper")
    assert paper.lora.lora.r == 8 and paper.lora.lora.alpha == 16 and paper.lora.epochs == 5
    assert paper.lora.loss_on == "all" and paper.full.loss_on == "response" and paper.full.epochs == 3
    assert paper.eval.decoding.num_beams == 4 and paper.eval.decoding_full.repetition_penalty == 1.1
    assert paper.data.validation_size == 1000


def test_overrides_and_typos():
    p = load_profile("tiny", {"lora.epochs": 3, "data.seed": 7})
    assert p.lora.epochs == 3 and p.data.seed == 7
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        load_profile("tiny", {"lora.epoch": 3})
    with pytest.raises(FileNotFoundError, match="available"):
        load_profile("nope")
