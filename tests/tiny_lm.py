"""A tiny randomly initialised causal LM with a locally built tokenizer, for collection tests.

No download: the tokenizer is a ``tokenizers`` WordLevel model over a small vocabulary
(the numbers 0-99, a few words, special tokens) wrapped in ``PreTrainedTokenizerFast`` with a
simple Jinja chat template; the model is a 2-layer LLaMA with random weights (seeded).
"""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "user assistant system : the answer is how many apples does tom have ? let's think step by step "
    "confidence correct yes no . , $ + - = and has gives eats left total so"
).split()
VOCAB = SPECIALS + [str(n) for n in range(100)] + sorted(set(WORDS))

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_tiny_lm(folder: Path, seed: int = 0, hidden: int = 32, heads: int = 4) -> Path:
    """Write a tokenizer and a random 2-layer LLaMA (``hidden`` wide, ``heads`` heads) into ``folder``; return it.

    vLLM's attention kernels want a head size such as 64: use ``hidden=128, heads=2`` there.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    return folder
