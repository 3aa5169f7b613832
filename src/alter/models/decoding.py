"""Token choice under `GenerationSettings`, the same on both serving paths: `generate`
(static batches, evaluation) gets `generate_kwargs`, the continuous scheduler's running
batch (`serve.decode_batch`) a `TokenChooser` per row.

Repetition controls look at the tokens written so far only, never at the prompt: a
decoder-only prompt holds the whole dialogue, and a summary must be free to reuse its
phrases (as an encoder-decoder's decoder, which sees its own tokens only, is). The same
transformers processors run in the same order on both paths, so a row writes the same
tokens whichever path serves it; a seeded sample draws from a generator of its own, so it
does not depend on the other rows of its batch either.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from alter.data.generation import GenerationSettings


def processors(settings: GenerationSettings, prompt_length: int = 0) -> LogitsProcessorList:
    """transformers' processors for `settings`, in `generate`'s order (repetition controls,
    then the sampling warpers); the controls see the tokens after `prompt_length` only."""
    controls = []
    if (settings.repetition_penalty or 1.0) != 1.0:
        controls.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        controls.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    chain = [_WrittenOnly(control, prompt_length) for control in controls]
    if settings.samples:
        if settings.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p is not None and settings.top_p < 1.0:
            chain.append(TopPLogitsWarper(settings.top_p))
    return LogitsProcessorList(chain)


def generate_kwargs(settings: GenerationSettings, prompt_length: int) -> dict:
    """Arguments for a backbone's `generate` that write as `settings` say (`max_new_tokens`
    set). Every processor comes in `logits_processor` and `generate`'s own are turned off, so
    that nothing of the backbone's generation_config adds to them."""
    kwargs = {"max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams or 1,
              "do_sample": settings.samples, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
              "logits_processor": processors(settings, prompt_length)}
    if settings.samples:  # the warpers are ours: generate's own stay neutral
        kwargs.update(temperature=1.0, top_k=0, top_p=1.0)
    return kwargs


@contextlib.contextmanager
def seeded(settings: GenerationSettings):
    """`generate`'s draws follow the settings' seed inside; the process's random state is
    restored after. Nothing happens for settings that do not sample."""
    if not settings.samples:
        yield
        return
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(_seed(settings))
        yield


class TokenChooser:
    """One row's next token under its settings, as `generate` picks it for a batch of one:
    the processors over the tokens written so far, then argmax or a draw from the row's
    own generator (seeded as `seeded` seeds `generate`)."""

    def __init__(self, settings: GenerationSettings, device: torch.device):
        self.processors = processors(settings)
        self.generator = None
        if settings.samples:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(_seed(settings))

    def __call__(self, written: list[int], logits: torch.Tensor) -> int:
        """`logits`: (V,) the row's next-token logits; `written`: its tokens so far."""
        ids = torch.tensor([written], dtype=torch.long, device=logits.device)  # (1, L)
        scores = self.processors(ids, logits[None].float())  # (1, V)
        if self.generator is None:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))


def _seed(settings: GenerationSettings) -> int:
    return settings.with_seed().seed  # the settings' own, or one drawn as a request's would be


class _WrittenOnly:
    """A processor that sees the written tokens only: `input_ids[:, prompt_length:]`."""

    def __init__(self, processor, prompt_length: int):
        self.processor, self.prompt_length = processor, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids[:, self.prompt_length:], scores)
