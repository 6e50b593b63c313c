"""Builds pyops' compiled parts with torch.utils.cpp_extension.

- pyops._C: the operator schemas (csrc/ops.cpp), the C++ autograd (csrc/autograd.cpp), the
  build facts and, in a CUDA build, the CUDA kernels (csrc/cuda/*.cu). A CUDA build happens
  when torch has CUDA and nvcc is found; PYOPS_CUDA=0/1 forces either way. Architectures:
  TORCH_CUDA_ARCH_LIST, default "8.0;9.0+PTX".
- pyops._cpu_<isa>: every CPU kernel (csrc/cpu/*.cpp), compiled once per x86 instruction set.
  pyops loads the best one the running CPU supports, so the wheel never assumes the build
  machine's CPU and never dies of an illegal instruction on an older one.
"""

import glob
import os
import platform

from setuptools import setup

try:
    import torch
except ImportError:
    # pip's build isolation: a fresh environment would hold some other torch, or none. The
    # compiled parts must match the torch they run with, so the build uses the installed one.
    raise SystemExit("pyops compiles against the torch it will run with: install torch first, "
                     "then build without isolation: pip install --no-build-isolation .")
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
COMMON_FLAGS = ["-O3"]  # the C++ standard is torch's choice (C++17 or C++20)
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

# Flags per instruction set, as ATen compiles its own per-ISA kernels.
X86_ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
        "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
    ],
}


# PYOPS_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize).
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer", "-g"]


def cpu_isa_flags():
    """The instruction sets to build CPU kernels for; PYOPS_CPU_ISAS=avx2,... narrows them."""
    isas = X86_ISA_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else {
        "default": X86_ISA_FLAGS["default"]}
    wanted = [i for i in os.environ.get("PYOPS_CPU_ISAS", "").split(",") if i]
    unknown = set(wanted) - set(isas)
    if unknown:
        raise SystemExit(f"PYOPS_CPU_ISAS: unknown {sorted(unknown)}; known {sorted(isas)}")
    return {isa: flags for isa, flags in isas.items() if not wanted or isa in wanted}


def abi_flags():
    """torch's C++ string ABI, stated rather than left to the compiler's default: std::string
    crosses into libtorch (error messages), so both sides must lay it out alike."""
    return [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


def openmp_flags():
    """ATen's parallel_for is header code: serial unless the including library is compiled with
    OpenMP, as torch is. GCC's runtime has the soname of the libgomp torch loads, so both share
    one runtime, one thread pool and torch.set_num_threads."""
    if not torch.backends.openmp.is_available():
        return []
    return ["-fopenmp"]


def common_flags():
    if os.environ.get("PYOPS_SANITIZE") == "1":
        return ["-O1"] + SANITIZE_FLAGS + abi_flags(), SANITIZE_FLAGS
    return COMMON_FLAGS + abi_flags(), []


def want_cuda():
    found = torch.version.cuda is not None and CUDA_HOME is not None
    forced = os.environ.get("PYOPS_CUDA")
    if forced == "0":
        return False
    if forced == "1" and not found:
        raise SystemExit("PYOPS_CUDA=1, but torch has no CUDA or nvcc was not found "
                         f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
    return found


def wheel_cuda_includes():
    """Headers of the CUDA libraries torch's wheel installs (nvidia/*/include: cusparse, cublas,
    ...), which ATen's CUDA headers include and a minimal toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for base in nvidia.__path__
                  for d in glob.glob(os.path.join(base, "*", "include")))


def core_extension(compile_flags, link_flags):
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/linear_cross_entropy.cpp",
               "csrc/python_module.cpp"]
    if not want_cuda():
        return CppExtension("pyops._C", sources, extra_compile_args={"cxx": compile_flags},
                            extra_link_args=link_flags)
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc = ["-O3"] + abi_flags()
    if os.environ.get("PYOPS_PTXAS_VERBOSE") == "1":  # register and shared-memory use per kernel
        nvcc.append("-Xptxas=-v")
    return CUDAExtension(
        "pyops._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        # "/" separates the architectures: nvcc would split a -D value at commas.
        define_macros=[("WITH_CUDA", None),
                       ("PYOPS_CUDA_ARCHS", archs.replace(";", "/").replace(" ", "/"))],
        include_dirs=wheel_cuda_includes(),
        extra_compile_args={"cxx": compile_flags, "nvcc": nvcc},
        extra_link_args=link_flags,
    )


def record_torch(with_cuda):
    """pyops/_built_for.py: the torch this build is for, checked at import before any compiled
    part loads (pyops/_loader.py)."""
    with open(os.path.join(ROOT, "pyops", "_built_for.py"), "w") as f:
        f.write("# Written by setup.py: the torch the compiled parts were built for.\n"
                f"TORCH_VERSION = {torch.__version__!r}\n"
                f"TORCH_CUDA = {torch.version.cuda if with_cuda else None!r}\n")


def extensions():
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    compile_flags, link_flags = common_flags()
    record_torch(want_cuda())
    exts = [core_extension(compile_flags, link_flags)]
    for isa, flags in cpu_isa_flags().items():
        exts.append(
            CppExtension(
                f"pyops._cpu_{isa}",
                cpu_sources,
                extra_compile_args={"cxx": compile_flags + openmp_flags() + flags},
                extra_link_args=link_flags + openmp_flags(),
            )
        )
    return exts


class BuildPerExtensionDir(BuildExtension):
    """The ISA libraries share sources; separate object folders keep their objects apart."""

    def build_extension(self, ext):
        shared_temp = self.build_temp
        self.build_temp = os.path.join(shared_temp, ext.name)
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = shared_temp


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildPerExtensionDir},
)
