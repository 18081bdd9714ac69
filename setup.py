"""Builds fusedbert's op library (fusedbert/_C*.so) against the installed torch.

CUDA sources under csrc/cuda/ are compiled only when torch was built with CUDA and a CUDA toolkit
(nvcc) is found; the CPU build needs neither. Install with `pip install --no-build-isolation .` so the
library is compiled against, and records the version of, the torch it will run with.
"""

import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def build_extension():
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("FUSEDBERT_CPU_ONLY") != "1"
    cxx = ["-O3", "-std=c++17", f'-DFUSEDBERT_TORCH_VERSION="{torch.__version__}"']
    if platform.machine() in ("x86_64", "AMD64"):
        cxx += ["-mavx2", "-mfma"]
    common = dict(
        name="fusedbert._C",
        sources=sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp"),
        py_limited_api=True,
        # Some toolchains (seen: a CUDA image's g++) link libstdc++ statically by default. The library then
        # carries its own copy of libstdc++'s locale state, and formatting a number into an error message
        # crashes the process. Name the shared libstdc++ the rest of the process uses.
        extra_link_args=["-l:libstdc++.so.6"] if platform.system() == "Linux" else [],
    )
    if not with_cuda:
        return CppExtension(extra_compile_args={"cxx": cxx}, **common)
    # sm_80 (A100) and sm_90 (H100/H200) unless the builder names its own list.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cxx.append("-DFUSEDBERT_WITH_CUDA")
    nvcc = ["-O3", "-std=c++17", "-DFUSEDBERT_WITH_CUDA", f'-DFUSEDBERT_TORCH_VERSION="{torch.__version__}"',
            "--expt-relaxed-constexpr"]
    common["sources"] += sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, libraries=["cublasLt", "cublas"], **common)


setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
