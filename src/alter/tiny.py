"""Tiny random backbones of each family (hidden size 32, 2 layers) for tests and smoke runs.

Named `tiny-llama`, `tiny-gpt2`, `tiny-t5`, `tiny-bart`, `tiny-bert`; built with a fixed seed
and a byte-level tokenizer, saved once in the cache directory, never downloaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3
VOCAB_SIZE = 256 + len(SPECIALS)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is a token: no training, no files, the same ids on every machine."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for token in sorted(alphabet):
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", cls_token="<s>", sep_token="</s>",
    )


def _model(family: str) -> torch.nn.Module:
    common = dict(vocab_size=VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=1024, **common))
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **common))
    if family == "t5":
        return T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
                                                   decoder_start_token_id=0, **common))
    if family == "bart":
        return BartForConditionalGeneration(BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=1024, decoder_start_token_id=2, forced_eos_token_id=None, **common))
    if family == "bert":
        return BertModel(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=1024, **common))
    raise KeyError(family)


TINY_FAMILIES = ("llama", "gpt2", "t5", "bart", "bert")


def build_tiny_backbone(family: str, target: Path) -> None:
    """Write a tiny random model of `family` and its tokenizer to `target` (atomically)."""
    with torch.random.fork_rng():  # the same weights everywhere, the caller's RNG untouched
        torch.manual_seed(0)
        model = _model(family)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tiny-{family}-") as tmp:
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        byte_tokenizer().save_pretrained(out)
        if not (target / "config.json").exists():
            os.replace(out, target)
