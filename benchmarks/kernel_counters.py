"""What bounds each of the encoder's kernels, from the GPU's hardware counters (Nsight Compute): one eager
forward is profiled, then each kernel is summarized by its duration, DRAM and tensor-pipe use, L2 hit rate,
occupancy, issue-slot use, eligible warps, and the stall reasons its warps were sampled in.

    ncu --profile-from-start off --clock-control none --set full -c 14 -o OUT/bert-base \\
        python -m benchmarks.kernel_counters forward --model bert-base --workload bs128_var
    ncu --import OUT/bert-base.ncu-rep --page raw --csv > OUT/bert-base.csv
    python -m benchmarks.kernel_counters summarize OUT/bert-base.csv [...] --out RESULT.json

`forward` warms the fused model up (five calls), then runs one forward between cudaProfilerStart and
cudaProfilerStop, so that `--profile-from-start off` counts that call alone; `-c 14` keeps the kernels before
the first layer and the first layer's (bert-base and MiniLM launch 14 by then). `--clock-control none`
leaves the clocks as the other benchmarks find them. Nsight Compute replays each kernel once per counter
pass with the caches flushed before each, so a kernel's duration here is without the L2 hits it gets from the
kernel before it in a forward: compare these durations with each other, not with benchmarks.profile's.
`summarize` reads the raw CSV pages (one per model and workload) and writes one JSON.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch

import fusedbert

from .systems import hf_forward, hf_model
from .workloads import WORKLOADS, load_model, make_batch

# The summary's fields and the raw page's metric behind each.
METRICS = {
    "duration_us": "gpu__time_duration.sum",
    "dram_pct_of_peak": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "sm_pct_of_peak": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "tensor_pipe_pct_active": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
    "l2_hit_pct": "lts__t_sector_hit_rate.pct",
    "achieved_occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "issue_slots_busy_pct": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "eligible_warps_per_scheduler": "smsp__warps_eligible.avg.per_cycle_active",
    "instructions": "smsp__inst_executed.sum",
    "registers_per_thread": "launch__registers_per_thread",
}
STALL_PREFIX = "smsp__pcsamp_warps_issue_stalled_"
TOP_STALLS = 5


def number(text: str) -> float:
    return float(text.replace(",", ""))


def short_name(name: str) -> str:
    """A kernel's name without its argument list and template arguments: `packed_attention_kernel`,
    `nvjet_sm90_hsh_256x104_...`, `cutlass::device_kernel` (the CUTLASS FFN1). Grid and block tell launches of
    one name apart."""
    name = re.sub(r"^void ", "", name.split("(")[0]).replace("<unnamed>::", "").replace("fusedbert::", "")
    depth, kept = 0, []
    for char in name:  # drop everything inside <...>
        depth += char == "<"
        if depth == 0:
            kept.append(char)
        depth -= char == ">"
    return "".join(kept)


def summarize_page(path: Path) -> list[dict]:
    """One record per kernel of an `ncu --page raw --csv` page, in launch order."""
    rows = list(csv.reader(path.open()))
    header, data = rows[0], rows[2:]  # the second row holds the units
    column = {name: index for index, name in enumerate(header)}
    missing = [metric for metric in (*METRICS.values(), "Kernel Name", "Grid Size", "Block Size")
               if metric not in column]
    if missing:
        raise SystemExit(f"{path}: not a raw page of a --set full profile (missing {', '.join(missing)})")
    stall_columns = {name[len(STALL_PREFIX):]: index for name, index in column.items()
                     if name.startswith(STALL_PREFIX) and not name.endswith("_not_issued")}
    records = []
    for row in data:
        stalls = {reason: number(row[index]) for reason, index in stall_columns.items() if row[index]}
        samples = sum(stalls.values()) or 1.0
        records.append({
            "kernel": short_name(row[column["Kernel Name"]]),
            "grid": row[column["Grid Size"]],
            "block": row[column["Block Size"]],
            **{field: number(row[column[metric]]) for field, metric in METRICS.items()},
            # Share of the warp samples per reason, largest first ("selected": issuing, not stalled).
            "stall_shares": {reason: round(count / samples, 3)
                             for reason, count in sorted(stalls.items(), key=lambda kv: -kv[1])[:TOP_STALLS]},
        })
    return records


def forward(model_name: str, workload: str) -> None:
    device = torch.device("cuda")
    reference, _ = load_model(model_name)
    reference.to(device)
    run = hf_forward(fusedbert.fuse(hf_model(reference, torch.float16, "sdpa")))
    batch = make_batch(WORKLOADS[workload], reference.config.vocab_size, device)
    with torch.inference_mode():
        for _ in range(5):
            run(batch)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        run(batch)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    print(f"{model_name} fp16 {workload}: {batch.real_tokens} real tokens, one forward profiled")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("forward", help="the program to run under ncu")
    run.add_argument("--model", default="bert-base")
    run.add_argument("--workload", default="bs128_var", choices=list(WORKLOADS))
    summary = commands.add_parser("summarize", help="raw CSV pages -> one JSON")
    summary.add_argument("pages", nargs="+", type=Path, help="`ncu --page raw --csv` output, one per profile")
    summary.add_argument("--device", required=True, help="the GPU the profiles ran on (the JSON's device field)")
    summary.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "forward":
        forward(args.model, args.workload)
        return 0
    results = {"device": args.device, "date": datetime.date.today().isoformat(),
               "profiles": {page.stem: summarize_page(page) for page in args.pages}}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, records in results["profiles"].items():
        print(name)
        for r in records:
            stalls = ", ".join(f"{reason} {share:.0%}" for reason, share in r["stall_shares"].items())
            print(f"  {r['kernel'][:44]:44} {r['duration_us']:7.1f} us  DRAM {r['dram_pct_of_peak']:4.0f}%  "
                  f"tensor {r['tensor_pipe_pct_active']:4.0f}%  issue {r['issue_slots_busy_pct']:4.0f}%  "
                  f"occupancy {r['achieved_occupancy_pct']:4.0f}%  | {stalls}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
