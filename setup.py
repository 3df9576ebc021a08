"""Builds dge_explain._C: the C++ CPU kernels always, the CUDA kernels too when a
CUDA toolkit is found (or demanded).

Switches (environment):
  DGE_EXPLAIN_CUDA=auto|0|1  auto (default): build CUDA kernels when a toolkit is
                             found and torch is a CUDA build; 0: never; 1: always,
                             failing if no toolkit is found (no GPU is needed).
  CUDA_HOME                  the toolkit; default /usr/local/cuda when it holds nvcc.
  DGE_EXPLAIN_BUILD_EXT=0    install the package without (re)building the extension
                             (the Makefile builds it in place with build_ext).
  TORCH_CUDA_ARCH_LIST       GPU architectures; default "8.0;9.0+PTX" when no GPU
                             is visible (A100, H100, and PTX for newer cards).

A package built with the extension requires the torch release it compiled against
(docs/install.md: install requirements.lock, then `pip install --no-build-isolation .`).
"""
import configparser
import glob
import os
import re
import shutil

from setuptools import setup


def _find_cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    # A wrapper script on PATH (e.g. /usr/local/bin/nvcc) would make torch guess
    # /usr/local as the toolkit root; the canonical location is more reliable.
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _want_cuda(torch_module, cuda_home):
    mode = os.environ.get("DGE_EXPLAIN_CUDA", "auto").lower()
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"DGE_EXPLAIN_CUDA must be auto, 0 or 1, got {mode!r}")
    available = cuda_home is not None and torch_module.version.cuda is not None
    if mode == "1" and not available:
        raise SystemExit(
            "DGE_EXPLAIN_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME) "
            f"or torch {torch_module.__version__} is not a CUDA build")
    return mode == "1" or (mode == "auto" and available)


def _requirements(torch_version):
    """setup.cfg's install_requires with torch pinned to the release the extension
    compiles against: dge_explain._C links against torch's C++ ABI, which changes
    between releases, so a wheel built against one torch must not be installed beside
    another (an isolated build's torch could otherwise differ from the one it runs with)."""
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup.cfg"))
    requirements = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    torch_lines = [line for line in requirements if re.match(r"torch(?![\w.-])", line)]
    if len(torch_lines) != 1:
        raise SystemExit(f"setup.cfg: [options] install_requires must name torch once, found {torch_lines}")
    release = torch_version.split("+")[0]   # 2.14.1+cu130 -> 2.14.1: CPU and CUDA builds alike
    return [f"torch=={release}" if line in torch_lines else line for line in requirements]


def _extensions():
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = _want_cuda(torch, cuda_home)
    sources = sorted(glob.glob("ext/*.cpp") + glob.glob("ext/cpu/*.cpp"))
    # The headers and CUDA sources too: setuptools packs an extension's sources and
    # depends into the sdist, which must build either variant (and a header edit
    # must rebuild the extension).
    depends = sorted(set(glob.glob("ext/*.h") + glob.glob("ext/cpu/*.h") + glob.glob("ext/cuda/*")) - set(sources))
    macros = [("DGE_TORCH_VERSION", torch.__version__)]
    # No errno or FP-trap semantics: lets the compiler vectorise exp and reductions.
    # -fopenmp: at::parallel_for is a header template; without it the kernels
    # would run on one thread (the OpenMP runtime is the libgomp torch loads).
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        sources += sorted(glob.glob("ext/cuda/*.cu"))
        depends = [name for name in depends if name not in sources]
        macros += [("DGE_WITH_CUDA", None), ("DGE_CUDA_VERSION", torch.version.cuda)]
        extension = CUDAExtension(
            "dge_explain._C", sources, depends=depends, define_macros=macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]}, extra_link_args=link_flags)
    else:
        extension = CppExtension("dge_explain._C", sources, depends=depends, define_macros=macros,
                                 extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return dict(ext_modules=[extension], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
                install_requires=_requirements(torch.__version__))


setup(**({} if os.environ.get("DGE_EXPLAIN_BUILD_EXT") == "0" else _extensions()))
