"""Chunk codecs run by pwconv itself, on every core, outside the format libraries' locks.

h5py serialises every HDF5 call, so a gzip dataset read and written through it decodes and
encodes on one core at a time, and the reader and the writer wait for each other. Where the
chunks of a file can be found (HDF5's chunk index), pwconv reads their stored bytes, decodes
and encodes them here on a pool of one thread per core, and hands whole encoded chunks back
to the library.

The implementation is the fastest installed: libdeflate through imagecodecs
(``pip install 'pwconv[codecs]'``), else the standard library's zlib; both release the GIL.
Both read and write the same zlib streams, so files are the same to every reader. Zarr zstd
chunks are decoded here too where imagecodecs is installed (zarr decodes them otherwise).
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pwconv.errors import FormatError

if TYPE_CHECKING:  # the pool's module is imported when the pool starts
    from concurrent.futures import Future, ThreadPoolExecutor

T = TypeVar("T")
R = TypeVar("R")

#: The levels each output compression takes (``--compression NAME:LEVEL``), and the level
#: used without one (the format library's own default); lzf has none.
LEVELS: dict[str, tuple[int, int, int] | None] = {
    "gzip": (1, 9, 4),  # h5py's, NetCDF's default; zarr's GzipCodec uses 5
    "deflate": (1, 9, 6),  # zlib's own default (TIFF)
    "zstd": (1, 22, 3),
    "lzf": None,
    "lzw": None,  # TIFF
}

#: Set to ``zlib`` to use the standard library's zlib even where libdeflate is installed
#: (for measuring what libdeflate buys, and for testing both on the same files).
DEFLATE_VARIABLE = "PWCONV_DEFLATE"

_lock = threading.Lock()
# Each codec thread decodes into one buffer it keeps: a fresh chunk-sized buffer per chunk
# costs the kernel's page faults every time (measured 1.5x the decode time for 16 MiB chunks).
_scratch = threading.local()
_pool: CodecThreads | None = None
_imagecodecs: Any = None
_imagecodecs_any: Any = None  # imagecodecs whatever PWCONV_DEFLATE says, for zstd
_looked = False


def _fast() -> Any:
    """imagecodecs where it is installed with libdeflate and not turned off, else None."""
    global _imagecodecs, _imagecodecs_any, _looked
    if not _looked:
        try:
            import imagecodecs

            _imagecodecs = imagecodecs if imagecodecs.DEFLATE.available else None
            _imagecodecs_any = imagecodecs if imagecodecs.ZSTD.available else None
        except (ImportError, AttributeError):
            _imagecodecs = _imagecodecs_any = None
        _looked = True
    if os.environ.get(DEFLATE_VARIABLE, "").strip().lower() == "zlib":
        return None
    return _imagecodecs


def deflate_implementation() -> str:
    """Which implementation :func:`inflate` and :func:`deflate` use (for descriptions)."""
    return "libdeflate" if _fast() is not None else "zlib"


def _buffer(size: int, kind: str = "decoded") -> np.ndarray:
    """This thread's buffer of ``kind``, ``size`` bytes of it (valid until the thread's next
    use of that kind)."""
    buffer = getattr(_scratch, kind, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, np.uint8)
        setattr(_scratch, kind, buffer)
    return buffer[:size]


def staged(part: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``part`` as a C-contiguous array of ``dtype`` for an encoder: itself where it is one,
    else a copy in this thread's kept buffer (valid until the thread stages its next part).
    A fresh copy per chunk cost the kernel's zeroing of its pages every time (a 1 GiB zstd
    Zarr to a zstd Zarr: 4% of the run's CPU samples)."""
    if part.flags.c_contiguous and part.dtype == dtype:
        return part
    copy = _buffer(part.size * dtype.itemsize, "staged").view(dtype).reshape(part.shape)
    np.copyto(copy, part, casting="unsafe")
    return copy


def read_buffer(size: int) -> np.ndarray:
    """This thread's buffer for a chunk's stored bytes read from a file, ``size`` bytes of it
    (valid until the thread reads its next chunk). A fresh buffer per chunk cost its page
    faults every time, as the decode buffer did (see ``_scratch``): a 1 GiB zstd Zarr to a
    zstd Zarr spent 0.71-0.80 s in the kernel with them, 0.53-0.57 s without."""
    return _buffer(size, "stored")


def _checked(
    decode: Callable[[], Any], size: int, name: str, stream: str, holder: str, least: int | None = None
) -> Any:
    """What ``decode`` returns, which must be ``size`` bytes (from ``least`` to ``size``
    where ``least`` is given); any failure is one line naming ``name`` (``stream``: what it
    should hold, ``holder``: file or store)."""
    try:
        out = decode()
    except Exception as exc:  # noqa: BLE001 - every codec failure on hostile bytes is a damaged chunk
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(
            f"cannot decode {name}: expected {stream} of {size} bytes, found damaged data ({reason}); "
            f"the {holder} is damaged, write it again"
        ) from None
    if not (size if least is None else least) <= len(out) <= size:
        expected = f"{size}" if least is None or least == size else f"{least} to {size}"
        raise FormatError(
            f"cannot decode {name}: expected {expected} bytes, found {len(out)}; the {holder} is damaged, write it again"
        )
    return out


def inflate(data: bytes, size: int, name: str) -> Any:
    """The ``size`` bytes a zlib stream holds (a buffer valid until this thread's next
    decode); a damaged stream, or one that holds more or fewer bytes, is a one-line error
    naming ``name``."""
    return decode_between("deflate", data, size, size, name)


def zstd_available() -> bool:
    """Whether zstd can be decoded and encoded here (imagecodecs, the ``codecs`` extra, is
    installed)."""
    fast = _fast_zstd()
    return fast is not None


def _fast_zstd() -> Any:
    _fast()
    return _imagecodecs_any


def can_decode(codec: str) -> bool:
    """Whether :func:`decode_between` takes ``codec`` here: deflate always (the standard
    library's zlib at worst), zstd, LZW and blosc where imagecodecs is installed with them."""
    if codec == "deflate":
        return True
    fast = _fast_zstd()
    flags = {"zstd": "ZSTD", "lzw": "LZW", "blosc": "BLOSC"}
    return fast is not None and codec in flags and bool(getattr(fast, flags[codec]).available)


def decode_into(codec: str, data: Any, target: np.ndarray, name: str, holder: str = "file") -> None:
    """Decode ``data`` (see :func:`decode_between`) into ``target``, a C-contiguous array of
    exactly the decoded size: a chunk that is one run of a block goes straight there instead
    of through this thread's buffer and a copy (a 1 GiB zstd Zarr: 16 MiB copied per chunk).

    >>> target = np.zeros(3, np.uint8)
    >>> decode_into("deflate", zlib.compress(b"abc"), target, "x"); bytes(target)
    b'abc'
    """
    size = target.nbytes
    flat = target.reshape(-1).view(np.uint8)
    # LZW is decoded one byte longer (to tell a longer stream), zlib only into its own buffer
    if codec == "lzw" or (codec == "deflate" and _fast() is None):
        flat[...] = np.frombuffer(decode_between(codec, data, size, size, name, holder), np.uint8)
        return
    decode_between(codec, data, size, size, name, holder, into=flat)


def decode_between(
    codec: str, data: Any, least: int, most: int, name: str, holder: str = "file", into: Any = None
) -> Any:
    """What ``data`` holds encoded with ``codec`` (``deflate``, ``zstd``, ``lzw`` or ``blosc``, see
    :func:`can_decode`): from ``least`` to ``most`` bytes of it (a buffer valid until this
    thread's next decode, or ``into``, a writable buffer of ``most`` bytes, where given: not
    for LZW or the standard library's zlib); anything else is a one-line error naming
    ``name`` and saying that its ``holder`` (file or store) is damaged.

    >>> bytes(decode_between("deflate", zlib.compress(b"abc"), 2, 8, "x"))
    b'abc'
    """
    fast = _fast() if codec == "deflate" else _fast_zstd()

    def decode() -> Any:
        if codec == "lzw":  # it stops where its output ends: one byte more shows a longer stream
            out = fast.lzw_decode(data, out=_buffer(most + 1))
            if len(out) > most:
                raise ValueError("the stream holds more data than expected")
            return out
        target = _buffer(most) if into is None else into
        if codec == "zstd":
            return fast.zstd_decode(data, out=target)
        if codec == "blosc":  # one thread: the chunks are decoded on every core already
            _check_blosc_frame(data)
            return fast.blosc_decode(data, numthreads=1, out=target)
        if fast is not None:
            return fast.deflate_decode(data, out=target)
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, most)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("the stream holds more data than expected")
        return out

    stream = {
        "deflate": "a deflate stream",
        "zstd": "a zstd frame",
        "lzw": "an LZW stream",
        "blosc": "a blosc frame",
    }[codec]
    return _checked(decode, most, name, stream, holder, least=least)


# A blosc frame's header: version bytes and flags, then its decoded size, block size and
# stored size (the whole frame's), each a little-endian uint32.
_BLOSC_HEADER = 16


def _check_blosc_frame(data: Any) -> None:
    """Refuse bytes that are not one whole blosc frame: blosc's decoder takes the frame's
    length from its header, not from the bytes it is given, so a frame cut short (an empty
    chunk file) is read past its end, into whatever memory follows it.

    >>> _check_blosc_frame(bytes(8))
    Traceback (most recent call last):
    ValueError: expected a blosc frame of at least 16 bytes, found 8
    """
    view = memoryview(data).cast("B")
    if len(view) < _BLOSC_HEADER:
        raise ValueError(f"expected a blosc frame of at least {_BLOSC_HEADER} bytes, found {len(view)}")
    stored = int.from_bytes(view[12:16], "little")
    if stored > len(view):
        raise ValueError(f"the frame's header says {stored} bytes, the chunk holds only {len(view)}")


# From 1 MiB up, numcodecs' zstd (where zarr brought it) encodes a product's output in
# 0.65-0.75x imagecodecs' time at the same level and size (4 MiB pieces: 20.8 against 32.0 ms
# per 16 MiB); below, the two are within 5% and numcodecs' import (40 ms) is not worth it.
_NUMCODECS_FROM = 1 << 20
_numcodecs_compress: Any = None  # numcodecs.zstd.compress, False where it is not installed


def _large_zstd() -> Any:
    global _numcodecs_compress
    with _lock:
        if _numcodecs_compress is None:
            try:
                from numcodecs.zstd import compress

                _numcodecs_compress = compress
            except ImportError:
                _numcodecs_compress = False
    return _numcodecs_compress


def zstd(data: Any, level: int) -> bytes:
    """``data`` (a buffer) as one zstd frame at ``level`` (0: zstd's default)."""
    if memoryview(data).nbytes >= _NUMCODECS_FROM and (compress := _large_zstd()):
        return bytes(compress(data, level))
    encoded = _fast_zstd().zstd_encode(data, level=level)
    return encoded if isinstance(encoded, bytes) else bytes(encoded)


def deflate(data: Any, level: int) -> bytes:
    """``data`` (a buffer) as a zlib stream at ``level`` (1-9)."""
    fast = _fast()
    if fast is not None:
        encoded = fast.deflate_encode(data, level=level)
        return encoded if isinstance(encoded, bytes) else bytes(encoded)
    return zlib.compress(data, level)


class CodecThreads:
    """One thread per core taking codec work from one queue, decoding before encoding.

    A read waits for its chunks' decoding while a write's encoded chunks can wait: with one
    first-come queue, a block's tile queued behind the previous blocks' output strips held
    up the read, and the pipeline with it (a deflate TIFF to a deflate TIFF: 6.1-6.7 s in
    first-come order, see the README). Work submitted with ``later`` runs only when no other
    work waits; within a priority, first come first served.
    """

    def __init__(self, count: int) -> None:
        import itertools
        import queue

        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self._count, self._started, self._idle = count, 0, threading.Semaphore(0)
        self._starting = threading.Lock()

    def submit(self, work: Callable[..., R], *args: Any, later: bool = False) -> Future[R]:
        from concurrent.futures import Future

        future: Future[R] = Future()
        self._queue.put((1 if later else 0, next(self._order), future, work, args))
        # a thread started only when none is idle, as many as there are cores
        if self._idle.acquire(blocking=False):
            return future
        with self._starting:
            if self._started < self._count:
                self._started += 1
                threading.Thread(target=self._work, name=f"pwconv-codec-{self._started}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            if self._queue.empty():
                self._idle.release()
            _, _, future, work, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, work, args  # no reference to a block kept while the thread waits


def lzw(data: Any) -> bytes:
    """``data`` (a buffer) as one TIFF LZW stream (imagecodecs: see :func:`can_decode`)."""
    encoded = _fast_zstd().lzw_encode(data)
    return encoded if isinstance(encoded, bytes) else bytes(encoded)


def thread_count() -> int:
    """How many codec threads :func:`pool` runs: one per core."""
    return max(1, os.cpu_count() or 1)


def pool() -> CodecThreads:
    """The process's codec threads, one per core (started on first use)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = CodecThreads(thread_count())
        return _pool


def started() -> bool:
    """Whether the codec threads have started: chunks are being decoded or encoded on every
    core, beside whatever else runs."""
    return _pool is not None


def each_done(
    work: Callable[[T], R], items: Iterable[T], then: Callable[[T, R], None], *, later: bool = False
) -> None:
    """``work`` over ``items`` on the codec threads (``later``: after any decoding that
    waits), and ``then(item, result)`` on the calling thread for each as soon as it is done,
    in the order they finish: a chunk is written while the next are still encoded, where
    :func:`in_parallel` waits for the last. The first failure, of ``work`` or of ``then``, is
    raised once every item has been tried (so no thread still touches the caller's buffers).

    >>> done = []
    >>> each_done(lambda n: n * n, [1, 2, 3], lambda n, square: done.append((n, square)))
    >>> sorted(done)
    [(1, 1), (2, 4), (3, 9)]
    """
    from concurrent.futures import as_completed

    codec_threads = pool()
    futures = {codec_threads.submit(work, item, later=later): item for item in items}
    failure: BaseException | None = None
    for future in as_completed(futures):
        try:
            result = future.result()
            if failure is None:
                then(futures[future], result)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finished
            failure = failure or exc
    if failure is not None:
        raise failure


def in_parallel(
    work: Callable[[T], R],
    items: Iterable[T],
    threads: ThreadPoolExecutor | None = None,
    *,
    later: bool = False,
) -> list[R]:
    """``work`` over ``items`` on the codec threads (``later``: after any decoding that
    waits, for encoding) or on ``threads``, results in order; the first failure is raised
    once every item has been tried (so no thread still touches the caller's buffers)."""
    if threads is not None:
        futures: list[Future[R]] = [threads.submit(work, item) for item in items]
    else:
        codec_threads = pool()
        futures = [codec_threads.submit(work, item, later=later) for item in items]
    failure: BaseException | None = None
    results: list[R] = []
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finished
            failure = failure or exc
    if failure is not None:
        raise failure
    return results
