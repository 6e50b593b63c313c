"""Turning records into a stdout table, report.md, plots, and comparisons between runs."""

import collections
import json
import math

KEY_FIELDS = ("op", "direction", "dtype", "shape", "params", "threads", "huge_pages", "impl")
CASE_FIELDS = KEY_FIELDS[:-1]
MEASURED_FIELDS = ("median_s", "iqr_s", "gbps", "pct_copy", "peak_extra_bytes", "ratio_vs_torch")


def new_record(**fields):
    """A record of the given fields, its measurements not yet taken."""
    return fields | dict.fromkeys(MEASURED_FIELDS)


def set_ratios(case_records):
    """Each record's time over the first's (torch's) in the same case and setting."""
    base = case_records[0]["median_s"]
    for r in case_records:
        if base and r["median_s"]:
            r["ratio_vs_torch"] = r["median_s"] / base
    return case_records


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
    """Records grouped by case and setting (thread count, huge pages), in the order measured."""
    cases = collections.OrderedDict()
    for r in records:
        cases.setdefault(tuple(r.get(f) for f in CASE_FIELDS), []).append(r)
    return cases


def setting(threads, huge_pages):
    """A short name of a measurement setting, e.g. '2 thr' or '1 thr, huge pages'."""
    if threads is None:  # a run from before settings were recorded
        return "default"
    return f"{threads} thr" + (", huge pages" if huge_pages else "")


def _settings(records):
    return list(dict.fromkeys((r.get("threads"), r.get("huge_pages")) for r in records))


HEADER = ["op", "dir", "dtype", "shape", "setting", "impl", "median", "GB/s", "% copy",
          "peak extra", "vs torch"]


def table_rows(records, notes=None):
    """One row per implementation; the fastest of each case carries a '*' (floors, the bound an
    implementation is measured against, do not compete). Why an implementation could not run is a
    numbered footnote appended to `notes` (the same reason, the same number), not a wider column."""
    notes = [] if notes is None else notes
    rows = []
    for key, group in _rows_by_case(records).items():
        op, direction, dtype, shape, params, threads, huge = key
        timed = [r for r in group if r["median_s"] is not None and not r["impl"].endswith("floor")]
        best = min(timed, key=lambda r: r["median_s"]) if timed else None
        for r in group:
            name = r["impl"] + (" *" if r is best and len(timed) > 1 else "")
            if r.get("sent_bytes") is not None:  # a distributed case: the bytes a rank sends
                name += f" ({_fmt_bytes(r['sent_bytes'])} sent)"
            if r.get("missing"):
                if r["missing"] not in notes:
                    notes.append(r["missing"])
                name += f" [{notes.index(r['missing']) + 1}]"
            rows.append([
                op, direction, dtype, shape + (f" {params}" if params else ""),
                setting(threads, huge), name,
                _fmt_time(r["median_s"]),
                "-" if r["gbps"] is None else f"{r['gbps']:.1f}",
                "-" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%",
                _fmt_bytes(r["peak_extra_bytes"]),
                "-" if r["ratio_vs_torch"] is None else f"{r['ratio_vs_torch']:.2f}",
            ])
    return rows


def _footnotes(notes):
    return [f"[{i}] not run: {note}" for i, note in enumerate(notes, 1)]


def text_table(records):
    notes = []
    rows = [HEADER] + table_rows(records, notes)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + _footnotes(notes))


def markdown_report(results):
    machine = results["machine"]
    out = ["# pyops benchmark report", ""]
    out.append("Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    out.append(f"Copy bandwidth measured in this run: {results['copy_gbps']:.1f} GB/s")
    out.append("")
    out.append("Times are medians; `vs torch` is time / torch eager's time in the same run "
               "(below 1 is faster); `*` marks the fastest implementation of a row.")
    out += ["", "## Summary", "",
            "Time ratio, geometric mean over the shapes and dtypes measured (number of rows in "
            "brackets); below 1 means pyops is faster. Each peer is compared in the same setting: "
            "thread count, and torch's huge-page allocation (THP_MEM_ALLOC_ENABLE=1) on or off.",
            "", summary_markdown(results["records"])]
    if results.get("device", "cpu") == "cpu":
        out += ["", "## Thread scaling", "",
                "Time at N threads over time at one thread, geometric mean over shapes and "
                "dtypes; 1/N would be perfect.", "", scaling_markdown(results["records"])]
    by_op = collections.OrderedDict()
    for r in results["records"]:
        by_op.setdefault(r["op"], []).append(r)
    for op, records in by_op.items():
        out += ["", f"## {op}", "", "| " + " | ".join(HEADER) + " |",
                "|" + "---|" * len(HEADER)]
        notes = []
        out += ["| " + " | ".join(row) + " |" for row in table_rows(records, notes)]
        if notes:
            out += [""] + [f"{note}  " for note in _footnotes(notes)]
    return "\n".join(out) + "\n"


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def summary(records, impl="pyops"):
    """Geometric mean of impl's time ratio against torch, per op, direction and setting."""
    groups = collections.OrderedDict()
    for r in records:
        if r["impl"] == impl and r["ratio_vs_torch"]:
            key = (r["op"], r["direction"], r.get("threads"), r.get("huge_pages"))
            groups.setdefault(key, []).append(r["ratio_vs_torch"])
    return [(*key, _geomean(v), len(v)) for key, v in groups.items()]


def summary_markdown(records):
    """Per op and direction: pyops' time over each peer's in the same setting, geometric mean over
    shapes and dtypes; a column per peer and setting."""
    peers = [p for p in dict.fromkeys(r["impl"] for r in records) if not p.startswith("pyops")]
    columns = [(p, st) for p in peers for st in _settings(records)]
    ratios = collections.OrderedDict()
    for (op, direction, _, _, _, threads, huge), group in _rows_by_case(records).items():
        times = {r["impl"]: r["median_s"] for r in group if r["median_s"]}
        if "pyops" not in times:
            continue
        row = ratios.setdefault((op, direction), {c: [] for c in columns})
        for p in peers:
            if p in times:
                row[(p, (threads, huge))].append(times["pyops"] / times[p])
    header = " | ".join(f"pyops / {p} ({setting(*st)})" for p, st in columns)
    lines = [f"| op | dir | {header} |", "|---|---|" + "---|" * len(columns)]
    for (op, direction), row in ratios.items():
        cells = [f"{_geomean(v):.2f} ({len(v)})" if v else "-" for v in row.values()]
        lines.append(f"| {op} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling(records):
    """{(impl, op, direction, huge_pages, threads): geometric mean over shapes and dtypes of the
    time at `threads` over the time at one thread}, for thread counts above one."""
    one = {}
    for r in records:
        if r.get("threads") == 1 and r["median_s"]:
            one[tuple(r.get(f) for f in KEY_FIELDS if f != "threads")] = r["median_s"]
    groups = collections.OrderedDict()
    for r in records:
        base = one.get(tuple(r.get(f) for f in KEY_FIELDS if f != "threads"))
        if r.get("threads", 1) > 1 and r["median_s"] and base:
            key = (r["impl"], r["op"], r["direction"], r.get("huge_pages"), r["threads"])
            groups.setdefault(key, []).append(r["median_s"] / base)
    return {key: _geomean(v) for key, v in groups.items()}


def scaling_markdown(records):
    """Per op and direction, each implementation's time at N threads over its time at one, for
    every thread count N > 1 and huge-page setting measured."""
    found = scaling(records)
    if not found:
        return "(one thread count measured: no scaling to show)"
    impls = list(dict.fromkeys(k[0] for k in found))
    settings = list(dict.fromkeys((k[4], k[3]) for k in found))
    columns = [(i, st) for st in settings for i in impls]
    lines = ["| op | dir | " + " | ".join(f"{i} ({setting(*st)})" for i, st in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for op, direction in dict.fromkeys((k[1], k[2]) for k in found):
        cells = [found.get((i, op, direction, huge, threads)) for i, (threads, huge) in columns]
        lines.append(f"| {op} | {direction} | "
                     + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def write_plots(results, out_dir):
    """Bandwidth against bytes moved per op (a panel per dtype and setting, a marker per
    implementation, each point labelled with its shape: shapes are not a series to join) and
    speed-up bars (a bar per setting).

    Returns the files written, or [] when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    settings = _settings(results["records"])
    by_op = collections.OrderedDict()
    for r in results["records"]:
        if r["gbps"] is not None:
            by_op.setdefault(r["op"], []).append(r)
    for op, records in by_op.items():
        dtypes = list(dict.fromkeys(r["dtype"] for r in records))
        panels = [(dt, st) for st in settings for dt in dtypes]
        fig, axes = plt.subplots(len(settings), len(dtypes), sharey=True, squeeze=False,
                                 figsize=(4.5 * len(dtypes) + 1, 3.6 * len(settings) + 0.6))
        markers = {}
        for ax, (dtype, st) in zip(axes.flat, panels):
            labelled = set()
            for r in records:
                if r["dtype"] != dtype or (r.get("threads"), r.get("huge_pages")) != st:
                    continue
                key = f"{r['impl']} {r['direction']}"
                marker = markers.setdefault(key, "os^vD<>ph*"[len(markers) % 10])
                ax.plot(r["bytes"], r["gbps"], marker, color=f"C{list(markers).index(key)}",
                        label=key if key not in ax.get_legend_handles_labels()[1] else None)
                if (r["shape"], r["bytes"]) not in labelled:  # once per point of a shape
                    labelled.add((r["shape"], r["bytes"]))
                    ax.annotate(r["shape"], (r["bytes"], r["gbps"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
            ax.axhline(results["copy_gbps"], color="gray", linestyle="--", label="copy")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("bytes moved (minimum)")
            ax.set_title(f"{dtype}, {setting(*st)}", fontsize=9)
            ax.legend(fontsize=6)
        for row in axes:
            row[0].set_ylabel("GB/s")
        fig.suptitle(f"{op}: bandwidth")
        path = out_dir / f"bandwidth_{op}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    rows = summary(results["records"])
    if rows:
        labels = list(dict.fromkeys(f"{op} {d}" for op, d, *_ in rows))
        fig, ax = plt.subplots(figsize=(7, 0.15 * len(labels) * len(settings) + 1.5))
        height = 0.8 / len(settings)
        for i, st in enumerate(settings):
            found = {f"{op} {d}": ratio for op, d, th, hp, ratio, _ in rows if (th, hp) == st}
            ys = [j + i * height for j, label in enumerate(labels) if label in found]
            speedups = [1 / found[label] for label in labels if label in found]
            ax.barh(ys, [x - 1 for x in speedups], left=1, height=height, label=setting(*st))
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels)
        ax.invert_yaxis()
        ax.axvline(1.0, color="gray", linestyle="--")
        ax.set_xscale("log", base=2)  # 2x faster and 2x slower equally far from 1
        ax.set_xlabel("speed-up over torch eager in the same setting\n"
                      "(geometric mean over shapes and dtypes)")
        ax.legend(fontsize=7)
        path = out_dir / "speedup.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")  # the axis label inside the image
        plt.close(fig)
        written.append(path)
    return written


def _key(r):
    return tuple(r.get(f) for f in KEY_FIELDS)


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
        lines.append(f"{verdict:6}  {ratio:6.2f}x  " + " ".join(str(r.get(f)) for f in KEY_FIELDS))
    return lines
