"""Builds pyops' compiled parts with torch.utils.cpp_extension.

- pyops._C: the operator schemas (csrc/ops.cpp) and the build facts.
- pyops._cpu_<isa>: every CPU kernel (csrc/cpu/*.cpp), compiled once per x86 instruction set.
  pyops loads the best one the running CPU supports, so the wheel never assumes the build
  machine's CPU and never dies of an illegal instruction on an older one.
"""

import glob
import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
COMMON_FLAGS = ["-O3", "-std=c++17"]

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


def common_flags():
    if os.environ.get("PYOPS_SANITIZE") == "1":
        return ["-O1", "-std=c++17"] + SANITIZE_FLAGS, SANITIZE_FLAGS
    return COMMON_FLAGS, []


def extensions():
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    compile_flags, link_flags = common_flags()
    exts = [
        CppExtension(
            "pyops._C",
            ["csrc/ops.cpp", "csrc/python_module.cpp"],
            extra_compile_args={"cxx": compile_flags},
            extra_link_args=link_flags,
        )
    ]
    for isa, flags in cpu_isa_flags().items():
        exts.append(
            CppExtension(
                f"pyops._cpu_{isa}",
                cpu_sources,
                extra_compile_args={"cxx": compile_flags + flags},
                extra_link_args=link_flags,
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
