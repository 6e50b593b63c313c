"""The benchmark CLI: what it writes, not how fast anything is."""

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"op", "direction", "dtype", "shape", "params", "impl", "threads", "huge_pages", "bytes",
          "median_s", "iqr_s", "gbps", "pct_copy", "peak_extra_bytes", "ratio_vs_torch"}


def run_bench(*args):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quick_run_writes_results(tmp_path):
    stdout = run_bench("--quick", "--ops", "relu,sigmoid", "--dtypes", "float32",
                       "--sizes", "2^16", "--out", str(tmp_path))
    assert "copy bandwidth" in stdout and "relu" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["copy_gbps"] > 0
    assert {"cpu", "threads", "torch", "pyops", "git_commit"} <= set(results["machine"])
    records = results["records"]
    assert {(r["op"], r["direction"], r["impl"]) for r in records} == {
        (op, d, impl) for op in ("relu", "sigmoid") for d in ("fwd", "bwd")
        for impl in ("torch", "pyops", "memory floor")}
    for r in records:
        assert FIELDS <= set(r)
        assert r["shape"] == "2^16" and r["dtype"] == "float32"
        assert r["median_s"] > 0 and r["gbps"] > 0 and r["peak_extra_bytes"] is not None
    assert all(r["ratio_vs_torch"] == 1.0 for r in records if r["impl"] == "torch")
    # every case at one thread and at all, with torch's huge-page allocation and without
    settings = {(t, hp) for t in {1, torch.get_num_threads()} for hp in (False, True)}
    for key in {(r["op"], r["direction"], r["impl"]) for r in records}:
        assert {(r["threads"], r["huge_pages"]) for r in records
                if (r["op"], r["direction"], r["impl"]) == key} == settings
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# pyops benchmark report") and "## Summary" in report
    assert "## Thread scaling" in report
    assert "| relu | fwd |" in report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "bandwidth_relu.png").stat().st_size > 0
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_compare_reports_changes(tmp_path):
    run_bench("--quick", "--ops", "relu", "--dtypes", "float32", "--sizes", "2^16",
              "--out", str(tmp_path))
    old = json.loads((tmp_path / "results.json").read_text())
    slower = json.loads(json.dumps(old))
    # slower by more than any row's noise (its IQR), which a quick run on a busy machine can
    # make large: every row must be reported
    factor = 2 + 2 * max(r["iqr_s"] / r["median_s"] for r in old["records"])
    for r in slower["records"]:
        r["median_s"] *= factor
        r["iqr_s"] *= factor
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(slower))
    out = run_bench("--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"))
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(old["records"]) and all(line.startswith("slower") for line in lines)
    assert "no row moved" in run_bench("--compare", str(tmp_path / "old.json"), str(tmp_path / "old.json"))


def test_unknown_op_is_rejected():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--ops", "nope"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown ops" in proc.stderr


def test_timing_runs_at_the_thread_count_set():
    """Timing keeps the thread count set (torch.utils.benchmark.Timer, for one, runs on one
    thread unless told otherwise)."""
    from benchmarks import harness

    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        harness.time_peers({"f": lambda: seen.append(torch.get_num_threads())}, "cpu", 0.01)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {3}


def test_peers_are_timed_in_turns():
    """A disturbance of the machine must fall on every implementation of a case, not on whichever
    ran then: their calls alternate block by block, and one that fails leaves the others timed."""
    from benchmarks import harness

    calls = []
    failing = iter(range(3))
    timings = harness.time_peers({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                  "bad": lambda: next(failing)}, "cpu", 0.02)
    assert isinstance(timings["bad"], StopIteration)
    runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert runs[:2] == ["a", "b"] and len(runs) >= 6  # warm-up, then at least 3 rounds each
    for name in "ab":
        median, iqr = timings[name]
        assert median > 0 and iqr >= 0


def test_a_missing_peer_is_a_footnote():
    from benchmarks import report

    def record(impl, missing=None):
        return {"op": "cross_entropy", "direction": "fwd", "dtype": "float32", "shape": "32x1000",
                "params": "", "impl": impl, "threads": 2, "huge_pages": False, "bytes": 1,
                "median_s": None if missing else 1e-3, "iqr_s": 0.0, "gbps": 1.0, "pct_copy": 1.0,
                "peak_extra_bytes": 0, "ratio_vs_torch": 1.0, "missing": missing}
    reason = "Liger Kernel: ImportError: " + "x" * 200
    records = [record("torch"), record("liger", reason), record("liger2", reason)]
    table = report.text_table(records).splitlines()
    assert "liger [1]" in table[3] and "liger2 [1]" in table[4]
    assert table[-1] == f"[1] not run: {reason}"
    assert max(len(line) for line in table[:-1]) < 150  # the reason does not widen a column
    markdown = report.markdown_report({"machine": {}, "copy_gbps": 1.0, "records": records})
    assert f"[1] not run: {reason}" in markdown


def test_a_floor_is_not_the_fastest_implementation():
    from benchmarks import report

    def record(impl, seconds):
        return {"op": "relu", "direction": "fwd", "dtype": "float32", "shape": "2^24",
                "params": "", "impl": impl, "threads": 1, "huge_pages": False, "bytes": 1,
                "median_s": seconds, "iqr_s": 0.0, "gbps": 1.0, "pct_copy": 1.0,
                "peak_extra_bytes": 0, "ratio_vs_torch": 1.0}
    rows = report.table_rows([record("torch", 2e-3), record("pyops", 3e-3),
                              record("memory floor", 1e-3)])
    assert [row[5] for row in rows] == ["torch *", "pyops", "memory floor"]


def test_distributed_case_reports_bytes_sent(tmp_path):
    run_bench("--quick", "--ops", "vocab_parallel_cross_entropy", "--dtypes", "float32",
              "--huge-pages", "off", "--out", str(tmp_path), "--no-plots")
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert [r["impl"] for r in records] == ["torch", "pyops", "all-gather logits"]
    for r in records:
        assert FIELDS <= set(r) and r["median_s"] > 0 and r["sent_bytes"] > 0
    sent = {r["impl"]: r["sent_bytes"] for r in records}
    # pyops: a lse and a target logit per position (and a row of slice numbers); the logits
    # gathered: a rank's whole slice
    assert sent["pyops"] == (64 + 1) * 2 * 4 and sent["all-gather logits"] == 64 * 500 * 4
