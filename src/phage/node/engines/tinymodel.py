"""A tiny Llama-architecture model made locally: random weights, a byte-level BPE tokenizer.

Model weights cannot be downloaded everywhere phage is tested or demonstrated, so
tests and ``phage demo`` make one in well under a second and load it with the
real transformers code. It writes text, not sense.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAINING_TEXT = [
    "def add(a, b):\n    return a + b\n",
    "print('hello world')\n",
    "for i in range(10):\n    print(i * i)\n",
    "The quick brown fox jumps over the lazy dog.",
    "phage turns many machines into one dependable service.",
]


def make_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    vocab_size: int = 384,
    name: str = "tiny-llama",
    layers: int = 2,
    hidden_size: int = 32,
    intermediate_size: int = 64,
) -> Path:
    """Write a tiny causal LM + tokenizer to ``path`` (a Hugging Face model directory).

    ``layers`` is the number of decoder blocks (sharded-model tests split 8 over
    several nodes); ``hidden_size`` and ``intermediate_size`` size the benchmark's
    larger variant.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    (path / "phage-model.json").write_text(json.dumps({"name": name}))
    return path
