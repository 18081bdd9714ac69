"""The serving benchmark end to end at toy size: archives built, one real TorchServe, every cell answered
(the 4-client cells by two client processes), the noop floor beside the fused model, the JSON and the
plot written (nothing here is timed)."""

from __future__ import annotations

import json


def test_serving_benchmark_measures_the_fused_model_beside_its_noop_floor(tmp_path):
    from benchmarks import serving

    status = serving.main(["--systems", "fused", "noop", "--concurrency", "1", "4", "--requests", "12",
                           "--client-processes", "2", "--warmup-requests", "2", "--warmup-seconds", "0.5",
                           "--threads", "1", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])

    assert status == 0
    [path] = (tmp_path / "out").glob("serving-cpu-*.json")
    assert path.with_suffix(".png").is_file()
    result = json.loads(path.read_text())
    records = {(r["system"], r["concurrency"]): r for r in result["records"]}
    assert set(records) == {(system, c) for system in ("fused", "noop") for c in (1, 4)}
    for record in records.values():
        assert (record["completed"], record["errors"]) == (12, 0)
    for c in (1, 4):
        fused, noop = records[("fused", c)], records[("noop", c)]
        assert fused["handler"]["model_ms_p50"] > 0 and fused["p50_above_model_ms"] is not None
        assert noop["handler"]["model_ms_p50"] is None and noop["p50_above_model_ms"] is None
    assert set(result["fused_share_of_noop_requests_per_s"]) == {"1", "4"}
    assert result["fused_over_stock_requests_per_s"] == {}
    ratio_target, latency_target = result["targets"]
    assert (ratio_target["measured"], ratio_target["met"]) == (None, None)  # no stock, no 64 clients
    assert latency_target["measured"] == records[("fused", 1)]["p50_above_model_ms"]
    assert latency_target["met"] == (latency_target["measured"] <= 1.5)
