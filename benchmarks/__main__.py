"""python -m benchmarks: run the suite, print a table, write results.json, report.md and plots."""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch

from . import cases as C
from . import distributed, harness, report

ROOT = pathlib.Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--ops", default=",".join(C.all_op_names() + [distributed.OP]),
                   help="comma-separated op names (default: all)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default="",
                   help="comma-separated shape labels to keep, e.g. 2^24,4096x4096 (default: all)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few sizes, short timings")
    p.add_argument("--compile", action="store_true", help="include torch.compile as a peer")
    p.add_argument("--threads", default="1,all",
                   help="CPU: comma-separated thread counts to measure every case at ('all': "
                        "torch's default, one per core); default 1,all")
    p.add_argument("--huge-pages", choices=["both", "on", "off"], default="both",
                   help="CPU: measure with torch's huge-page allocation (THP_MEM_ALLOC_ENABLE=1, "
                        "for torch's and pyops' outputs alike), without it, or both (default); "
                        "each setting runs in a process of its own")
    p.add_argument("--out", type=pathlib.Path,
                   help="output folder (default: benchmarks/results/<time>)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="print the rows of NEW/results.json that moved beyond noise against OLD")
    args = p.parse_args(argv)
    known = C.all_op_names() + [distributed.OP]
    unknown = set(args.ops.split(",")) - set(known)
    if unknown:
        p.error(f"unknown ops {sorted(unknown)}; known: {known}")
    bad = set(args.dtypes.split(",")) - set(DTYPES)
    if bad:
        p.error(f"unknown dtypes {sorted(bad)}; known: {list(DTYPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        args.thread_counts = (thread_counts(args.threads) if args.device == "cpu"
                              else [torch.get_num_threads()])
    except ValueError:
        p.error(f"--threads: expected positive counts or 'all', got {args.threads!r}")
    return args


def thread_counts(spec):
    counts = [torch.get_num_threads() if t == "all" else int(t) for t in spec.split(",") if t]
    if not counts or min(counts) < 1:
        raise ValueError(spec)
    return list(dict.fromkeys(counts))


def huge_pages_now():
    return os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"


def _progress(total):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), unit="case")


def measure(case, cfg, copies, copy_bps, min_run_time, threads, device):
    """The records of one case at one thread count: torch first, then pyops and the peers, timed
    in turns. The implementations are built at that thread count, so compiled peers are compiled
    for it. With one input set (copies=1) where the case rotates several, the case is measured
    hot: its inputs called again and again from the cache, as activations passed between layers
    are."""
    hot = copies == 1 and harness.input_copies(case.nbytes, harness.cache_bytes(device)) > 1
    try:
        fns = case.build(cfg, copies)
        missing = {}
    except Exception as err:  # a peer that cannot run this case is reported, not dropped
        fns, missing = {}, {"all": f"{type(err).__name__}: {err}"}
    extra = [p for p in fns if p not in ("torch", "pyops")] if fns else cfg.peers[1:]
    impls = ["torch", "pyops"] + extra
    timings = harness.time_peers({i: fns[i] for i in impls if fns.get(i)}, device, min_run_time)
    case_records = []
    for impl in impls:
        record = report.new_record(
            op=case.op, direction=case.direction, dtype=str(case.dtype)[6:], shape=case.label,
            impl=impl, params=" ".join(p for p in (case.params, "hot cache" if hot else "") if p),
            threads=threads, huge_pages=huge_pages_now(), bytes=case.nbytes)
        fn = fns.get(impl)
        if fn is None:
            record["missing"] = missing.get("all", "not available")
        else:
            try:
                if isinstance(timings[impl], Exception):
                    raise timings[impl]
                median, iqr = timings[impl]
                record.update(median_s=median, iqr_s=iqr, gbps=case.nbytes / median / 1e9,
                              pct_copy=100 * case.nbytes / median / copy_bps,
                              peak_extra_bytes=harness.peak_extra_bytes(fn, device))
            except Exception as err:
                record["missing"] = f"{type(err).__name__}: {err}"
        case_records.append(record)
    return report.set_ratios(case_records)


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
    all_threads = torch.get_num_threads()
    try:  # an interrupted run (Ctrl-C, a time limit's SIGINT) still reports what it measured
        for case in selected:
            for threads in args.thread_counts:
                torch.set_num_threads(threads)
                copies = harness.input_copies(case.nbytes, cache)
                for n in (copies, 1) if copies > 1 else (copies,):  # cold, then hot
                    records += measure(case, cfg, n, copy_bps, min_run_time, threads, args.device)
            if progress is not None:
                progress.update()
        if distributed.OP in args.ops.split(",") and args.device == "cpu":
            with tempfile.TemporaryDirectory() as tmp:
                records += distributed.records(args.quick, huge_pages_now(), cfg.dtypes, copy_bps,
                                               tmp)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        torch.set_num_threads(all_threads)
    if progress is not None:
        progress.close()
    return {"machine": harness.machine_info(args.device), "device": args.device,
            "copy_gbps": copy_bps / 1e9, "args": vars(args) | {"out": str(args.out)},
            "interrupted": interrupted, "records": records}


def run_in_child(argv, huge_pages):
    """The same suite in a fresh process with or without torch's huge-page allocation (torch reads
    THP_MEM_ALLOC_ENABLE once per process); its results, partial if it was interrupted."""
    env = dict(os.environ)
    if huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    else:
        env.pop("THP_MEM_ALLOC_ENABLE", None)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks", *argv,
               "--huge-pages", "on" if huge_pages else "off", "--out", tmp, "--no-plots"]
        try:
            subprocess.run(cmd, env=env, cwd=ROOT.parent, stdout=subprocess.DEVNULL, check=True)
        except KeyboardInterrupt:
            pass
        path = pathlib.Path(tmp) / "results.json"
        if not path.exists():
            raise KeyboardInterrupt
        return json.loads(path.read_text())


def child_argv(argv):
    """argv without the options the parent sets for each child."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--huge-pages", "--out"):
            skip = True
        elif not a.startswith(("--huge-pages=", "--out=")) and a != "--no-plots":
            out.append(a)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare:
        lines = report.compare(*args.compare)
        print("\n".join(lines) if lines else "no row moved beyond the noise")
        return 0
    out = args.out or ROOT / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    wanted = {"both": [False, True], "off": [False], "on": [True]}[args.huge_pages]
    if args.device == "cuda":
        wanted = [huge_pages_now()]
    results = None
    for huge_pages in wanted:
        if results is not None and results["interrupted"]:
            break
        if huge_pages == huge_pages_now():
            part = run(args)
        else:
            try:
                part = run_in_child(child_argv(argv), huge_pages)
            except KeyboardInterrupt:
                part = {"records": [], "interrupted": True}
        if results is None:
            results = part
        else:
            results["records"] += part["records"]
            results["interrupted"] = part["interrupted"]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(report.markdown_report(results))
    plots = [] if args.no_plots else report.write_plots(results, out)
    print(f"copy bandwidth: {results['copy_gbps']:.1f} GB/s  ({results['machine']['cpu']}, "
          f"{results['machine']['threads']} threads)")
    print(report.text_table(results["records"]))
    print("\nTime ratio, geometric mean over shapes and dtypes (rows); below 1: pyops is faster")
    print(report.summary_markdown(results["records"]))
    if args.device == "cpu":
        print("\nThread scaling: time at each thread count over time at one thread")
        print(report.scaling_markdown(results["records"]))
    if results["interrupted"]:
        print("\ninterrupted: the cases after the last row were not measured")
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}"
          + "".join(f", {p.name}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
