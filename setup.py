"""Builds fusedbert's op library (fusedbert/_C*.so) against the installed torch.

CUDA sources under csrc/cuda/ are compiled only when torch was built with CUDA and a CUDA toolkit
(nvcc) is found; the CPU build needs neither. Install with `pip install --no-build-isolation .` so the
library is compiled against, and records the version of, the torch it will run with.
"""

import glob
import importlib.util
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cutlass_include() -> str | None:
    """CUTLASS's headers: $CUTLASS_PATH/include, else those the `nvidia-cutlass` pip package ships."""
    if os.environ.get("CUTLASS_PATH"):
        include = os.path.join(os.environ["CUTLASS_PATH"], "include")
        if not os.path.isfile(os.path.join(include, "cutlass", "cutlass.h")):
            raise SystemExit(f"setup.py: CUTLASS_PATH is set but {include}/cutlass/cutlass.h does not exist")
        return include
    spec = importlib.util.find_spec("cutlass_library")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    include = os.path.join(next(iter(spec.submodule_search_locations)), "source", "include")
    return include if os.path.isfile(os.path.join(include, "cutlass", "cutlass.h")) else None


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
    # sm_80 (A100) and sm_90a (H100/H200; the "a" admits Hopper's wgmma and TMA, which the CUTLASS kernels
    # need) unless the builder names its own list.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    cxx.append("-DFUSEDBERT_WITH_CUDA")
    # NDEBUG: CUTLASS's device asserts are calls that split the wgmma pipeline (ptxas warning C7510).
    nvcc = ["-O3", "-std=c++17", "-DNDEBUG", "-DFUSEDBERT_WITH_CUDA",
            f'-DFUSEDBERT_TORCH_VERSION="{torch.__version__}"', "--expt-relaxed-constexpr"]
    include_dirs = []
    cutlass = cutlass_include()
    if cutlass and "9.0a" in os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";"):
        # The Hopper FFN kernel with bias + erf-GELU in its epilogue (csrc/cuda/sm90_gemm.h); without
        # CUTLASS the build still works, with that GELU as a separate pass.
        cxx.append("-DFUSEDBERT_WITH_SM90_GEMM")
        nvcc.append("-DFUSEDBERT_WITH_SM90_GEMM")
        include_dirs.append(cutlass)
    common["sources"] += sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, include_dirs=include_dirs,
                         libraries=["cublasLt", "cublas"], **common)


setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
