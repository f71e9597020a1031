"""Only the extension list; metadata lives in pyproject.toml.

IOPF_DEBUG=1   bounds checks on, -O0 -g (for gdb and clear tracebacks).
IOPF_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (run Python
                 with LD_PRELOAD of libasan: .ci/sanitize does it all, and
                 docs/reliability.md explains it).
IOPF_NO_EXTENSIONS=1  build nothing: a pure-Python install that runs every
                 strategy on the reference twin (about 100x slower).

Without a working C compiler the build does not fail: it warns and installs
the pure-Python package, as IOPF_NO_EXTENSIONS=1 does (the compiled core is
an accelerator, not a requirement). Debug and sanitizer builds fail loudly.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

debug = os.environ.get("IOPF_DEBUG") == "1"
sanitize = os.environ.get("IOPF_SANITIZE") == "1"
no_extensions = os.environ.get("IOPF_NO_EXTENSIONS") == "1"
# A build someone asked for by name must not quietly turn into the twin.
optional = not (debug or sanitize)

FALLBACK = ("the compiled core of iopf could not be built ({why}); installing the "
            "pure-Python package, which runs every strategy on the reference twin "
            "(about 100x slower). Install a C compiler and reinstall for the fast core.")


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python when the compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:   # no compiler at all (DistutilsPlatformError, ...)
            if not optional:
                raise
            self._warn(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:   # CCompilerError, CompileError, LinkError, ...
            if not optional:
                raise
            self._warn(e)

    @staticmethod
    def _warn(e: BaseException) -> None:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        print("*" * 72 + "\nWARNING: " + FALLBACK.format(why=why) + "\n" + "*" * 72,
              file=sys.stderr)


def extensions() -> list:
    if no_extensions:
        return []
    import numpy
    from Cython.Build import cythonize

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
    exts = [
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
    return cythonize(exts, compiler_directives=directives,
                     annotate=os.environ.get("IOPF_ANNOTATE") == "1")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
