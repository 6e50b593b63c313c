"""python -m benchmarks: run the suite, print a table, write results.json, report.md and plots."""

import argparse
import json
import pathlib
import sys
import time

import torch

from . import cases as C
from . import harness, report

ROOT = pathlib.Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--ops", default=",".join(C.all_op_names()),
                   help="comma-separated op names (default: all)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default="",
                   help="comma-separated shape labels to keep, e.g. 2^24,4096x4096 (default: all)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few sizes, short timings")
    p.add_argument("--compile", action="store_true", help="include torch.compile as a peer")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default: benchmarks/results/<time>)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="print the rows of NEW/results.json that moved beyond noise against OLD")
    args = p.parse_args(argv)
    unknown = set(args.ops.split(",")) - set(C.all_op_names())
    if unknown:
        p.error(f"unknown ops {sorted(unknown)}; known: {C.all_op_names()}")
    bad = set(args.dtypes.split(",")) - set(DTYPES)
    if bad:
        p.error(f"unknown dtypes {sorted(bad)}; known: {list(DTYPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def _progress(total):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), unit="case")


def run(args):
    cfg = C.Config(
        device=args.device,
        dtypes=[DTYPES[d] for d in args.dtypes.split(",")],
        peers=["torch"] + (["torch.compile"] if args.compile else [])
              + (["liger"] if args.device == "cuda" else []),
        size_filter={s for s in args.sizes.split(",") if s},
        quick=args.quick,
    )
    min_run_time = 0.05 if args.quick else 0.3
    copy_bps = harness.copy_bandwidth(args.device, min_run_time=min_run_time)
    cache = harness.cache_bytes(args.device)
    selected = list(C.select_cases(cfg, args.ops.split(",")))
    progress = _progress(len(selected))
    records = []
    interrupted = False
    try:  # an interrupted run (Ctrl-C, a time limit's SIGINT) still reports what it measured
        for case in selected:
            try:
                fns = case.build(cfg, harness.input_copies(case.nbytes, cache))
                missing = {}
            except Exception as err:  # a peer that cannot run this case is reported, not dropped
                fns, missing = {}, {"all": f"{type(err).__name__}: {err}"}
            case_records = []
            extra = [p for p in fns if p not in ("torch", "pyops")] if fns else cfg.peers[1:]
            for impl in ["torch", "pyops"] + extra:
                record = {"op": case.op, "direction": case.direction, "dtype": str(case.dtype)[6:],
                          "shape": case.label, "params": case.params, "impl": impl,
                          "bytes": case.nbytes, "median_s": None, "iqr_s": None, "gbps": None,
                          "pct_copy": None, "peak_extra_bytes": None, "ratio_vs_torch": None}
                fn = fns.get(impl)
                if fn is None:
                    record["missing"] = missing.get("all", "not available")
                else:
                    try:
                        median, iqr = harness.time_fn(fn, args.device, min_run_time)
                        record.update(median_s=median, iqr_s=iqr, gbps=case.nbytes / median / 1e9,
                                      pct_copy=100 * case.nbytes / median / copy_bps,
                                      peak_extra_bytes=harness.peak_extra_bytes(fn, args.device))
                    except Exception as err:
                        record["missing"] = f"{type(err).__name__}: {err}"
                case_records.append(record)
            base = case_records[0]["median_s"]
            for r in case_records:
                if base and r["median_s"]:
                    r["ratio_vs_torch"] = r["median_s"] / base
            records += case_records
            del fns
            if progress is not None:
                progress.update()
    except KeyboardInterrupt:
        interrupted = True
    if progress is not None:
        progress.close()
    return {"machine": harness.machine_info(args.device), "device": args.device,
            "copy_gbps": copy_bps / 1e9, "args": vars(args) | {"out": str(args.out)},
            "interrupted": interrupted, "records": records}


def main(argv=None):
    args = parse_args(argv)
    if args.compare:
        lines = report.compare(*args.compare)
        print("\n".join(lines) if lines else "no row moved beyond the noise")
        return 0
    out = args.out or ROOT / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(report.markdown_report(results))
    plots = [] if args.no_plots else report.write_plots(results, out)
    print(f"copy bandwidth: {results['copy_gbps']:.1f} GB/s  ({results['machine']['cpu']}, "
          f"{results['machine']['threads']} threads)")
    print(report.text_table(results["records"]))
    print("\nTime ratio, geometric mean over shapes and dtypes (rows); below 1: pyops is faster")
    print(report.summary_markdown(results["records"]))
    if results["interrupted"]:
        print("\ninterrupted: the cases after the last row were not measured")
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}"
          + "".join(f", {p.name}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
