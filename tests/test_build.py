"""The build: build_info, per-ISA CPU libraries, the CMake op library."""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import pyops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_SNIPPET = """
import torch, pyops, pyops.functional as F
x = torch.linspace(-20, 20, 1001, dtype=torch.float32).reshape(7, 143)
print(pyops.build_info()["cpu_isa"])
torch.save([f(x) for f in FNS], {path!r})
"""
# Every kernel path: elementwise, softmax rows (dim 1) and column tiles (dim 0), half types.
FNS_SOURCE = """[
    lambda x: F.sigmoid(x), lambda x: F.tanh(x), lambda x: F.relu(x),
    lambda x: F.sigmoid(x.bfloat16()), lambda x: F.softmax(x, 1), lambda x: F.log_softmax(x, 0),
    lambda x: F.softmax(x.bfloat16(), 0), lambda x: F.log_softmax(x.half(), 1),
]"""


def test_build_info():
    info = pyops.build_info()
    assert info["pyops_version"] == pyops.__version__
    assert info["torch_version_built"] == torch.__version__.split("+")[0]
    assert info["cpu_isa"] in ("avx512", "avx2", "default")
    assert isinstance(info["cuda"], bool)
    assert info["cuda"] == bool(info["cuda_archs"])
    assert info["num_threads"] == torch.get_num_threads()
    assert isinstance(info["cpu_parallel"], bool)


def test_build_without_the_installed_torch_stops_with_the_reason():
    """pip's build isolation would compile against another torch, or none: setup.py must not."""
    tomllib = pytest.importorskip("tomllib")

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    assert not [r for r in requires if r.split("=")[0].split(">")[0].strip() == "torch"]
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "pip install --no-build-isolation" in proc.stderr


def _built_isas():
    return [isa for isa in ("avx512", "avx2", "default") if importlib.util.find_spec(f"pyops._cpu_{isa}")]


def test_isa_follows_torch_capability():
    """The library for torch's capability when built; else the most capable built one below it
    (the sanitizer and CUDA builds make fewer), unless PYOPS_CPU_ISA forces one."""
    if os.environ.get("PYOPS_CPU_ISA"):
        pytest.skip("PYOPS_CPU_ISA forces the library")
    order = ["avx512", "avx2", "default"]
    supported = torch.backends.cpu.get_cpu_capability().lower()
    usable = order[order.index(supported):] if supported in order else ["default"]
    expected = next(isa for isa in usable if isa in _built_isas())
    assert pyops.build_info()["cpu_isa"] == expected


def test_default_library_has_no_vector_extensions():
    """The baseline library must run on any x86-64: no AVX (ymm/zmm) instructions in it."""
    if not shutil.which("objdump") or "default" not in _built_isas():
        pytest.skip("objdump or the baseline library is absent")
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 only")
    path = importlib.util.find_spec("pyops._cpu_default").origin
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    assert "%ymm" not in asm and "%zmm" not in asm


@pytest.mark.parametrize("isa", ["avx512", "avx2", "default"])
def test_every_isa_library_gives_the_same_results(isa, tmp_path):
    if isa not in _built_isas():
        pytest.skip(f"the {isa} library was not built on this platform")
    if isa == "avx512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU cannot run AVX-512")
    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU cannot run AVX2")
    out = tmp_path / "out.pt"
    env = dict(os.environ, PYOPS_CPU_ISA=isa)
    snippet = f"FNS = {FNS_SOURCE}\n" + CHECK_SNIPPET.format(path=str(out))
    proc = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == isa
    x = torch.linspace(-20, 20, 1001, dtype=torch.float32).reshape(7, 143)
    expected = [f(x) for f in eval(FNS_SOURCE, {"F": torch.nn.functional})]
    for got, want in zip(torch.load(out), expected):
        half = want.dtype != torch.float32
        torch.testing.assert_close(got, want, rtol=1.6e-2 if half else 1e-6,
                                   atol=1e-2 if half else 1e-5)



def test_unknown_forced_isa_is_a_clear_error():
    env = dict(os.environ, PYOPS_CPU_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "import pyops"], env=env, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "PYOPS_CPU_ISA='sse9'" in proc.stderr


@pytest.fixture(scope="module")
def cmake_build():
    """The CMake build of the op library and the C++ example (kept in build/ between runs)."""
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed")
    build = os.path.join(ROOT, "build", "cmake-test")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", ROOT, "-B", build, *generator, "-DPYOPS_BUILD_EXAMPLES=ON",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                ["cmake", "--build", build, "--parallel", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build


@pytest.mark.slow
def test_cmake_library_loads_in_a_fresh_process(cmake_build):
    lib = os.path.join(cmake_build, "libpyops_ops.so")
    code = (f"import torch; torch.ops.load_library({lib!r}); "
            "print(torch.ops.pyops.sigmoid(torch.zeros(2)).tolist(), "
            "torch.ops.pyops.relu(torch.tensor([-1.0, 2.0])).tolist())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0.5, 0.5] [0.0, 2.0]"


@pytest.mark.slow
def test_cpp_example_passes_ctest(cmake_build):
    if not shutil.which("ctest"):
        pytest.skip("ctest is not installed")
    proc = subprocess.run(["ctest", "--test-dir", cmake_build, "--output-on-failure"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100% tests passed" in proc.stdout


def cuda_kernel_launches():
    """(kernel, threads expression, whether its definition has __launch_bounds__) for every
    launch in csrc/cuda: the <<<...>>> ones, and the kernels launch_clusters() launches through
    cudaLaunchKernelEx (each named by the kernel_of lambda handed to it; threads "cluster")."""
    sources = [open(path).read() for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu*"))]
    every = "\n".join(sources)
    bounded = {m.group(1) for m in re.finditer(
        r"__global__\s+void\s+__launch_bounds__\([^)]*\)\s*\)?\s*(\w+)\(", every)}
    bounded |= {m.group(1) for m in re.finditer(
        r"__global__ void __launch_bounds__\(.*?\)\n(\w+)\(", every)}
    found = []
    for source in sources:
        for m in re.finditer(r"(\w+)(?:<[^<>;]*>)?\s*<<<[^,]+,\s*([^,]+),", source):
            found.append((m.group(1), m.group(2).strip(), m.group(1) in bounded))
        for m in re.finditer(r"kernel_of = \[\]\(auto packs\) \{\s*return (\w+)<", source):
            found.append((m.group(1), "cluster", m.group(1) in bounded))
    assert every.count("cudaLaunchKernelEx(") == 1 and "launch_clusters(" in every
    assert sum(t == "cluster" for _, t, _ in found) == every.count("launch_clusters(") - 1
    return found


def test_cuda_kernels_launched_wider_than_256_threads_have_launch_bounds():
    # A kernel launched with up to 1024 threads must cap its registers at 64, or the launch
    # fails on the device ("too many resources requested for launch", seen on an H200).
    launches = cuda_kernel_launches()
    assert len(launches) >= 10
    narrow = {"kThreads"} | {str(n) for n in range(1, 257)}  # at most 256 threads
    unbounded = [(k, t) for k, t, bounded in launches if t not in narrow and not bounded]
    assert not unbounded, unbounded


def check_message_arguments():
    """The message arguments of every TORCH_CHECK-like macro in csrc, as source text."""
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True)):
        source = open(path).read()
        for match in re.finditer(r"TORCH_(?:CHECK|CHECK_INDEX|CHECK_VALUE|WARN)\(", source):
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(source[end], 0)
                end += 1
            args, current, depth, quoted = [], "", 0, False
            for ch in source[match.end():end - 1]:
                quoted ^= ch == '"'
                if not quoted:
                    depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
                if ch == "," and depth == 0 and not quoted:
                    args.append(current.strip())
                    current = ""
                else:
                    current += ch
            args.append(current.strip())
            for arg in args[1:]:
                yield os.path.relpath(path, ROOT), arg


def test_error_messages_stream_no_numbers():
    # Numbers and shapes go through num_str/shape_str: built on the GPU machine, streaming an
    # int64 or an IntArrayRef into the message crashed the process (tensor_utils.h says why).
    allowed = re.compile(r'^(".*"|op|name|kName|[a-z]\.op|(num_str|shape_str)\(.*\)|[\w.>-]+(scalar_type|device)\(\))$',
                         re.S)
    arguments = list(check_message_arguments())
    assert len(arguments) > 40
    streamed = [(path, arg) for path, arg in arguments if not allowed.match(arg)]
    assert not streamed, streamed
