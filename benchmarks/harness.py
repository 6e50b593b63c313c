"""Measurement: median time, memory from the OS or the CUDA allocator, copy bandwidth."""

import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import subprocess
import time
import timeit

import torch


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_peers(fns, device, min_run_time, max_rounds=15):
    """Each implementation's median time per call and interquartile range, in seconds, or the
    exception it raised (then it is left out of the rest), after a warm-up call.

    On CPU the implementations take turns: one block of calls each per round, in reversed order
    every other round, so that a disturbance of the machine (another tenant, a clock change)
    falls on all of them alike rather than on whichever ran then. Each gets about min_run_time;
    the statistics are over its blocks. CUDA times each one's calls with events on the device."""
    results, once = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            sync(device)
            if device == "cuda":
                results[name] = _time_cuda(fn, min_run_time)
            else:
                once[name] = _seconds_per_call(fn)
        except Exception as err:
            results[name] = err
    if device == "cuda":
        return results
    live = {name: fns[name] for name in once}
    rounds = int(min(max(min_run_time / max(once.values(), default=1), 3), max_rounds))
    calls = {name: max(1, round(min_run_time / rounds / t)) for name, t in once.items()}
    blocks = {name: [] for name in live}
    for r in range(rounds):
        for name in list(live)[::-1 if r % 2 else 1]:
            try:
                blocks[name].append(timeit.Timer(live[name]).timeit(calls[name]) / calls[name])
            except Exception as err:
                results[name] = err
                del live[name]
    for name in live:
        q1, median, q3 = statistics.quantiles(blocks[name], n=4, method="inclusive")
        results[name] = (median, q3 - q1)
    return {name: results[name] for name in fns}


def _seconds_per_call(fn, at_least=1e-3):
    """A first estimate: calls in growing numbers until they take at_least seconds."""
    calls = 1
    while True:
        seconds = timeit.Timer(fn).timeit(calls)
        if seconds >= at_least:
            return seconds / calls
        calls *= 4


def _time_cuda(fn, min_run_time, max_calls=2000):
    """CUDA events around every call: device time, no host clock; as many calls as fill
    min_run_time (at least 10)."""
    def timed_calls(calls):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(calls)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return sorted(start.elapsed_time(end) / 1e3 for start, end in events)

    once = timed_calls(3)[1]
    times = timed_calls(int(min(max(min_run_time / max(once, 1e-7), 10), max_calls)))
    n = len(times)
    return times[n // 2], times[(3 * n) // 4] - times[n // 4]


def _status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _can_reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap():
    """Hands freed heap pages back to the OS, so the next allocations show in the RSS."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn, device):
    """Peak memory one call of fn takes beyond what was in use before it (outputs included).

    CUDA: the caching allocator's peak. CPU: the OS's peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) over the resident size before the call, with freed heap pages handed
    back first so that reused malloc memory is counted too. None where neither is available.
    """
    gc.collect()
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak
    _release_free_heap()
    if not _can_reset_peak_rss():
        return None
    before = _status_kb("VmRSS")
    result = fn()
    peak = (_status_kb("VmHWM") - before) * 1024
    del result
    return max(peak, 0)


def copy_bandwidth(device, nbytes=1 << 28, min_run_time=0.3):
    """Bytes per second of dst.copy_(src) (read + write) into an existing buffer."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    median, _ = time_peers({"copy": lambda: dst.copy_(src)}, device, min_run_time)["copy"]
    return 2 * nbytes / median


def cache_bytes(device):
    """The last-level cache that repeated calls could be served from."""
    if device == "cuda":
        return torch.cuda.get_device_properties().L2_cache_size
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 32 << 20


def input_copies(case_bytes, cache, limit=64):
    """How many input sets to rotate through so that together they exceed twice the cache."""
    return max(1, min(limit, -(-2 * cache // max(case_bytes, 1))))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info(device):
    import pyops

    info = {
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),  # all; each record says what it ran at
        "torch": torch.__version__,
        "pyops": pyops.__version__,
        "pyops_cpu_isa": pyops.build_info()["cpu_isa"],
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info
