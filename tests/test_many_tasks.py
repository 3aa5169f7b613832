"""Many tasks in one model, end to end on a tiny backbone: 64 tasks (and a summary task)
built, trained a few steps in both stages, saved, loaded and served in mixed batches; with
one expert per task and with fewer experts than tasks."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import alter
from alter.config import Config
from alter.serve.config import ServeConfig
from alter.serve.predictor import Predictor
from alter.serve.scheduler import ContinuousScheduler
from alter.serve.server import create_app
from alter.training.run import run_training

TASKS = 64


def many_tasks(tmp_path, experts: int | None) -> Config:
    """64 ticket-routing tasks from one small file, and dialogsum; `experts`: fewer experts
    than tasks, task i on expert i mod `experts` (None: one expert per task)."""
    rows = "body,team\n" + "".join(f"card charged twice {i},billing\napp crashes {i},tech\n" for i in range(6))
    (tmp_path / "tickets.csv").write_text(rows)
    split = {"path": str(tmp_path / "tickets.csv")}
    names = [f"tickets{i}" for i in range(TASKS)]
    custom = [{"name": name, "kind": "classification", "inputs": {"text": "body"}, "target": "team",
               "labels": ["billing", "tech"], "template": f"Queue {i}: {{text}}\nTeam:",
               "splits": {"train": split, "dev": split}} for i, name in enumerate(names)]
    mta = {"rank": 4}
    if experts:
        mta.update(num_experts=experts,
                   assignment={name: i % experts for i, name in enumerate([*names, "dialogsum"])})
    return Config.model_validate({
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": "tiny-llama", "max_source_length": 64, "max_target_length": 8, "mta": mta},
        "data": {"tasks": [*names, "dialogsum"], "custom_tasks": custom, "max_train": 4, "max_eval": 2},
        "stages": [{"kind": "stage1", "steps": 3, "batch_size": 16},
                   {"kind": "stage2", "steps": 2, "batch_size": 16, "prune_to": 2}],
        "eval": {"batch_size": 32, "max_new_tokens": 4, "before_training": False},
    })


@pytest.mark.parametrize("experts", [None, 16])
def test_a_model_of_64_tasks_trains_saves_loads_and_serves_mixed_batches(tmp_path, experts):
    report = run_training(many_tasks(tmp_path, experts))
    assert len(report["metrics"]) == TASKS + 1
    model = alter.load(tmp_path / "run" / "model")
    gate = model.mta_layers[0].gate
    # pruned: two routed experts a row, and the shared one
    assert gate.num_experts == (experts or TASKS + 1) and gate.most_selected == 2 + 1
    if experts:
        assert gate.assignment.tolist() == [i % experts for i in range(TASKS + 1)]

    requests = [{"task": f"tickets{i}", "inputs": {"text": f"my card was charged twice ({i})"}} for i in range(TASKS)]
    requests.insert(7, {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi.\n#Person2#: Hello."}})
    predictor = Predictor(model, batch_size=32, max_new_tokens=4)
    mixed = predictor.predict(requests)
    one_by_one = [predictor.predict([request])[0] for request in requests]
    assert [r["prediction"] for r in mixed] == [r["prediction"] for r in one_by_one]
    for together, alone in zip(mixed, one_by_one):
        assert together["scores"] == pytest.approx(alone["scores"], abs=1e-5)

    scheduler = ContinuousScheduler(predictor)
    scheduler.start()
    try:
        answered = [future.result(timeout=120) for future in scheduler.submit(requests)]
    finally:
        scheduler.stop()
    assert [r["prediction"] for r in answered] == [r["prediction"] for r in mixed]

    with TestClient(create_app(predictor, ServeConfig(max_items=TASKS + 1))) as client:
        response = client.post("/v1/predict", json={"requests": requests})
    assert response.status_code == 200, response.text
    assert [r["prediction"] for r in response.json()["results"]] == [r["prediction"] for r in mixed]

