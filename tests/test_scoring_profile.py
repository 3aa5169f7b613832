"""bench/scoring_profile.py, the measurement behind scoring's float32 cost, runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alter.models.mta_model import MTAModel
from tests.conftest import model_config


def test_the_scoring_profile_reports_its_rates_against_the_peak(registry, tmp_path):
    MTAModel(model_config("tiny-llama"), [registry.get(name) for name in ("sst2", "rte")]).save(tmp_path / "m")
    bench = Path(__file__).resolve().parents[1] / "bench" / "scoring_profile.py"
    out = subprocess.run([sys.executable, str(bench), str(tmp_path / "m"), "--per-task", "3", "--json"],
                         capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report["examples"] == 6
    assert 0 < report["matrix_product_share"] <= 1
    assert report["flops"] > 0 and report["matrix_product_gflops"] > 0 and report["peak_gflops"] > 0
