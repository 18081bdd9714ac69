"""The accuracy report runs end to end on a few sentences and writes its table and JSON; the new-shape
benchmark runs end to end on a few shapes; the serving benchmark's pieces that need no server (no timing);
the worker-stages benchmark serves a few batches through TorchServe's loader and Service; the plots drawn for
named results or a whole directory; the hardware-counter summary of an Nsight Compute page; the interleaved
timer's blocks of calls."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import accuracy


def test_accuracy_report_on_eight_sentences_writes_its_table(tmp_path):
    assert accuracy.main(["--device", "cpu", "--sentences", "8", "--out-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "accuracy-cpu.json").read_text())
    assert report["header"]["sentences"] == 8 and report["header"]["qa_pairs"] == 8
    rows = {(row["dtype"], row["system"]): row for row in report["rows"]}
    assert set(rows) == {("fp32", "hf"), ("fp32", "fused"), ("bf16", "hf"), ("bf16", "fused"), ("bf16", "fused_fp8")}
    assert rows[("fp32", "fused")]["hidden_max_abs_diff"] < 1e-4
    assert rows[("fp32", "fused")]["class_argmax_agreement"] == 1.0
    table = (tmp_path / "accuracy-cpu.md").read_text()
    assert table.count("\n| fp32 |") == 2 and table.count("\n| bf16 |") == 3


def test_serving_benchmark_reads_handler_metrics_once_per_batch_of_its_model(tmp_path):
    from benchmarks import serving

    def line(name, unit, value, model, request_ids):
        # As TorchServe 0.12 logs a worker's metric line in ts_log.log (every line twice, two appenders).
        entry = (f"2026-11-23T18:46:11,137 [INFO ] W-9000-{model}_1.0-stdout org.pytorch.serve.wlm.WorkerLifeCycle - "
                 f"result=[METRICS]{name}.{unit}:{value}|#ModelName:{model},Level:Model|#type:GAUGE|#hostname:vm,"
                 f"1795459571,{request_ids}, pattern=[METRICS]\n")
        return entry * 2

    log = tmp_path / "ts_log.log"
    before = line("ModelTime", "Milliseconds", 99.0, "fused", "00000000-aaaa")
    log.write_text(before
                   + line("ModelTime", "Milliseconds", 12.5, "fused", "11111111-aaaa,22222222-bbbb")
                   + line("PredictionTime", "Milliseconds", 14.0, "fused", "11111111-aaaa,22222222-bbbb")
                   + line("BatchSize", "Count", 2, "fused", "11111111-aaaa,22222222-bbbb")
                   + line("ModelTime", "Milliseconds", 30.0, "stock", "33333333-cccc")
                   + line("ModelTime", "Milliseconds", 7.25, "fused", "44444444-dddd"))

    batches = serving.handler_metrics(log, len(before), "fused")

    assert batches == [{"ModelTime": 12.5, "PredictionTime": 14.0, "BatchSize": 2.0}, {"ModelTime": 7.25}]


def test_serving_record_pools_its_rounds_and_keeps_each_rounds_figures():
    from benchmarks import serving
    from benchmarks.load import Reply

    def one_round(latencies_ms, model_ms, wall_s, served):
        return serving.Round([Reply(ms / 1e3, 200, 10) for ms in latencies_ms], wall_s,
                             [{"ModelTime": model_ms, "PredictionTime": model_ms + 0.5}] * len(latencies_ms),
                             {"ts_inference_requests_total": served, "ts_queue_latency_microseconds": 100.0 * served})

    fast, slow = one_round([1.0, 2.0, 3.0, 4.0], 0.5, 1.0, 4), one_round([5.0, 6.0, 7.0], 1.5, 2.0, 3)
    slow.replies.append(Reply(0.001, 0, 0))  # a lost request: sent, not timed
    record = serving.summarize("fused", 1, 4, [fast, slow])
    assert (record["requests_planned"], record["requests_sent"], record["completed"]) == (8, 8, 7)
    assert record["errors_by_status"] == {"0": 1} and not record["stopped_by_duration_cap"]
    assert record["requests_per_s"] == pytest.approx(7 / 3.0)
    assert record["latency_ms"]["p50"] == 4.0 and record["frontend_queue_ms_mean"] == pytest.approx(0.1)
    assert record["p50_above_model_ms"] == pytest.approx(4.0 - 0.5)  # the model's p50 over both rounds' batches
    assert record["rounds"] == [
        {"requests_per_s": 4.0, "latency_p50_ms": 2.5, "p50_above_model_ms": 2.0},
        {"requests_per_s": 1.5, "latency_p50_ms": 6.0, "p50_above_model_ms": 4.5}]
    assert serving.summarize("fused", 1, 5, [fast])["stopped_by_duration_cap"]


class RecordedLoad:
    """A LoadGenerator stand-in: records each run's request count and duration cap; every run lasts `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.runs = []

    def run(self, url, token, texts, tokens, concurrency, requests, duration_cap):
        self.runs.append((requests, duration_cap))
        return [], self.seconds


def test_serving_warm_up_goes_on_past_its_requests_until_its_minimum_duration():
    import sys

    from benchmarks import serving

    fast, slow = RecordedLoad(0.25), RecordedLoad(3.0)
    for load in (fast, slow):
        serving.warm_up(load, "url", "token", ["text"], [1], concurrency=4, requests=100, seconds=2.0,
                        duration_cap=45.0)
    assert fast.runs == [(100, 45.0), (sys.maxsize, 1.75)]  # then load for the 1.75 s left, however many requests
    assert slow.runs == [(100, 45.0)]


def test_serving_reads_mps_servers_and_their_clients_from_the_control_daemon(tmp_path, monkeypatch):
    from benchmarks import serving

    monkeypatch.setenv("PATH", str(tmp_path))
    assert serving.mps_servers() is None  # no nvidia-cuda-mps-control on PATH

    control = tmp_path / "nvidia-cuda-mps-control"
    # As the control program answers on stdin: server pids one per line; a server's client pids.
    control.write_text("#!/bin/sh\nread command pid\ncase \"$command\" in\n"
                       "  get_server_list) printf '4100\\n4200\\n' ;;\n"
                       "  get_client_list) [ \"$pid\" = 4100 ] && printf '11\\n12\\n13\\n' ;;\n"
                       "esac\nexit 0\n")
    control.chmod(0o755)
    assert serving.mps_servers() == {"4100": 3, "4200": 0}

    control.write_text("#!/bin/sh\necho 'Cannot find MPS control daemon process' >&2\nexit 1\n")
    assert serving.mps_servers() is None


@pytest.mark.parametrize("gpus, workers_per_gpu", [(1, 1), (1, 3), (2, 2)])
def test_serving_model_config_places_workers_per_gpu(gpus, workers_per_gpu):
    from benchmarks import serving

    args = argparse.Namespace(device="cuda", gpus=gpus, workers_per_gpu=workers_per_gpu, batch_size=8,
                              max_batch_delay=1)
    config = serving.model_config(args)
    assert config["deviceIds"] == list(range(gpus))
    assert config["minWorkers"] == config["maxWorkers"] == gpus * workers_per_gpu
    assert (config["batchSize"], config["maxBatchDelay"]) == (8, 1)


@pytest.mark.cuda
def test_ffn_gemm_benchmark_times_every_kernel_of_each_gemm(tmp_path):
    import torch

    from benchmarks import ffn_gemm

    out = tmp_path / "ffn-gemm.json"
    assert ffn_gemm.main(["--models", "minilm", "--workloads", "bs1x16", "bs1x128", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    records = {(r["workload"], r["gemm"]): r for r in report["records"]}
    gemms = {"ffn1", "ffn1_without_gelu", "ffn2"} | ({"ffn1_fp8", "ffn2_fp8"} if ffn_gemm.fp8_available() else set())
    assert set(records) == {(workload, gemm) for workload in ("bs1x16", "bs1x128") for gemm in gemms}
    # Every kernel that takes the shape is timed: the small-batch ones ("skinny") take up to 64 rows.
    for (workload, gemm), record in records.items():
        expected = {"ffn1": torch.ops.fusedbert.linear_bias_gelu_kernels(), "ffn2": ["cublas (F.linear)"],
                    "ffn1_without_gelu": ["cublas (F.linear)", "cublas (F.linear + bias)"]}.get(
            gemm, report["fp8_kernels"])
        if record["real_tokens"] > 64:
            expected = [kernel for kernel in expected if kernel != "skinny"]
        assert sorted(record["us_per_call"]) == sorted(expected), (workload, gemm)
        assert all(us > 0 for us in record["us_per_call"].values())


@pytest.mark.cuda
def test_graph_launch_benchmark_times_each_graph_and_nodes_cost_gpu_time(tmp_path):
    from benchmarks import graph_launch

    out = tmp_path / "graph-launch.json"
    assert graph_launch.main(["--out", str(out)]) == 0
    graphs = json.loads(out.read_text())["graphs"]
    assert set(graphs) == {"1 kernel", "10 kernels", "94 kernels", "200 kernels", "upload copy + 1 kernel",
                           "upload copy + 94 kernels", "upload copy + event + 94 kernels",
                           "upload kernel + event + 94 kernels", "upload kernel + 94 kernels"}
    assert all(value > 0 for record in graphs.values() for value in record.values())
    # 199 more nodes of a kernel that does nearly nothing take more GPU time than the launch of one
    assert graphs["200 kernels"]["back_to_back_us"] > 10 * graphs["1 kernel"]["back_to_back_us"]


@pytest.mark.cuda
def test_graph_buckets_benchmark_times_each_capacity_with_and_without_tuning(tmp_path):
    from benchmarks import graph_buckets

    out = tmp_path / "graph-buckets.json"
    assert graph_buckets.main(["--models", "minilm", "--workloads", "bs32_var", "--repeats", "3",
                               "--out", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["bucket"] for r in records] == ["exact, heuristic", "rounded to 128, heuristic", "exact, tuned",
                                              "rounded to 128, tuned"]
    exact, rounded = records[0]["token_capacity"], records[1]["token_capacity"]
    assert exact == records[0]["real_tokens"] and rounded % 128 == 0 and exact <= rounded < exact + 128
    assert all(r["median_ms"] > 0 and r["gemm_ms"] > 0 and r["kernels_per_call"] > 0 for r in records)


def test_graph_buckets_round_a_capacity_up_and_never_past_the_padded_batch():
    from benchmarks.graph_buckets import capacities

    assert capacities(32, 128, 2172) == {"exact": 2172, "rounded to 128": 2176}
    assert capacities(1, 16, 16) == {"exact": 16, "rounded to 128": 16}


def test_interleaved_timing_in_blocks_times_all_but_the_first_call_of_each_turn():
    import torch

    from benchmarks.measure import time_interleaved

    calls = []
    samples = time_interleaved({name: (lambda name=name: calls.append(name)) for name in "ab"}, repeats=2,
                               device=torch.device("cpu"), block=3)
    assert "".join(calls) == "aaabbbaaabbb"
    assert {name: len(s) for name, s in samples.items()} == {"a": 4, "b": 4}
    one_call_turns = time_interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, device=torch.device("cpu"))
    assert {name: len(s) for name, s in one_call_turns.items()} == {"a": 2, "b": 2}


def test_cuda_targets_are_read_off_the_best_fused_system_of_each_cell():
    from benchmarks.encoder import Target, target_verdicts

    def record(system, workload, **figures):
        return {"system": system, "model": "bert-base", "dtype": "fp16", "workload": workload} | figures

    records = [record("fusedbert", "bs1x16", median_ms=0.40), record("fusedbert_graphs", "bs1x16", median_ms=0.11),
               record("compile", "bs1x16", median_ms=0.05),  # a peer never counts for the fused model
               record("fusedbert", "bs128_var", tokens_per_s=2.9e6, peak_extra_mem_mb=150.0),
               record("fusedbert_graphs", "bs128_var", tokens_per_s=3.1e6),
               record("hf_sdpa", "bs128_var", tokens_per_s=1.0e6, peak_extra_mem_mb=200.0)]
    targets = (Target("#9", "bert-base", "fp16", "bs1x16", "median_ms", False, 0.12),
               Target("#7", "bert-base", "fp16", "bs128_var", "tokens_per_s", True, 3.2e6),
               Target("#7", "bert-base", "fp16", "bs128_var", "memory_vs_hf_sdpa", False, 0.6, ("fusedbert",)),
               Target("#7", "bert-base", "fp16", "bs32_var", "median_ms", False, 0.75))

    verdicts = target_verdicts(records, targets)

    assert [(v["system"], v["measured"], v["met"]) for v in verdicts] == [
        ("fusedbert_graphs", 0.11, True), ("fusedbert_graphs", 3.1e6, False), ("fusedbert", 0.75, False),
        (None, None, None)]
    assert [v["bound"] for v in verdicts] == ["<= 0.12", ">= 3.2e+06", "<= 0.6", "<= 0.75"]


def test_a_ratio_to_the_best_peer_is_judged_only_with_every_peer_in_the_cell():
    from benchmarks.encoder import GPU_PEERS, Target, target_verdicts, verdict_text

    def record(system, **figures):
        return {"system": system, "model": "bert-base", "dtype": "fp16", "workload": "bs128_var"} | figures

    target = Target("#7", "bert-base", "fp16", "bs128_var", "ratio_to_best_peer", True, 2.3, needs=GPU_PEERS)
    # A run without torch.compile: its best peer is HF SDPA, against which the fused model clears the bound.
    without_compile = [record("fusedbert_graphs", ratio_to_best_peer=2.55), record("hf_eager"), record("hf_sdpa"),
                       record("nested")]

    [partial] = target_verdicts(without_compile, (target,))
    assert (partial["measured"], partial["met"], partial["missing"]) == (None, None, ["compile"])
    assert verdict_text(partial, "") == ">= 2.3: not measured (without compile)"

    [whole] = target_verdicts(without_compile + [record("compile")], (target,))
    assert (whole["system"], whole["measured"], whole["met"]) == ("fusedbert_graphs", 2.55, True)
    assert "missing" not in whole
    # A cell the run never timed is plainly not measured.
    [absent] = target_verdicts([], (target,))
    assert (absent["measured"], "missing" in absent) == (None, False)


def test_encoder_table_shows_a_dash_where_the_run_had_no_peer(capsys):
    from benchmarks.encoder import print_table

    row = {"model": "bert-base", "dtype": "fp16", "workload": "bs1x16", "median_ms": 0.4, "p90_ms": 0.5, "min_ms": 0.3,
           "max_ms": 0.6, "tokens_per_s": 4e4, "floor_share": 0.6, "peak_share": 0.01, "max_abs_diff": 5e-3,
           "within_tolerance": True}
    print_table([row | {"system": "fusedbert_graphs", "ratio_to_best_peer": None},
                 row | {"system": "fusedbert", "ratio_to_best_peer": 1.5, "median_ms": 0.5}], [])
    lines = {line.split()[3]: line for line in capsys.readouterr().out.splitlines() if line.startswith("bert-base")}
    assert "nan" not in lines["fusedbert_graphs"] and " - " in lines["fusedbert_graphs"]
    assert "1.50x" in lines["fusedbert"]


def test_new_shape_benchmark_gives_each_system_shapes_no_other_has_met(tmp_path):
    from benchmarks import new_shapes

    out = tmp_path / "new-shapes.json"
    assert new_shapes.main(["--device", "cpu", "--model", "minilm", "--systems", "hf_sdpa", "torchscript",
                            "fusedbert", "--shapes", "3", "--max-batch", "3", "--lengths", "8", "16",
                            "--out", str(out)]) == 0

    records = {r["system"]: r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {"hf_sdpa", "torchscript", "fusedbert"}
    shapes = [tuple(shape) for r in records.values() for shape in r["shapes"]]
    assert len(shapes) == 9 and len(set(shapes)) == 9
    assert all(len(r["first_ms"]) == len(r["again_ms"]) == 3 and min(r["first_ms"]) > 0 for r in records.values())
    assert "aten::scaled_dot_product_attention" in records["hf_sdpa"]["attention_ops"]


def test_new_shape_benchmark_traced_model_matches_hf_at_real_tokens_of_a_padded_batch():
    import torch

    from benchmarks import new_shapes, systems, workloads

    reference, _ = workloads.load_model("minilm")
    cpu = torch.device("cpu")
    traced = new_shapes.traced_forward(reference, torch.float32, new_shapes.seeded_batch([9, 4], 30522, cpu))
    batch = new_shapes.seeded_batch([12, 3, 7], 30522, cpu)
    with torch.inference_mode():
        expected = systems.hf_forward(reference)(batch)
        got = traced(batch)
    real = batch.is_real
    assert (got[real] - expected[real]).abs().max() < 1e-4


def test_worker_stages_times_a_batch_loaded_and_served_as_a_worker_does(tmp_path, minilm_path):
    import ts.service
    from handler_support import write_model_dir

    from benchmarks import worker_stages

    model_dir = write_model_dir(tmp_path / "model", minilm_path, "sequence_classification", "torchscript", True)
    (model_dir / "MAR-INF").mkdir()
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"model": {"modelName": "stages", "serializedFile": "traced_model.pt",
                   "handler": "transformer_handler_generalized.py"}}))
    create_response = ts.service.create_predict_response
    out = tmp_path / "stages.json"
    assert worker_stages.main([str(model_dir), "--tokens", "12", "--requests", "3", "--rounds", "1",
                               "--gap-ms", "0", "0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens"] == 12 and [r["gap_ms"] for r in result["records"]] == [0, 0.5]
    stages = {name: value["median_us"] for name, value in result["records"][0]["stages"].items()}
    assert set(stages) == {"batch (Service.predict)", "TorchServe: read the batch", "handler: decode the request",
                           "handler: tokenize", "handler: model call, copies and waits", "  of it: the model or replay",
                           "handler: answers", "handler: its metric lines", "TorchServe: its own metric lines",
                           "TorchServe: encode the response"}
    assert stages["batch (Service.predict)"] > stages["handler: model call, copies and waits"] > \
        stages["  of it: the model or replay"] > 0
    assert ts.service.create_predict_response is create_response  # the stage wrappers are gone afterwards


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def copy_results(directory: Path, *names: str) -> list[Path]:
    return [Path(shutil.copy(RESULTS / name, directory)) for name in names]


def test_plots_draw_the_named_results_only(tmp_path):
    from benchmarks import plots
    encoder, serving, _ = copy_results(tmp_path, "encoder-cpu-amd-epyc-20261123.json",
                                       "serving-cpu-amd-epyc-20261123.json", "encoder-cpu-amd-epyc-20261204.json")
    assert plots.main([str(encoder), str(serving)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["encoder-cpu-amd-epyc-20261123-tokens.png",
                                                             "serving-cpu-amd-epyc-20261123.png"]


def test_plots_without_names_draw_every_result_of_the_directory(tmp_path):
    from benchmarks import plots
    copy_results(tmp_path, "encoder-cpu-amd-epyc-20261123.json", "encoder-cpu-amd-epyc-20261204.json")
    assert plots.main(["--results", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["encoder-cpu-amd-epyc-20261123-tokens.png",
                                                             "encoder-cpu-amd-epyc-20261204-tokens.png"]


def test_plots_refuse_a_file_that_is_no_encoder_or_serving_result_before_drawing_any(tmp_path):
    from benchmarks import plots
    encoder, = copy_results(tmp_path, "encoder-cpu-amd-epyc-20261123.json")
    with pytest.raises(SystemExit):
        plots.main([str(encoder), str(tmp_path / "profile-final.json")])
    assert not list(tmp_path.glob("*.png"))


def test_kernel_counters_summarize_an_nsight_compute_raw_page(tmp_path):
    from benchmarks import kernel_counters

    stalls = {"long_scoreboard": 30, "selected": 10, "wait": 60, "barrier_not_issued": 500}
    metrics = {**{metric: "1,234.5" for metric in kernel_counters.METRICS.values()},
               **{kernel_counters.STALL_PREFIX + reason: str(count) for reason, count in stalls.items()}}
    name = ("void fusedbert::<unnamed>::packed_attention_kernel<c10::Half, 64>(const T1 *, const int *, int, "
            "float, T1 *)")
    header = ["ID", "Kernel Name", "Grid Size", "Block Size", *metrics]
    units = ["", "", "", "", *("" for _ in metrics)]
    row = ["0", name, "(2, 12, 128)", "(128, 1, 1)", *metrics.values()]
    page = tmp_path / "bert-base-bs128_var.csv"
    with page.open("w", newline="") as f:
        csv.writer(f).writerows([header, units, row])
    out = tmp_path / "counters.json"
    assert kernel_counters.main(["summarize", str(page), "--device", "NVIDIA H100 80GB HBM3", "--out", str(out)]) == 0

    [record] = json.loads(out.read_text())["profiles"]["bert-base-bs128_var"]
    assert record["kernel"] == "packed_attention_kernel" and record["grid"] == "(2, 12, 128)"
    assert record["duration_us"] == 1234.5
    # Shares of the samples, largest first; the *_not_issued counters are another view of the same stalls.
    assert list(record["stall_shares"].items()) == [("wait", 0.6), ("long_scoreboard", 0.3), ("selected", 0.1)]


def test_kernel_counters_refuse_a_page_without_the_full_set(tmp_path):
    from benchmarks import kernel_counters

    page = tmp_path / "partial.csv"
    page.write_text('"ID","Kernel Name","Grid Size","Block Size","gpu__time_duration.sum"\n"","","","","us"\n')
    with pytest.raises(SystemExit, match="not a raw page of a --set full profile"):
        kernel_counters.main(["summarize", str(page), "--device", "x", "--out", str(tmp_path / "out.json")])
