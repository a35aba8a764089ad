"""The Alpaca template and turning records into tokens (``polyalpaca.prompts``)."""
import pytest

from polyalpaca.config import DecodingConfig
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


@pytest.mark.parametrize("spec, starts_with_bos", [("tiny-random-gemma3", True), ("tiny-random-bloom", False)])
def test_bos_as_the_models_tokenizer_does_it(spec, starts_with_bos):
    """Training, generation and likelihood scoring start a prompt as the model's tokenizer starts a
    text: Gemma's with its BOS, BLOOM's with none (the authors trained BLOOM without one)."""
    import torch

    from polyalpaca.data import Record
    from polyalpaca.generate import _generate_batch
    from polyalpaca.likelihood import _encode
    from polyalpaca.models import load_model, load_tokenizer
    from polyalpaca.prompts import encode_prompt, tokenize_example

    tok, t = load_tokenizer(spec), load_template()
    prompt = t.build("Name a colour.")
    expected = tok(prompt)["input_ids"]  # the tokenizer's own special tokens
    assert (expected[0] == tok.bos_token_id) == starts_with_bos
    assert encode_prompt(tok, prompt) == expected
    trained = tokenize_example(Record("r", "en", "Name a colour.", "", "Red."), tok, t, 512, "all")["input_ids"]
    assert trained[:len(expected)] == expected
    assert _encode(tok, t, "Name a colour.", "Red.", 8)[0] == expected
    model = load_model(spec)
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    _generate_batch(model, tok, [prompt], DecodingConfig(max_new_tokens=1, stop_strings=()))
    assert seen[0][0].tolist() == expected


def test_full_tuning_templates_as_the_authors_used_them():
    """Full fine-tuning trained with the answer right after '### Response:' and asked with an
    indented prompt; its answer is the text after '### Response:' up to a next one, </s> kept."""
    train, ask = load_template("alpaca-full"), load_template("alpaca-full-inference")
    assert train.build("Name a colour.").endswith("\n\n### Response:")
    assert ask.build("Name a colour.").endswith("\n\n    ### Instruction:\n    Name a colour.\n\n    ### Response:\n    ")
    assert ask.extract_response("### Response:\n" + "Red.</s>") == "Red.</s>"
    assert ask.extract_response("### Response:\n" + "Red.\n### Instruction: again ### Response: x") == \
        "Red.\n### Instruction: again"
