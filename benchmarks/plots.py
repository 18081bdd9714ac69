"""PNG plots from the benchmarks' result JSONs; every plot names its device and date.

    python -m benchmarks.plots                      # every encoder-*.json and serving-*.json in results/
    python -m benchmarks.plots --results DIR
    python -m benchmarks.plots results/encoder-x.json results/serving-y.json   # those results only

- encoder-<...>.json -> encoder-<...>-tokens.png: real tokens/s per workload, ordered by batch size
  (bs1x16, bs1x128, bs32_var, bs128_var), one line per system, one panel per model and dtype;
- encoder-<...>.json whose records carry ``peak_mem_mb`` or ``peak_extra_mem_mb`` (CUDA) ->
  encoder-<...>-memory.png: memory per call against the same workloads;
- serving-<...>.json -> serving-<...>.png: latency p50/p90/p99 and requests/s against concurrency,
  fused against stock.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable as from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MEMORY_KEYS = ("peak_mem_mb", "peak_extra_mem_mb")
FUSED_STYLE = dict(color="tab:red", linewidth=2.5)
SYSTEM_STYLES = {"fusedbert": FUSED_STYLE, "fusedbert_graphs": dict(FUSED_STYLE, linestyle="--"),
                 "fusedbert_fp8_graphs": dict(FUSED_STYLE, linestyle=":"), "fused": FUSED_STYLE,
                 "stock": dict(color="tab:blue"), "noop": dict(color="tab:gray"),
                 "hf_eager": dict(color="tab:orange"), "hf_sdpa": dict(color="tab:green"),
                 "nested": dict(color="tab:purple"), "compile": dict(color="tab:blue"), "ort": dict(color="tab:brown")}
PERCENTILE_STYLES = {"p50": "-", "p90": "--", "p99": ":"}


def _label(header: dict) -> str:
    name = header.get("device_name") or header.get("device")
    return f"{name}, torch {header.get('torch')}, {str(header.get('date', ''))[:10]}"


def _panels(count: int):
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat)


def _encoder_panels(records: list[dict], value_key: str, ylabel: str, title: str, header: dict, output: Path) -> Path:
    """One panel per (model, dtype): ``value_key`` per workload, workloads ordered by batch size then
    length (bs1x16, bs1x128, bs32_var, bs128_var), one line per system."""
    ordered = sorted({(r["batch"], r["real_tokens"], r["workload"]) for r in records})
    position = {name: i for i, name in enumerate(dict.fromkeys(name for _, _, name in ordered))}
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["model"], record["dtype"]), []).append(record)
    figure, axes = _panels(len(groups))
    for axis, ((model, dtype), group) in zip(axes, sorted(groups.items())):
        for system in sorted({r["system"] for r in group}):
            points = sorted((position[r["workload"]], r[value_key]) for r in group if r["system"] == system)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system,
                      **SYSTEM_STYLES.get(system, {}))
        axis.set_xticks(list(position.values()), list(position))
        axis.set_xlabel("workload (batch size x tokens; _var: lengths 8..128)")
        axis.set_ylabel(ylabel)
        axis.set_yscale("log")
        axis.set_title(f"{model} {dtype}")
        axis.grid(alpha=0.3)
    # One legend for the figure: a system absent from some panel (ORT has no bf16) is still named.
    labelled = {label: handle for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    columns = min(len(labelled), 3 * len([a for a in axes if a.get_visible()][:3]))  # ~3 names per panel width
    legend_rows = -(-len(labelled) // columns)
    figure.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=columns, fontsize=9)
    figure.suptitle(f"{title}\n{_label(header)}")
    figure.tight_layout(rect=(0, 0.05 * legend_rows, 1, 1))
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def plot_encoder(result: dict, stem: Path) -> list[Path]:
    """Real tokens/s against batch size; and memory against batch size when the records carry it."""
    header, records = result["header"], result["records"]
    written = [_encoder_panels(records, "tokens_per_s", "real tokens / s (median call)",
                               "Encoder throughput: real tokens/s vs batch size",
                               header, stem.with_name(stem.name + "-tokens.png"))]
    memory_key = next((k for k in MEMORY_KEYS if any(r.get(k) is not None for r in records)), None)
    if memory_key is not None:
        with_memory = [r for r in records if r.get(memory_key) is not None]
        written.append(_encoder_panels(with_memory, memory_key, f"{memory_key} (MiB)", "GPU memory per call vs batch size",
                                       header, stem.with_name(stem.name + "-memory.png")))
    return written


def plot_serving(result: dict, output: Path) -> Path:
    """Latency percentiles and requests/s against concurrency, fused against stock."""
    header, records = result["header"], result["records"]
    figure, (latency_axis, rate_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in sorted({r["system"] for r in records}):
        points = sorted((r for r in records if r["system"] == system), key=lambda r: r["concurrency"])
        concurrency = [r["concurrency"] for r in points]
        style = SYSTEM_STYLES.get(system, {})
        for percentile, linestyle in PERCENTILE_STYLES.items():
            latency_axis.plot(concurrency, [r["latency_ms"][percentile] for r in points], marker="o",
                              linestyle=linestyle, label=f"{system} {percentile}", **style)
        rate_axis.plot(concurrency, [r["requests_per_s"] for r in points], marker="o", label=system, **style)
    levels = sorted({r["concurrency"] for r in records})
    for axis in (latency_axis, rate_axis):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrent clients")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    latency_axis.set_yscale("log")
    latency_axis.set_ylabel("latency (ms)")
    latency_axis.set_title("latency percentiles")
    rate_axis.set_yscale("log")  # the noop floor runs one to two orders above a model on a CPU
    rate_axis.set_ylabel("requests / s")
    rate_axis.set_title("throughput")
    batching = header.get("model_config", {})
    sharing = f", {batching.get('minWorkers')} workers per model" if batching.get("minWorkers", 1) > 1 else ""
    if header.get("mps_servers"):
        sharing += ", NVIDIA MPS"
    figure.suptitle(f"TorchServe {header.get('mode')} ({header.get('dtype')}, batchSize {batching.get('batchSize')}, "
                    f"maxBatchDelay {batching.get('maxBatchDelay')} ms{sharing})\n"
                    f"fused vs stock; noop answers without a model\n{_label(header)}")
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="result JSONs to plot (default: every one in --results; matplotlib's PNGs differ "
                             "byte for byte between runs, so redrawing all rewrites every committed plot)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    files = args.files or sorted(args.results.glob("encoder-*.json")) + sorted(args.results.glob("serving-*.json"))
    for path in files:  # before any plot is drawn, so that a bad name leaves nothing half done
        if not path.name.startswith(("encoder-", "serving-")):
            parser.error(f"{path}: not an encoder-*.json or serving-*.json result")
    written = []
    for path in files:
        if path.name.startswith("encoder-"):
            written += plot_encoder(json.loads(path.read_text()), path.with_suffix(""))
        else:
            written.append(plot_serving(json.loads(path.read_text()), path.with_suffix(".png")))
    if not written:
        print(f"plots: no encoder-*.json or serving-*.json in {args.results}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
