"""Turning records into a stdout table, report.md, plots, and comparisons between runs."""

import collections
import json
import math

KEY_FIELDS = ("op", "direction", "dtype", "shape", "params", "impl")


def _fmt_time(seconds):
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _rows_by_case(records):
    cases = collections.OrderedDict()
    for r in records:
        cases.setdefault((r["op"], r["direction"], r["dtype"], r["shape"], r["params"]), []).append(r)
    return cases


HEADER = ["op", "dir", "dtype", "shape", "impl", "median", "GB/s", "% copy", "peak extra", "vs torch"]


def table_rows(records):
    """One row per implementation; the fastest of each case carries a '*'."""
    rows = []
    for (op, direction, dtype, shape, params), group in _rows_by_case(records).items():
        timed = [r for r in group if r["median_s"] is not None]
        best = min(timed, key=lambda r: r["median_s"]) if timed else None
        for r in group:
            name = r["impl"] + (" *" if r is best and len(timed) > 1 else "")
            if r.get("missing"):
                name += f" (missing: {r['missing'][:60]})"
            rows.append([
                op, direction, dtype, shape + (f" {params}" if params else ""), name,
                _fmt_time(r["median_s"]),
                "-" if r["gbps"] is None else f"{r['gbps']:.1f}",
                "-" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%",
                _fmt_bytes(r["peak_extra_bytes"]),
                "-" if r["ratio_vs_torch"] is None else f"{r['ratio_vs_torch']:.2f}",
            ])
    return rows


def text_table(records):
    rows = [HEADER] + table_rows(records)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_report(results):
    machine = results["machine"]
    out = ["# pyops benchmark report", ""]
    out.append("Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    out.append(f"Copy bandwidth measured in this run: {results['copy_gbps']:.1f} GB/s")
    out.append("")
    out.append("Times are medians; `vs torch` is time / torch eager's time in the same run (below 1 "
               "is faster); `*` marks the fastest implementation of a row.")
    out += ["", "## Summary", "",
            "Time ratio, geometric mean over the shapes and dtypes measured (number of rows in "
            "brackets); below 1 means pyops is faster.", "", summary_markdown(results["records"])]
    by_op = collections.OrderedDict()
    for r in results["records"]:
        by_op.setdefault(r["op"], []).append(r)
    for op, records in by_op.items():
        out += ["", f"## {op}", "", "| " + " | ".join(HEADER) + " |",
                "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    return "\n".join(out) + "\n"


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def summary(records, impl="pyops"):
    """Geometric mean of impl's time ratio against torch, per op and direction."""
    groups = collections.OrderedDict()
    for r in records:
        if r["impl"] == impl and r["ratio_vs_torch"]:
            groups.setdefault((r["op"], r["direction"]), []).append(r["ratio_vs_torch"])
    return [(op, d, _geomean(v), len(v)) for (op, d), v in groups.items()]


def summary_markdown(records):
    """Per op and direction: pyops' time over each peer's, geometric mean over shapes and dtypes."""
    peers = [p for p in dict.fromkeys(r["impl"] for r in records) if not p.startswith("pyops")]
    ratios = collections.OrderedDict()
    for (op, direction, *_), group in _rows_by_case(records).items():
        times = {r["impl"]: r["median_s"] for r in group if r["median_s"]}
        if "pyops" not in times:
            continue
        row = ratios.setdefault((op, direction), {p: [] for p in peers})
        for p in peers:
            if p in times:
                row[p].append(times["pyops"] / times[p])
    lines = ["| op | dir | " + " | ".join(f"pyops / {p}" for p in peers) + " |",
             "|---|---|" + "---|" * len(peers)]
    for (op, direction), row in ratios.items():
        cells = [f"{_geomean(v):.2f} ({len(v)})" if v else "-" for v in row.values()]
        lines.append(f"| {op} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plots(results, out_dir):
    """Bandwidth against size per op (one line per implementation) and speed-up bars.

    Returns the files written, or [] when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    by_op = collections.OrderedDict()
    for r in results["records"]:
        if r["gbps"] is not None:
            by_op.setdefault(r["op"], []).append(r)
    for op, records in by_op.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        lines = collections.OrderedDict()
        for r in records:
            lines.setdefault((r["impl"], r["direction"], r["dtype"]), []).append(
                (r["bytes"], r["gbps"]))
        for (impl, direction, dtype), pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{impl} {direction} {dtype}")
        ax.axhline(results["copy_gbps"], color="gray", linestyle="--", label="copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes moved (minimum)")
        ax.set_ylabel("GB/s")
        ax.set_title(f"{op}: bandwidth")
        ax.legend(fontsize=6)
        path = out_dir / f"bandwidth_{op}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    rows = summary(results["records"])
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
        labels = [f"{op} {d}" for op, d, _, _ in rows]
        speedups = [1 / ratio for _, _, ratio, _ in rows]
        ax.barh(labels, speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups])
        ax.axvline(1.0, color="gray", linestyle="--")
        ax.set_xlabel("speed-up over torch eager (geometric mean over shapes and dtypes)")
        path = out_dir / "speedup.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _key(r):
    return tuple(r[f] for f in KEY_FIELDS)


def compare(old_path, new_path, noise=0.05):
    """Rows whose median moved by more than the noise: the larger of `noise` and both IQRs."""
    with open(old_path) as f:
        old = {_key(r): r for r in json.load(f)["records"]}
    with open(new_path) as f:
        new = json.load(f)["records"]
    changes = []
    for r in new:
        before = old.get(_key(r))
        if not before or not before["median_s"] or not r["median_s"]:
            continue
        ratio = r["median_s"] / before["median_s"]
        spread = max(noise, before["iqr_s"] / before["median_s"], r["iqr_s"] / r["median_s"])
        if abs(ratio - 1) > spread:
            changes.append((r, ratio))
    lines = []
    for r, ratio in sorted(changes, key=lambda c: c[1]):
        verdict = "faster" if ratio < 1 else "slower"
        lines.append(f"{verdict:6}  {ratio:6.2f}x  " + " ".join(str(r[f]) for f in KEY_FIELDS))
    return lines
