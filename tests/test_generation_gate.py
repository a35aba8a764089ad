"""Batched generation and the language gate."""
import pytest

from polyalpaca.data import TestPrompt
from polyalpaca.evaluate import score_answer, verifiable_correct
from polyalpaca.generate import DecodingConfig, generate_one_at_a_time, generate_texts
from polyalpaca.langid import agreement, detect_language, detect_language_fasttext, is_echo, is_loop, language_gate, normalise_code
from polyalpaca.models import TINY_GEMMA, load_model

PROMPTS = ["Hello, how are you today?", "Назови три цвета.", "请写一首关于月亮的短诗。",
           "Explain gravity in one long sentence for a child who asks many questions.", "Hola"]


def test_batched_generation_equals_one_at_a_time(tiny_model_dir, tokenizer):
    model = load_model(TINY_GEMMA)
    decoding = DecodingConfig(max_new_tokens=12, batch_size=3)
    batched = generate_texts(model, tokenizer, PROMPTS, decoding)
    single = generate_one_at_a_time(model, tokenizer, PROMPTS, decoding)
    assert batched == single and len(batched) == len(PROMPTS)
    assert generate_texts(model, tokenizer, PROMPTS, decoding) == batched  # greedy is repeatable


def test_beam_search_settings_reach_generate(tiny_model_dir, tokenizer):
    model = load_model(TINY_GEMMA)
    decoding = DecodingConfig(max_new_tokens=6, num_beams=2, no_repeat_ngram_size=3, repetition_penalty=1.1,
                              batch_size=2)
    assert decoding.generate_kwargs()["num_beams"] == 2
    assert len(generate_texts(model, tokenizer, PROMPTS[:2], decoding)) == 2


@pytest.mark.parametrize("text, lang", [
    ("The weather is lovely today and we are going to the park.", "en"),
    ("Сегодня прекрасная погода, и мы идём в парк.", "ru"),
    ("Днес времето е прекрасно и отиваме в парка с децата.", "bg"),
    ("今天天气很好，我们要去公园散步。", "zh"),
    ("Hoy hace un tiempo precioso y vamos al parque.", "es"),
    ("I dag er været nydelig, og vi skal gå en tur i parken sammen.", "no"),
    ("আজ আবহাওয়া খুব সুন্দর, আমরা পার্কে যাচ্ছি।", "bn"),
])
def test_detects_fixed_multilingual_strings(text, lang):
    assert detect_language(text) == lang
    assert language_gate("Question?", text, lang).passed
    # The second detector, offline. Its compressed lid.176 model takes this Norwegian for Danish:
    # exactly the kind of disagreement the per-language agreement table exists to show.
    assert detect_language_fasttext(text) == ("da" if lang == "no" else lang)


def test_second_detector_agreement():
    texts = ["The weather is lovely today.", "Сегодня прекрасная погода.", "今天天气很好。", "12 + 30 = 42"]
    assert detect_language_fasttext("12 + 30") is None
    assert agreement(texts) == 1.0  # the letterless text is skipped, the others agree


def test_code_normalisation_and_no_letters():
    assert normalise_code("zh-cn") == "zh" and normalise_code("zh-tw") == "zh" and normalise_code("nb") == "no"
    assert detect_language("12345 !!!") is None
    g = language_gate("How much?", "12345", "en")
    assert not g.passed and g.reason == "no_letters"


def test_echo_loop_empty_and_wrong_language_fail_with_reasons():
    q = "Что такое фотосинтез и зачем он нужен растениям?"
    assert language_gate(q, q, "ru").reason == "echo" and is_echo(q, q + " ")
    assert language_gate(q, "", "ru").reason == "empty"
    loop = "Растения растут. " * 12
    assert is_loop(loop) and language_gate(q, loop, "ru").reason == "loop"
    wrong = language_gate(q, "Photosynthesis lets plants turn light into sugar and oxygen.", "ru")
    assert wrong.reason == "wrong_language" and wrong.detected == "en" and not wrong.passed
    ok = language_gate(q, "Фотосинтез превращает свет в сахар и кислород, которые нужны растениям.", "ru")
    assert ok.passed and ok.line_pass


def test_line_level_pass_catches_mixed_answers():
    mixed = "Столица Франции — Париж, это красивый город.\nIt is also the largest city in the country."
    g = language_gate("Какая столица Франции?", mixed, "ru")
    assert not g.line_pass


def test_verifiable_answers_and_gated_scores():
    p = TestPrompt("q1", "en", "In which year did the Apollo 11 landing happen?", "It happened in 1969.", "1969", "number")
    assert verifiable_correct(p, "The landing was in 1969.") is True
    assert verifiable_correct(p, "It was in 19690.") is False
    name = TestPrompt("q2", "ru", "Какая планета самая большая?", "Юпитер.", "Юпитер", "name", ("юпитер",))
    assert verifiable_correct(name, "Самая большая планета — Юпитер.") is True
    wrong_lang = score_answer("run", p, "El aterrizaje fue en 1969, un gran momento para todos.")
    assert wrong_lang.correct is False and wrong_lang.gated_chrf == 0.0 and wrong_lang.chrf > 0


def test_echoes_that_start_with_the_question_or_repeat_it_fail():
    """The two cases the first cpu build let through, and answers that quote the question fairly."""
    q = "¿Cuál es el planeta más cercano al Sol?"
    thrice = f"{q} {q} {q}"  # the base model: the question three times over
    assert language_gate(q, thrice, "es").reason == "echo"
    restated = (f"{q} ¿Y cuál es el más lejano? ¿Cuántos planetas hay? ¿Qué planeta es el más grande?")
    assert language_gate(q, restated, "es").reason == "echo"  # restates it and asks three more
    near = "Cuál es el planeta más cercano al sol. Mercurio es el planeta más cercano."
    assert is_echo(q, near)  # starts with the question, punctuation aside
    answer = "Mercurio es el planeta más cercano al Sol; tarda 88 días en dar la vuelta."
    assert not is_echo(q, answer) and language_gate(q, answer, "es").passed
    quoting = "Buena pregunta. " + "Mercurio es el más cercano, y también el más pequeño del sistema solar. " * 2
    assert not is_echo(q, quoting)


def test_generation_stops_at_the_next_template_section(tokenizer):
    """The cheap stop criterion sees the template's next section in each sequence's new text."""
    import torch

    from polyalpaca.generate import StopAtText

    prompt = tokenizer("Question?", add_special_tokens=False)["input_ids"]
    rows = [prompt + tokenizer("An answer.\n### Instruction:", add_special_tokens=False)["input_ids"],
            prompt + tokenizer("An answer that goes on and on", add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    assert StopAtText(tokenizer, ["\n### "], len(prompt))(ids, None).tolist() == [True, False]


def test_the_gate_decides_among_the_study_languages():
    """langdetect alone calls this Bulgarian sentence Macedonian (a language no model here was
    asked or trained in); among the study's languages it is Bulgarian, and the gate passes it."""
    text, study = "Водата е мокра.", ("bg", "en", "ru")
    assert detect_language(text) == "mk"
    assert detect_language(text, 0, study) == "bg"
    assert not language_gate("Каква е водата?", text, "bg").passed
    assert language_gate("Каква е водата?", text, "bg", 0, study).passed
