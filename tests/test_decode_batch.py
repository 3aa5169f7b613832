"""Iteration-level decoding: rows that join a running batch, and leave it, write exactly what
static `generate` writes for them."""

from __future__ import annotations

import pytest
import torch

from alter.data.generation import GenerationSettings
from alter.models.decode_batch import DecodeBatch, Generating
from alter.models.mta_model import MTAModel
from tests.conftest import model_config, randomise_experts


@pytest.fixture(scope="module", params=[("tiny-llama", "none"), ("tiny-llama", "int8"), ("tiny-gpt2", "none"),
                                        ("tiny-gpt2", "int8")], ids=lambda param: "-".join(param))
def model(registry, request):
    """Float32, and int8 generation (`inference.quantize`): a row's tokens do not depend on
    its batchmates under either."""
    backbone, quantize = request.param
    torch.manual_seed(0)
    model = MTAModel(model_config(backbone, kind="lora", rank=4, shared_expert=True),
                     [registry.get("dialogsum"), registry.get("sst2"), registry.get("rte")]).eval()
    randomise_experts(model)
    model.set_inference(quantize)
    return model


def prompts(model, samples) -> list:
    """Generation rows of different lengths and tasks (task ids route the MTA gates)."""
    examples = samples["dialogsum"][:3] + samples["sst2"][:2] + samples["rte"][:1]
    rows = model.encode(examples, with_target=False)
    rows[1].input_ids = rows[1].input_ids[:20]  # lengths differ a lot: padding differs
    return rows


def greedy(max_new_tokens: int, **settings) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, num_beams=1, **settings)


def static(model, row, settings: GenerationSettings | int) -> list[int]:
    """What `generate` writes for the row alone, up to its end token."""
    settings = greedy(settings) if isinstance(settings, int) else settings
    new = model.head.generate_ids(model.backbone, [row], model.tokenizer, settings)[0].tolist()
    eos = model.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def batch_of(model) -> DecodeBatch:
    return model.decode_batch()


def test_the_model_decodes_iteration_by_iteration(model):
    assert model.decodes() and not model.decodes(GenerationSettings(num_beams=2))


def test_rows_that_join_and_leave_write_what_generate_writes(model, samples):
    rows = prompts(model, samples)
    budgets = [6, 3, 9, 4, 7, 5]
    done: dict[int, list[int]] = {}
    entries = [Generating(row, greedy(budget), on_done=lambda entry, i=i: done.__setitem__(i, entry.tokens))
               for i, (row, budget) in enumerate(zip(rows, budgets))]
    batch = batch_of(model)
    batch.join(entries[:2])
    batch.step()
    batch.join(entries[2:4])  # join while two rows run, one of them nearly done
    for _ in range(2):
        batch.step()
    batch.join(entries[4:])
    while len(batch):
        batch.step()
    assert sorted(done) == list(range(len(rows)))
    for i, (row, budget) in enumerate(zip(rows, budgets)):
        assert done[i] == static(model, row, budget), i


def test_input_routed_gates_keep_what_each_row_saw_at_prefill(registry, samples):
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=4, gate="task+input"),
                     [registry.get("dialogsum"), registry.get("sst2")]).eval()
    randomise_experts(model)
    model.start_collaboration("residual")
    with torch.no_grad():
        for layer in model.mta_layers:
            layer.gate.router.weight.normal_(0, 0.5)
    rows = model.encode(samples["dialogsum"][:2] + samples["sst2"][:2], with_target=False)
    done: dict[int, list[int]] = {}
    batch = batch_of(model)
    batch.join([Generating(rows[0], greedy(5), on_done=lambda entry: done.__setitem__(0, entry.tokens))])
    batch.step()
    batch.join([Generating(row, greedy(5), on_done=lambda entry, i=i: done.__setitem__(i, entry.tokens))
                for i, row in enumerate(rows[1:], start=1)])
    while len(batch):
        batch.step()
    for i, row in enumerate(rows):
        assert done[i] == static(model, row, 5), i


def test_a_cancelled_row_leaves_at_the_next_step_without_an_answer(model, samples):
    rows = prompts(model, samples)[:2]
    done, seen = [], []
    entries = [Generating(row, greedy(8), on_token=lambda entry: seen.append(len(entry.tokens)),
                          on_done=lambda entry: done.append(entry)) for row in rows]
    batch = batch_of(model)
    batch.join(entries)
    entries[0].cancelled = True
    batch.step()
    assert len(batch) == 1 and batch.rows[0] is entries[1]
    while len(batch):
        batch.step()
    assert done == [entries[1]] and len(entries[0].tokens) == 1 and len(entries[1].tokens) == 8
    assert seen.count(8) == 1  # a streamed row hears of every token it writes


def run_continuously(model, rows, settings: list[GenerationSettings]) -> dict[int, list[int]]:
    """Each row's tokens when rows join a running batch two at a time."""
    done: dict[int, list[int]] = {}
    entries = [Generating(row, how, on_done=lambda entry, i=i: done.__setitem__(i, entry.tokens))
               for i, (row, how) in enumerate(zip(rows, settings))]
    batch = batch_of(model)
    for start in range(0, len(entries), 2):
        batch.join(entries[start: start + 2])
        batch.step()
    while len(batch):
        batch.step()
    return done


def test_each_row_writes_under_its_own_settings_as_generate_does(model, samples):
    rows = prompts(model, samples)
    settings = [greedy(12, no_repeat_ngram_size=2), greedy(9), greedy(10, repetition_penalty=1.5),
                greedy(12, temperature=0.8, top_p=0.9, seed=3), greedy(8, temperature=1.3, seed=11),
                greedy(11, no_repeat_ngram_size=3, repetition_penalty=1.2)]
    done = run_continuously(model, rows, settings)
    for i, (row, how) in enumerate(zip(rows, settings)):
        assert done[i] == static(model, row, how), i


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(model, samples):
    rows = prompts(model, samples)[:3]
    sampled = greedy(10, temperature=1.0, seed=5)
    first = static(model, rows[0], sampled)
    torch.rand(7)  # the process's random state moves on: the seed alone decides
    assert first == static(model, rows[0], sampled)
    assert run_continuously(model, rows, [sampled, greedy(10), sampled])[0] == first
    assert first != static(model, rows[0], greedy(10, temperature=1.0, seed=6))
