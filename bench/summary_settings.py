"""How a trained model's summaries change with generation settings: how many loop on a
repeated phrase, ROUGE-L, length and time, for each candidate on the same dialogues.

    .venv/bin/python bench/summary_settings.py runs/quickstart/model --split test --n 100 \
        --candidate '{}' --candidate '{"no_repeat_ngram_size": 3}' [--json out.json]

Choose settings on a split the model is not scored on (dialogsum's test split beside a
dev-scored model), then report the choice on the scored split: settings are never tuned on
the evaluation examples. A summary loops when some phrase of three words comes back three
times, or the last words repeat the ones before them (a loop cut off by the length limit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter

import alter
from alter.data.generation import GenerationSettings
from alter.data.task import data_root
from alter.evaluate.metrics import rouge
from alter.models.mta_model import MTAModel
from alter.training.datasets import sample

PHRASE, TIMES = 3, 3  # a phrase of PHRASE words coming back TIMES times is a loop


def loops(text: str) -> bool:
    words = text.split()
    phrases = Counter(tuple(words[i: i + PHRASE]) for i in range(len(words) - PHRASE + 1))
    if phrases and max(phrases.values()) >= TIMES:
        return True
    tail = words[-2 * PHRASE:]  # the text ends in a phrase said twice in a row
    return len(tail) == 2 * PHRASE and tail[:PHRASE] == tail[PHRASE:]


def measure(model: MTAModel, examples, settings: GenerationSettings, batch_size: int) -> dict:
    rows = model.encode(examples, with_target=False)
    complete = [model.generation_settings(row.task_id, GenerationSettings(max_new_tokens=48, num_beams=1), settings)
                for row in rows]
    started = time.perf_counter()
    texts = [text for text, _ in model.predict_encoded(rows, batch_size, settings=complete)]
    seconds = time.perf_counter() - started
    scores = rouge(texts, [example.references for example in examples])
    looping = [i for i, text in enumerate(texts) if loops(text)]
    return {"settings": settings.model_dump(exclude_none=True), "looping": len(looping), "of": len(texts),
            "rougeL": round(100 * scores["rougeL"], 2), "rouge1": round(100 * scores["rouge1"], 2),
            "mean_words": round(statistics.mean(len(text.split()) for text in texts), 1),
            "seconds": round(seconds, 1), "examples_looping": [texts[i] for i in looping[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="dialogsum")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="which examples of the split")
    parser.add_argument("--candidate", action="append", default=[], help="settings as JSON; repeatable")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    model = alter.load(args.checkpoint).eval()
    task = model.tasks[model.task_id(args.task)]
    examples = sample(task.read(args.split, data_root()), args.n, args.seed, task.name)
    results = []
    for candidate in args.candidate or ["{}"]:
        result = measure(model, examples, GenerationSettings(**json.loads(candidate)), args.batch_size)
        results.append(result)
        print(f"{json.dumps(result['settings']):60s} loops {result['looping']:3d}/{result['of']}  "
              f"ROUGE-L {result['rougeL']:5.2f}  ROUGE-1 {result['rouge1']:5.2f}  "
              f"words {result['mean_words']:5.1f}  {result['seconds']:6.1f} s", flush=True)
        if args.json:  # after every candidate: an interrupted run keeps what it measured
            with open(args.json, "w") as out:
                json.dump({"checkpoint": args.checkpoint, "task": args.task, "split": args.split, "n": args.n,
                           "seed": args.seed, "results": results}, out, indent=1)


if __name__ == "__main__":
    main()
