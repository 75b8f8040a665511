"""The demo end to end on a tiny configuration (the real one takes about two minutes)."""

from __future__ import annotations

import json

from fairfx.apps import demo


def test_demo_runs_and_reports_latency_of_both_models(tmp_path) -> None:
    args = ["--width", "4", "--size", "16", "--epochs", "1", "--finetune-epochs", "1"]
    result = demo.main([*args, "--no-compile", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert result["oracle"]["passed"] and saved["oracle"]["passed"]
    assert saved["macs"][1] < saved["macs"][0] and saved["params"][1] < saved["params"][0]
    assert set(saved["latency_ms"]) == {"eager_b1", "eager_b8"}
    for row in saved["latency_ms"].values():
        assert row["original"] > 0 and row["pruned"] > 0
    assert saved["export"]["equal"]
    side = saved["latency_plan"]  # the latency plan next to the MAC-budget plan
    assert 0 < side["target"] <= 1 and side["note"] and 0 <= side["accuracy"] <= 1
    assert (tmp_path / "latency_table.json").exists()
    assert (tmp_path / "kept_channels.png").exists() and (tmp_path / "pruned.pt2").exists()
