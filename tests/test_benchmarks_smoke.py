"""The accuracy report runs end to end on a few sentences and writes its table and JSON (no timing)."""

from __future__ import annotations

import json

from benchmarks import accuracy


def test_accuracy_report_on_eight_sentences_writes_its_table(tmp_path):
    assert accuracy.main(["--device", "cpu", "--sentences", "8", "--out-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "accuracy-cpu.json").read_text())
    assert report["header"]["sentences"] == 8 and report["header"]["qa_pairs"] == 8
    rows = {(row["dtype"], row["system"]): row for row in report["rows"]}
    assert set(rows) == {("fp32", "hf"), ("fp32", "fused"), ("bf16", "hf"), ("bf16", "fused")}
    assert rows[("fp32", "fused")]["hidden_max_abs_diff"] < 1e-4
    assert rows[("fp32", "fused")]["class_argmax_agreement"] == 1.0
    table = (tmp_path / "accuracy-cpu.md").read_text()
    assert table.count("\n| fp32 |") == 2 and table.count("\n| bf16 |") == 2
