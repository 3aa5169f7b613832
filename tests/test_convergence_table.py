"""bench/convergence_table.py on a hand-made results file: the cells are the main metrics
(stsb in Spearman, not Pearson), † marks exactly the cells whose interval reaches the trivial
score, seeds and spread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
MAIN = {"rte": "accuracy", "stsb": "spearman", "cola": "mcc"}


def system(seeds, rte, stsb_pearson, stsb_spearman, cola, macro, std, cola_interval):
    return {"seeds": seeds, "macro": macro, "macro_std": std, "train_seconds": 1234.4,
            "tasks": {"rte": {"accuracy": rte}, "stsb": {"pearson": stsb_pearson, "spearman": stsb_spearman},
                      "cola": {"mcc": cola, "accuracy": 69.1}},
            "tasks_ci95": {"rte": [rte - 2, rte + 2], "stsb": [stsb_spearman - 1, stsb_spearman + 1],
                           "cola": cola_interval}}


def table(tmp_path, *args):
    results = {
        "main_metrics": MAIN,
        "trivial": {"rte": {"metrics": {"accuracy": 52.7}}, "stsb": {"metrics": {"pearson": 0.0, "spearman": 0.0}},
                    "cola": {"metrics": {"mcc": 0.0, "accuracy": 69.1}}},
        "systems": {"a": system([0, 1, 2, 3, 4], 60.0, 86.5, 86.2, 0.0, 48.73, 1.26, [0.0, 0.0]),
                    "b": system([0, 2], 55.0, 80.0, 79.0, 20.0, 51.3, 0.5, [12.0, 28.0])},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return subprocess.run([sys.executable, str(BENCH / "convergence_table.py"), str(path), *args],
                          capture_output=True, text=True, timeout=60)


def test_rows_hold_main_metrics_and_mark_only_what_is_not_clearly_learned(tmp_path):
    done = table(tmp_path, "a=System A", "b", "--not-cost", "b")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("| system | seeds | rte (accuracy) | stsb (spearman) | cola (mcc) | macro | small targets"
                        " | train (s) |")
    assert lines[2] == "| System A | 0-4 | 60.0 | 86.2 | 0.0 † | 48.7 ± 1.26 | 48.7 | 1,234 |"
    assert lines[3] == "| `b` | 0, 2 | 55.0 | 79.0 | 20.0 | 51.3 ± 0.50 | 51.3 | not a cost figure ‡ |"
    assert lines[4] == "| trivial |  | 52.7 | 0.0 | 0.0 |  |  |  |"


def test_an_unknown_system_is_one_line_naming_it(tmp_path):
    done = table(tmp_path, "nosuch")
    assert done.returncode == 2 and "has no system 'nosuch'" in done.stderr.splitlines()[-1]
