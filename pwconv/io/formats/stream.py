"""npy streams: ``-`` as INPUT reads stdin, as OUTPUT writes stdout, block by block in order."""

from __future__ import annotations

import os
import stat
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, UsageError
from pwconv.io.formats.npy import header_bytes, read_exact, read_header
from pwconv.io.interface import Backend, Description, Sink, SinkRequest, Source
from pwconv.io.rawio import BlockMemory, box_of, contiguous_runs

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_PIPE_BYTES = 1 << 20


def widen_pipe(stream: IO[bytes]) -> None:
    """Ask for a 1 MiB pipe buffer (64 KiB by default on Linux) when ``stream`` is a pipe:
    blocks then move in a sixteenth as many reads or writes, each waking the other side.
    Best effort: where the system refuses, the pipe stays as it is."""
    try:
        fd = stream.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (OSError, ValueError, AttributeError, ImportError):
        pass


class StreamSource(Source):
    """An npy stream on stdin: header first, then blocks read strictly in order."""

    sequential = True
    description = Description(reader="stream")

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        import sys

        self._stream = stream if stream is not None else sys.stdin.buffer
        if self._stream.isatty():
            raise UsageError("expected npy data on stdin for input '-', found a terminal; pipe a file in")
        widen_pipe(self._stream)
        self.shape, self.dtype, fortran = read_header(self._stream, "stdin")
        if fortran:
            raise FormatError(
                "expected a C-order npy stream on stdin, found Fortran order; save it with "
                "numpy.save(numpy.ascontiguousarray(a))"
            )
        self._position = 0
        self._memory = BlockMemory()

    def storage(self) -> dict[str, Any]:
        return {"format": "npy stream"}

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        box, steps = box_of(index, self.shape)
        extents = tuple(stop - start for start, stop in box)
        block = self._memory.empty(extents, self.dtype)
        if block.size:
            run, offsets = contiguous_runs(self.shape, box)
            if len(offsets) != 1 or offsets[0] < self._position:
                raise AssertionError("stdin blocks must be contiguous and in order")
            skip = (offsets[0] - self._position) * self.dtype.itemsize
            while skip:
                skip -= len(self._stream.read(min(skip, 1 << 20)) or b"") or skip
            read_exact(self._stream, block.reshape(-1).view(np.uint8).data, "stdin")
            self._position = offsets[0] + run
        return block[steps]


class StreamSink(Sink):
    """An npy stream on stdout: the header goes out with the first block."""

    sequential = True

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, stream: IO[bytes] | None = None) -> None:
        import sys

        self.shape, self.dtype = shape, np.dtype(dtype)
        self._stream = stream if stream is not None else sys.stdout.buffer
        widen_pipe(self._stream)
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._stream.write(header_bytes(self.shape, self.dtype))
            self._started = True

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self._start()
        if block.size:
            self._stream.write(np.ascontiguousarray(block, dtype=self.dtype).reshape(-1).view(np.uint8).data)

    def commit(self) -> None:
        self._start()
        self._stream.flush()

    def abort(self) -> None:
        pass


class StreamFormat(Backend):
    """``-``: stdin as an input, stdout as an output."""

    def open_source(self, spec: Spec) -> StreamSource:
        return StreamSource()

    def open_sink(self, spec: Spec, request: SinkRequest) -> StreamSink:
        return StreamSink(request.shape, request.dtype)
