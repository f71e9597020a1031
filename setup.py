"""Only the extension list; metadata lives in pyproject.toml.

IOPF_DEBUG=1   bounds checks on, -O0 -g (for gdb and clear tracebacks).
IOPF_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (run Python
                 with LD_PRELOAD of libasan: .ci/sanitize does it all, and
                 docs/reliability.md explains it).
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("IOPF_DEBUG") == "1"
sanitize = os.environ.get("IOPF_SANITIZE") == "1"

directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "cdivision": True,
    "embedsignature": True,
}
cflags = ["-O0", "-g"] if debug else ["-O3"]
ldflags = []
if sanitize:
    cflags += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]

extensions = [
    Extension(
        "iopf_core.grouper",
        ["src/iopf_core/grouper.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    # The prq_report text scanner (iopf.trace): no numpy C API needed.
    Extension(
        "iopf_core.textscan",
        ["src/iopf_core/textscan.pyx"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            annotate=os.environ.get("IOPF_ANNOTATE") == "1"))
