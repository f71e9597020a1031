"""Opening inputs from anywhere and writing outputs safely.

An input is read once, front to back, through one buffered stream: a
regular file, standard input (``-``), a pipe, a FIFO or a character device,
optionally gzip-, bz2- or xz-compressed (told by the magic bytes), or
trace-cmd's binary ``trace.dat`` converted by ``trace-cmd report``. The
first block is read ahead (to sniff the compression and the format) and
served again to the reader, so nothing is ever reopened: a FIFO or a pipe
is read exactly once.

An output is written to a fresh temporary file made by ``tempfile.mkstemp``
(``O_EXCL``, a random name: a symlink planted in the folder is never
followed) in the target's folder, given the target's permission bits, and
renamed over the target by ``os.replace``. A failed write leaves the target
as it was and no temporary file behind; errors name the user's path.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ._common import PathLike, TraceError

#: How much the sniffer reads ahead: enough to get past an ftrace header and a
#: screenful of other events.
SNIFF_BYTES = 1 << 16

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
COMPRESSED_EXTENSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


class _Prefixed(io.RawIOBase):
    """A raw stream that serves ``head`` first, then the rest of ``inner``;
    errors of a decompressor become a ``TraceError`` naming the input."""

    def __init__(self, head: bytes, inner: IO[bytes], name: str, what: str | None,
                 also_close: IO[bytes] | None = None) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._inner = inner
        self._name = name
        self._what = what
        # What closing this closes: the decompressor and the file under it;
        # never the process's standard input.
        self._close = [x for x in (inner, also_close)
                       if x is not None and x is not sys.stdin.buffer]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        try:
            readinto = getattr(self._inner, "readinto", None)
            if readinto is not None:
                return readinto(buffer) or 0     # no copy
            data = self._inner.read(len(buffer))
        except _DECOMPRESS_ERRORS as e:
            if self._what is None:
                raise
            raise TraceError(f"corrupt {self._what} data: {e}", path=self._name) from None
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        try:
            for f in self._close:
                f.close()
        finally:
            super().close()


@dataclass
class Input:
    """An opened input: ``stream`` serves the content from its first byte."""

    name: str                 # the user's path, for messages
    stream: io.BufferedIOBase
    head: bytes               # the first bytes of the (decompressed) content
    ext: str                  # the extension that names the format ('' if none)
    compression: str | None
    size: int | None          # bytes of content, when known (regular, uncompressed)
    proc: subprocess.Popen[bytes] | None = None
    path: str | None = None   # a regular, uncompressed file (Parquet needs to seek)

    def close(self) -> None:
        self.stream.close()
        if self.proc is not None:
            self.proc.wait()

    def __enter__(self) -> Input:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_head(f: Any, n: int = SNIFF_BYTES) -> bytes:
    """Up to ``n`` bytes; fewer only at the end of the input (a pipe may
    deliver its data in small pieces)."""
    parts = []
    want = n
    while want:
        data = f.read(want)
        if not data:
            break
        parts.append(data)
        want -= len(data)
    return b"".join(parts)


def open_input(path: PathLike) -> Input:
    """Open ``path`` (``-``: standard input) for one pass of reading."""
    name = os.fspath(path)
    if name == "-":
        raw: IO[bytes] = sys.stdin.buffer
        label, size = "<stdin>", None
        ext = ""
    else:
        label = name
        try:
            raw = open(name, "rb")
        except IsADirectoryError:
            raise TraceError("is a directory, not a trace", path=name) from None
        st = os.fstat(raw.fileno())
        if stat.S_ISDIR(st.st_mode):
            raw.close()
            raise TraceError("is a directory, not a trace", path=name)
        # Pipes, FIFOs and devices report size 0: their size is unknown.
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        ext = os.path.splitext(name)[1].lower()
    try:
        head = read_head(raw)
        compression = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
        if compression is not None:
            if ext in COMPRESSED_EXTENSIONS:
                ext = os.path.splitext(os.path.splitext(name)[0])[1].lower()
            inner = _Prefixed(head, raw, label, None)
            opener: Callable[..., IO[bytes]] = {
                "gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[compression]
            decomp = opener(fileobj=io.BufferedReader(inner)) if compression == "gzip" \
                else opener(io.BufferedReader(inner))
            try:
                head = read_head(decomp)
            except _DECOMPRESS_ERRORS as e:
                raise TraceError(f"corrupt {compression} data: {e}", path=label) from None
            stream = io.BufferedReader(_Prefixed(head, decomp, label, compression, raw), 1 << 20)
            return Input(label, stream, head, ext, compression, None)
        if head.startswith(TRACE_DAT_MAGIC):
            raw.close()
            return _trace_cmd_report(name, label)
        stream = io.BufferedReader(_Prefixed(head, raw, label, None), 1 << 20)
        return Input(label, stream, head, ext, None, size,
                     path=name if size is not None else None)
    except BaseException:
        if raw is not sys.stdin.buffer:
            raw.close()
        raise


def _trace_cmd_report(name: str, label: str) -> Input:
    """trace-cmd's binary trace.dat, as the text of ``trace-cmd report``."""
    exe = shutil.which("trace-cmd")
    if exe is None or name == "-":
        how = ("save it to a file and convert it" if exe is not None else
               "convert it with `trace-cmd report -i FILE > FILE.txt` (trace-cmd is not "
               "on the PATH)")
        raise TraceError(f"this is trace-cmd's binary trace.dat: {how}, then load the text",
                         path=label)
    proc = subprocess.Popen([exe, "report", "-i", name], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    head = read_head(proc.stdout)
    if not head:
        proc.wait()
        raise TraceError(f"`trace-cmd report` printed nothing (exit status {proc.returncode})",
                         path=label)
    stream = io.BufferedReader(_Prefixed(head, proc.stdout, label, None), 1 << 20)
    return Input(label, stream, head, ".trace", None, None, proc)


# --------------------------------------------------------------------------
# output

def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file (also through links)."""
    a, b = os.fspath(a), os.fspath(b)
    if a == "-" or b == "-":
        return False
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_atomically(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a fresh temporary file, then put it in place of
    ``path``, keeping the permission bits ``path`` had."""
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as e:
        raise OSError(e.errno, e.strerror, target) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.",
                                   suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, target) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, TraceError):
            # The temporary name means nothing to the user: name the target.
            raise OSError(e.errno, e.strerror, target) from None
        raise
