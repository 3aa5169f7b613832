"""Save/load, generation with beams, and learning, on tiny random models."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import alter
from alter.config import StageConfig
from alter.data.collate import IGNORE, Encoded, length_batches
from alter.data.generation import GenerationSettings
from alter.data.spec import TaskSpec
from alter.data.task import Example, Task
from alter.models.mta_model import MTAModel
from alter.training.stages import prepare_stage
from tests.conftest import model_config, randomise_experts


@pytest.mark.parametrize("backbone,head,kind", [
    ("tiny-llama", "lm", "bottleneck"), ("tiny-t5", "lm", "lora"), ("tiny-bert", "classifier", "bottleneck"),
    ("tiny-gpt2", "lm", "ffn_copy"),
])
def test_save_then_load_gives_identical_logits_and_tokens(registry, samples, tmp_path, backbone, head, kind):
    names = ["sst2", "stsb"] if head == "classifier" else ["sst2", "dialogsum"]
    tasks = [registry.get(name) for name in names]
    model = MTAModel(model_config(backbone, head, kind=kind), tasks).eval()
    randomise_experts(model)
    model.start_collaboration("softmax", 0.7)
    examples = [e for name in names for e in samples[name][:3]]
    model.save(tmp_path / "model")
    loaded = alter.load(tmp_path / "model", "none")  # float32, as the model it was saved from
    with torch.no_grad():
        assert torch.equal(model(model.encode(examples)), loaded(loaded.encode(examples)))
    assert model.predict(examples, max_new_tokens=8, num_beams=2) == loaded.predict(examples, max_new_tokens=8,
                                                                                    num_beams=2)
    saved = {name for name in loaded.trained_state()}
    assert not any(name.startswith("backbone.") and ".mta." not in name and "lora" not in name
                   and "stacked" not in name for name in saved), "the frozen backbone is not saved"


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-t5"])
def test_task_ids_follow_their_examples_under_beam_search(registry, samples, backbone):
    """Each example generates the same tokens alone as in a mixed batch with beams."""
    tasks = [registry.get("sst2"), registry.get("dialogsum")]
    model = MTAModel(model_config(backbone, gate="task+input"), tasks).eval()
    randomise_experts(model, seed=3)
    for param in model.param_groups()["experts"].values():
        param.data *= 10  # large enough to change greedy choices of a random model
    model.start_collaboration("softmax", 0.9)
    text = samples["dialogsum"][0].inputs["dialogue"]
    # The same dialogue under two different task ids: only routing tells them apart.
    rows = model.encode([Example("dialogsum", {"dialogue": text}, None)])
    rows_other = [Encoded(0, rows[0].input_ids)]  # routed as sst2

    def run(batch):  # token ids of each row, without padding
        ids = model.head.generate_ids(model.backbone, batch, model.tokenizer,
                                        GenerationSettings(max_new_tokens=10, num_beams=3))
        return [[t for t in row if t != model.tokenizer.pad_token_id] for row in ids.tolist()]

    mixed = run(rows + rows_other + rows)
    alone = run(rows) + run(rows_other) + run(rows)
    assert mixed == alone
    assert mixed[0] != mixed[1], "different tasks should route to different experts"


@pytest.mark.parametrize("backbone,head,stage", [
    # A random 32-wide LM head cannot express a peaked distribution: let the backbone train too.
    ("tiny-llama", "lm", StageConfig(kind="stage1", train_backbone=True)),
    ("tiny-bert", "classifier", StageConfig(kind="stage1")),
])
def test_loss_falls_when_overfitting_a_few_examples(registry, samples, backbone, head, stage):
    names = ["sst2", "dialogsum"] if head == "lm" else ["sst2", "stsb"]
    model = MTAModel(model_config(backbone, head, rank=8), [registry.get(name) for name in names])
    trainable = prepare_stage(model, stage)
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    rows = model.encode([e for name in names for e in samples[name][:2]])
    first = model(rows).mean().item()
    for _ in range(30):
        loss = model(rows).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5 * first


def test_unknown_task_in_predict_is_a_clear_error(registry, samples):
    model = MTAModel(model_config("tiny-llama"), [registry.get("sst2")])
    with pytest.raises(KeyError, match="not trained on task 'rte'"):
        model.predict([Example("rte", {"premise": "a", "hypothesis": "b"}, None)])


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-t5"])
def test_scoring_after_a_shared_prefix_equals_scoring_every_candidate(registry, samples, backbone, monkeypatch):
    """stsb's " 0" .. " 5" share a leading space in a byte tokenizer: one pass must give what
    the pass over every candidate gives."""
    model = MTAModel(model_config(backbone), [registry.get("stsb"), registry.get("sst2")]).eval()
    randomise_experts(model)
    examples = samples["stsb"][:3] + samples["sst2"][:2]
    if backbone == "tiny-llama":
        prefix, tokens = model.head.candidate_split(model.tasks[0], model.tokenizer)
        assert prefix and len(tokens) == 6
    fast = model.predict(examples)
    monkeypatch.setattr(type(model.head), "cached_split", lambda self, task, tokenizer: None)
    slow = model.predict(examples)
    for (value, scores), (expected, expected_scores) in zip(fast, slow):
        if isinstance(value, float):
            assert value == pytest.approx(expected, abs=1e-4)
        else:
            assert value == expected
        assert list(scores.values()) == pytest.approx(list(expected_scores.values()), abs=1e-4)


def test_training_ranks_candidates_at_the_token_after_their_shared_prefix(registry, samples):
    """stsb's bins " 0" .. " 5" differ only after a shared space token: the rank-classification
    loss reads that token, and a score is split between its two nearest bins."""
    model = MTAModel(model_config("tiny-llama"), [registry.get("stsb")])
    prefix, tokens = model.head.cached_split(model.tasks[0], model.tokenizer)
    for example in samples["stsb"]:
        row = model.encode([example])[0]
        assert row.choices == tokens and row.choice_offset == len(prefix) > 0
        target = [token for token in row.labels if token != IGNORE]
        assert target[: len(prefix)] == prefix and target[len(prefix)] in tokens
        assert sum(row.answer) == pytest.approx(1.0)
        assert sum(p * score for score, p in enumerate(row.answer)) == pytest.approx(example.target)
    losses = model(model.encode(samples["stsb"]))  # (B,)
    assert losses.shape == (len(samples["stsb"]),) and torch.isfinite(losses).all()


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-t5"])
def test_candidates_of_several_tokens_train_by_the_rule_that_predicts(registry, samples, backbone):
    """Label words of one and of several tokens: the ranking part of a row's training loss is
    minus the log of the probability that prediction gives its label."""
    spec = TaskSpec(name="stance", kind="classification", inputs={"text": "text"}, target="label",
                    template="Text: {text}\nStance:", labels=["pro", "con", "neutral"],
                    verbalizer={"pro": "in favour", "con": "against", "neutral": "neither one nor the other"})
    task = Task(spec)
    model = MTAModel(model_config(backbone), [task]).eval()
    randomise_experts(model)
    examples = [Example("stance", {"text": text}, label) for text, label in
                [("we should build it", "pro"), ("never again", "con"), ("hard to say", "neutral")]]
    rows = model.encode(examples)
    assert all(row.candidates and row.choices is None for row in rows)
    assert len({len(ids) for ids in rows[0].candidates}) > 1, "the words should differ in length"
    with torch.no_grad():
        losses = model(rows)  # (B,)
        without_ranking = model([replace(row, candidates=None) for row in rows])
    predicted = model.predict(examples)
    for loss, token_loss, example, (_, scores) in zip(losses, without_ranking, examples, predicted):
        assert (loss - token_loss).item() == pytest.approx(-math.log(scores[example.target]), rel=1e-4, abs=1e-5)


def test_length_batches_fill_batches_of_similar_rows_and_split_far_apart_lengths():
    similar = [20 + i % 3 for i in range(40)]
    batches = length_batches(range(40), similar, batch_size=16)
    assert [len(batch) for batch in batches] == [16, 16, 8]
    assert [similar[i] for batch in batches for i in batch] == sorted(similar)
    # A server's batch of 16: 4 requests each of four tasks, interleaved as they arrive.
    mixed = [30, 60, 90, 128] * 4
    batches = length_batches(range(16), mixed, batch_size=16)
    assert [sorted({mixed[i] for i in batch}) for batch in batches] == [[30], [60, 90], [128]]
    assert sorted(i for batch in batches for i in batch) == list(range(16))
    assert length_batches([], [], batch_size=4) == []
