"""bench/scoring_profile.py, the measurement behind scoring's float32 cost, runs end to end."""

from __future__ import annotations

from tests.conftest import scoring_probe_report


def test_the_scoring_profile_reports_its_rates_against_the_peak(registry, tmp_path):
    report = scoring_probe_report(registry, tmp_path, "scoring_profile.py")
    assert report["examples"] == 6
    assert 0 < report["matrix_product_share"] <= 1
    assert report["flops"] > 0 and report["matrix_product_gflops"] > 0 and report["peak_gflops"] > 0
