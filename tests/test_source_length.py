"""`model.max_source_length: auto`: the prompt length fitted to the training data."""

from __future__ import annotations

import json

from alter.backbones import load_tokenizer
from alter.data.task import Example
from alter.training.datasets import load_tasks, load_training
from alter.training.run import run_training
from alter.training.source_length import fitted_source_length
from tests.conftest import tiny


class WordTokenizer:
    """One token per word: lengths that a test can count by hand."""

    def __call__(self, text: str) -> dict[str, list[str]]:
        return {"input_ids": text.split()}


def _sentences(task: str, lengths: list[int]) -> list[Example]:
    return [Example(task, {"sentence": " ".join(["word"] * n)}, "positive") for n in lengths]


def test_auto_holds_95_percent_of_every_task_s_prompts_rounded_up_to_16(registry):
    sst2 = registry.get("sst2")
    template_words = len(sst2.prompt({"sentence": ""}).split())
    lengths = list(range(1, 101))  # the 95th of 100 prompts holds 95 words of input
    length = fitted_source_length(WordTokenizer(), [sst2], {"sst2": _sentences("sst2", lengths)}, None)
    assert length == -(-(95 + template_words) // 16) * 16
    # the longest need of any task sets it, at most the backbone's positions and 1,024
    assert fitted_source_length(WordTokenizer(), [sst2], {"sst2": _sentences("sst2", [3000] * 5)}, None) == 1024
    assert fitted_source_length(WordTokenizer(), [sst2], {"sst2": _sentences("sst2", [3000] * 5)}, 512) == 512


def test_a_run_fits_the_length_before_encoding_and_saves_the_number(tmp_path):
    config = tiny(tmp_path, "auto", "model.max_source_length=auto", "stages.0.steps=1", "stages.1.steps=1")
    report = run_training(config)
    saved = json.loads((tmp_path / "auto" / "model" / "alter.json").read_text())["model"]["max_source_length"]
    tasks = load_tasks(config)
    expected = fitted_source_length(load_tokenizer(config.model.backbone), tasks,
                                    load_training(config, tasks).train, None)
    assert saved == expected
    assert report["metrics"]  # trained and scored with it
