"""The built-in tasks: GLUE and summarization, read from the data root (../shared/data)."""

from __future__ import annotations

from alter.data.spec import HubSource, SplitSource, TaskSpec

_BINARY = {"0": "negative", "1": "positive"}
# RTE and WNLI: the same entailment question, answered True / False. SmolLM2-135M-Instruct
# zero-shot on the 277 RTE dev pairs: 56.0% with this prompt (GPT-3's); 47.3% with "Premise:
# .. Hypothesis: .. Does the premise entail the hypothesis, yes or no?", which it always
# answers "no".
_ENTAILMENT = dict(
    inputs={"premise": "premise", "hypothesis": "hypothesis"},
    template="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",
    labels=["entailment", "not_entailment"], verbalizer={"entailment": "True", "not_entailment": "False"},
)


def _glue(name: str, split: str, **columns: str) -> HubSource:
    return HubSource(path="nyu-mll/glue", name=name, split=split, columns=columns)


BUILTIN_TASKS: list[TaskSpec] = [
    TaskSpec(
        name="sst2", kind="classification",
        inputs={"sentence": "sentence"}, target="label",
        template="Movie review: {sentence}\nSentiment (positive or negative):",
        labels=["negative", "positive"], label_map=_BINARY,
        splits={
            "train": SplitSource(path="glue/SST-2/train.tsv", hub=_glue("sst2", "train")),
            "dev": SplitSource(path="glue/SST-2/dev.tsv", hub=_glue("sst2", "validation")),
        },
    ),
    TaskSpec(
        name="cola", kind="classification",
        inputs={"sentence": "sentence"}, target="label",
        template="Sentence: {sentence}\nIs this sentence grammatically acceptable, yes or no?\nAnswer:",
        labels=["unacceptable", "acceptable"], label_map={"0": "unacceptable", "1": "acceptable"},
        verbalizer={"unacceptable": "no", "acceptable": "yes"},
        metrics=["mcc", "accuracy"], main_metric="mcc",
        splits={
            split: SplitSource(path=f"glue/CoLA/{split}.tsv", header=False,
                               columns=["source", "label", "mark", "sentence"],
                               hub=_glue("cola", hub_split))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    TaskSpec(
        name="mrpc", kind="classification",
        inputs={"sentence1": "#1 String", "sentence2": "#2 String"}, target="Quality",
        template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
                 "Do the two sentences mean the same thing, yes or no?\nAnswer:",
        labels=["not_equivalent", "equivalent"], label_map={"0": "not_equivalent", "1": "equivalent"},
        verbalizer={"not_equivalent": "no", "equivalent": "yes"},
        metrics=["f1", "accuracy"], main_metric="f1",
        splits={
            split: SplitSource(path=f"glue/MRPC/{split}.tsv", hub=_glue(
                "mrpc", hub_split, **{"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    TaskSpec(
        name="stsb", kind="regression",
        inputs={"sentence1": "sentence1", "sentence2": "sentence2"}, target="score",
        template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
                 "How similar are the two sentences, from 0 (unrelated) to 5 (the same meaning)?\nAnswer:",
        score_range=(0.0, 5.0), metrics=["pearson", "spearman"], main_metric="spearman",
        splits={
            split: SplitSource(path=f"glue/STS-B/{split}.tsv", hub=_glue("stsb", hub_split, score="label"))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    TaskSpec(
        name="rte", kind="classification", target="label",
        **{**_ENTAILMENT, "inputs": {"premise": "sentence_1", "hypothesis": "sentence_2"}},
        splits={
            split: SplitSource(path=f"glue/RTE/{split}.jsonl", hub=HubSource(
                path="nyu-mll/glue", name="rte", split=hub_split,
                columns={"sentence_1": "sentence1", "sentence_2": "sentence2"},
                label_map={"0": "entailment", "1": "not_entailment"}))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    # Only QNLI's dev file is here (no train split): an auxiliary entailment set beside rte
    # (`train_split: dev, scored: false` in configs/transfer.yaml), with rte's labels and words.
    TaskSpec(
        name="qnli", kind="classification", target="label",
        inputs={"question": "question", "sentence": "sentence"},
        template="Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question? "
                 "True or False?\nAnswer:",
        labels=_ENTAILMENT["labels"], verbalizer=_ENTAILMENT["verbalizer"],
        splits={
            split: SplitSource(path=f"glue/QNLI/{split}.tsv", hub=HubSource(
                path="nyu-mll/glue", name="qnli", split=hub_split,
                label_map={"0": "entailment", "1": "not_entailment"}))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    # Only MNLI's matched dev file is here: an auxiliary three-way entailment set (configs/
    # convergence.yaml trains on it, `train_split: dev_matched, scored: false`).
    TaskSpec(
        name="mnli", kind="classification", target="label",
        inputs={"premise": "premise", "hypothesis": "hypothesis"},
        template="{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
        labels=["entailment", "neutral", "contradiction"],
        verbalizer={"entailment": "True", "neutral": "Neither", "contradiction": "False"},
        splits={
            split: SplitSource(path=f"glue/MNLI/{split}.jsonl", hub=HubSource(
                path="nyu-mll/glue", name="mnli", split=split,
                label_map={"0": "entailment", "1": "neutral", "2": "contradiction"}))
            for split in ("dev_matched",)
        },
    ),
    TaskSpec(
        name="wnli", kind="classification", target="label", **_ENTAILMENT,
        label_map={"1": "entailment", "0": "not_entailment"},
        splits={
            split: SplitSource(path=f"glue/WNLI/{split}.jsonl", hub=HubSource(
                path="nyu-mll/glue", name="wnli", split=hub_split,
                columns={"premise": "sentence1", "hypothesis": "sentence2"}))
            for split, hub_split in (("train", "train"), ("dev", "validation"))
        },
    ),
    TaskSpec(
        name="qqp", kind="classification",
        inputs={"question1": "question1", "question2": "question2"}, target="label",
        template="Question 1: {question1}\nQuestion 2: {question2}\n"
                 "Do the two questions ask the same thing, yes or no?\nAnswer:",
        labels=["not_duplicate", "duplicate"], label_map={"0": "not_duplicate", "1": "duplicate"},
        verbalizer={"not_duplicate": "no", "duplicate": "yes"},
        metrics=["f1", "accuracy"], main_metric="f1",
        # Only a subset of train is here: its first 2,000 rows are held out as the dev split.
        splits={
            split: SplitSource(path="glue/QQP/train_subset_23k.tsv", header=False,
                               columns=["id", "qid1", "qid2", "question1", "question2", "label"], **rows)
            for split, rows in (("dev", {"limit": 2000}), ("train", {"skip": 2000}))
        },
    ),
    TaskSpec(
        name="dialogsum", kind="generation",
        inputs={"dialogue": "dialogue"}, target="summary",
        template="Dialogue:\n{dialogue}\nSummarize the dialogue in one or two sentences.\nSummary:",
        references=["summary1", "summary2", "summary3"],
        splits={
            split: SplitSource(path=f"summarization/dialogsum/{split}.jsonl", hub=HubSource(
                path="knkarthick/dialogsum", split=hub_split))
            for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test"))
        },
    ),
    TaskSpec(
        name="aeslc", kind="generation",
        inputs={"email": "email"}, target="subject",
        template="E-mail:\n{email}\nWrite a subject line for this e-mail.\nSubject:",
        splits={split: SplitSource(path=f"summarization/aeslc/{split}.jsonl") for split in ("train", "dev", "test")},
    ),
]
