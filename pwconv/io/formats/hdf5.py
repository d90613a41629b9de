"""HDF5 datasets (h5py is imported only here).

An unfiltered dataset's bytes lie as they are in the file: such a dataset is read, and a
new uncompressed output written, with positioned reads and writes at the offsets HDF5
reports (:mod:`pwconv.io.rawio`), several times faster than h5py's hyperslab machinery
and free of its global lock. A gzip dataset (shuffled or not) has its chunks found the same
way and decoded, and a gzip output's chunks encoded, by :mod:`pwconv.io.codecs` on every
core; h5py only writes the encoded chunks. Anything else (other filters, external storage,
odd layouts) goes through h5py.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.blocks import chunk_shape
from pwconv.errors import FormatError, OutputExistsError, PwconvError, UsageError
from pwconv.io import codecs
from pwconv.io.atomic import (
    FileSink,
    check_output_path,
    made_anew,
    setting_up,
    write_atomically,
    write_failure,
)
from pwconv.io.checks import check_readable, first_line, label_text, numeric_dtype, refuse_external
from pwconv.io.interface import Backend, Description, Sink, SinkRequest, Source
from pwconv.io.names import pick_name, printable
from pwconv.io.rawio import (
    BlockMemory,
    RawChunks,
    box_of,
    chunk_pieces,
    raw_paths_enabled,
    read_all,
    whole_slab,
)
from pwconv.io.stores import RangedFile, RemoteObject, exists, is_url, shown

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_CHUNK_TARGET_BYTES = 1 << 20
# Above this many chunks, listing where each lies costs more than h5py's own reads.
_MAX_RAW_CHUNKS = 1 << 18


def _h5py() -> Any:
    import h5py

    return h5py


def list_datasets(group: Any) -> list[str]:
    """Names of every dataset under ``group``, depth first."""
    h5py = _h5py()
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind not in "OSU":  # text: labels, not tensors
            names.append("/" + name)

    group.visititems(visit)
    return names


def _open_file(path: str, mode: str) -> Any:
    return _opened(path, mode)[0]


def _opened(path: str, mode: str) -> tuple[Any, RangedFile | None]:
    """The h5py file at ``path``, and for a URL the file object h5py reads it through (only
    the metadata and chunks that are used are fetched)."""
    h5py = _h5py()
    remote = RangedFile(RemoteObject(path)) if is_url(path) else None
    try:
        return h5py.File(path if remote is None else remote, mode), remote
    except OSError as exc:
        if remote is not None:
            remote.raise_failure()  # the network's error, not h5py's account of it
        detail = str(exc).splitlines()[0]
        raise FormatError(
            f"expected an HDF5 file at {path!r}, found one h5py cannot open ({detail}); check that it "
            "is HDF5 and not truncated"
        ) from None


@contextlib.contextmanager
def _structure_errors(path: str) -> Iterator[None]:
    """h5py's errors while finding and describing datasets (a damaged object header makes
    a visit or a lookup fail) as one line naming the file."""
    try:
        yield
    except PwconvError:
        raise  # already one line (a missing dataset name lists what exists)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(
            f"cannot read the structure of the HDF5 file {path!r} ({first_line(exc)}); check that it "
            "is HDF5 and not damaged"
        ) from None


def resolve_dataset(handle: Any, path: str, dataset: str | None) -> Any:
    """The named dataset, or the file's only dataset; errors list what exists."""
    if dataset and isinstance(handle.get(dataset), _h5py().Dataset):  # through a link too
        return handle[dataset]
    return handle[pick_name(path, dataset, list_datasets(handle), "dataset")]


def _stored_chunks(ds: Any) -> list[Any]:
    """HDF5's record of each stored chunk of ``ds`` (offset in the data, byte offset, size,
    filter mask)."""
    found: list[Any] = []
    if hasattr(ds.id, "chunk_iter"):  # h5py built on HDF5 1.12.3 or later; one call for all chunks
        ds.id.chunk_iter(found.append)
    else:
        found = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    return found


def raw_layout(ds: Any, fd: int | RemoteObject, name: str) -> RawChunks | None:
    """Where an unfiltered dataset's bytes lie in its file, or None where h5py must read it
    (filters, external or virtual storage, foreign byte order, unallocated data)."""
    try:
        plist = ds.id.get_create_plist()
        dtype = np.dtype(ds.dtype)
        shape = tuple(int(n) for n in ds.shape)
        if plist.get_nfilters() or plist.get_external_count() or not dtype.isnative or not math.prod(shape):
            return None
        layout = plist.get_layout()
        h5d = _h5py().h5d
        if layout == h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is None:
                return None
            return RawChunks(fd, name, shape, dtype, shape, {(0,) * len(shape): int(offset)}, ds.fillvalue)
        if layout != h5d.CHUNKED or ds.id.get_num_chunks() > _MAX_RAW_CHUNKS:
            return None
        chunks = tuple(int(c) for c in ds.chunks)
        chunk_bytes = math.prod(chunks) * dtype.itemsize
        offsets = {}
        for info in _stored_chunks(ds):
            if info.size != chunk_bytes or info.filter_mask:
                return None
            offsets[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = int(info.byte_offset)
        return RawChunks(fd, name, shape, dtype, chunks, offsets, ds.fillvalue)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError):
        return None


# HDF5's filter numbers (H5Zpublic.h) that pwconv decodes and encodes itself.
_DEFLATE, _SHUFFLE = 1, 2
GZIP_LEVEL = 4  # h5py's default


class DeflateChunks:
    """A chunked gzip dataset (with or without HDF5's byte shuffle before it) whose stored
    chunks pwconv reads at their offsets and decodes itself, on every core.

    ``stored`` maps each chunk's grid coordinates to (byte offset, stored size, filter mask);
    a mask bit set means HDF5 skipped that filter for the chunk (deflate is optional: a chunk
    it cannot shrink is kept as it is). A chunk missing from it reads as ``fill``.
    """

    def __init__(
        self,
        fd: int | RemoteObject,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        stored: dict[tuple[int, ...], tuple[int, int, int]],
        filters: tuple[int, ...],
        fill: object,
    ) -> None:
        """``fd``: the file's descriptor, or the object at a URL whose chunks a block fetches
        together (neighbours joined, several requests in flight) before decoding them."""
        self.fd, self.name, self.shape, self.dtype, self.chunks = fd, name, shape, dtype, chunks
        self.stored, self.filters, self.fill = stored, filters, fill
        self.chunk_bytes = math.prod(chunks) * dtype.itemsize
        self._memory = BlockMemory(keep=2)  # a box is assembled in a kept buffer

    def check_inside(self, size: int) -> None:
        """Refuse chunks said to lie past ``size`` bytes (a truncated or lying file)."""
        for coords, (offset, stored, _) in self.stored.items():
            if offset < 0 or stored < 0 or offset + stored > size:
                raise FormatError(
                    f"expected the data of {self.name} chunk {coords} at bytes {offset}-{offset + stored}, "
                    f"found a file of {size} bytes; the file is truncated or damaged, write it again"
                )

    def _decoded(
        self, coords: tuple[int, ...], data: Any = None, into: np.ndarray | None = None
    ) -> np.ndarray:
        """One chunk decoded: its stored bytes ``data`` where fetched already, else read;
        straight into ``into`` (a whole chunk's run of a box) where given and the chunk is
        gzip alone."""
        offset, size, mask = self.stored[coords]
        where = f"{self.name} chunk {coords}"
        if data is None:
            assert isinstance(self.fd, int)
            data = codecs.read_buffer(size)
            read_all(self.fd, data.data, offset, where)
        if into is not None:
            if self.filters == (_DEFLATE,) and not mask & 1:
                codecs.decode_into("deflate", data, into, where)
            else:
                into[...] = self._decoded(coords, data)
            return into
        # Undo the pipeline from its last filter back, skipping those the mask says were skipped.
        for position in reversed(range(len(self.filters))):
            if mask >> position & 1:
                continue
            if self.filters[position] == _DEFLATE:
                data = codecs.inflate(data, self.chunk_bytes, where)
            elif len(data) == self.chunk_bytes:  # shuffle: the items' first bytes, then their second, ...
                planes = np.frombuffer(data, np.uint8).reshape(self.dtype.itemsize, -1)
                data = np.ascontiguousarray(planes.T).reshape(-1)
        if len(data) != self.chunk_bytes:
            raise FormatError(
                f"expected {self.chunk_bytes} bytes in {where}, found {len(data)}; the file is damaged, write it again"
            )
        return np.frombuffer(data, self.dtype).reshape(self.chunks)  # valid until this thread decodes again

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """Any selection (steps too): its step-1 box read, then stepped."""
        box, steps = box_of(index, self.shape)
        return self.read_box(tuple(slice(a, b) for a, b in box))[steps]

    def read_box(self, index: tuple[slice, ...]) -> np.ndarray:
        """The step-1 box ``index``, its chunks decoded in parallel."""
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape)]
        out = self._memory.empty(tuple(b - a for a, b in bounds), self.dtype)
        if not out.size:
            return out

        pieces = list(chunk_pieces(bounds, self.chunks))
        fetched: dict[tuple[int, ...], Any] = {}
        if isinstance(self.fd, RemoteObject):
            wanted = sorted(
                {p.coords for p in pieces if p.coords in self.stored}, key=lambda c: self.stored[c]
            )
            starts = [self.stored[c][0] for c in wanted]
            ends = [self.stored[c][0] + self.stored[c][1] for c in wanted]
            fetched = dict(zip(wanted, self.fd.read_spans(starts, ends)))

        def one(piece: Any) -> None:
            if piece.coords not in self.stored:
                out[piece.outer] = self.fill
            elif (slab := whole_slab(out, piece, self.chunks)) is not None:
                self._decoded(piece.coords, fetched.get(piece.coords), into=slab)
            else:
                out[piece.outer] = self._decoded(piece.coords, fetched.get(piece.coords))[piece.inner]

        codecs.in_parallel(one, pieces)
        return out


def deflate_layout(ds: Any, fd: int | RemoteObject, name: str) -> DeflateChunks | None:
    """The stored chunks of a gzip (and shuffle) dataset for pwconv to decode, or None where
    h5py must read it (other filters, external storage, foreign byte order, too many chunks)."""
    try:
        plist = ds.id.get_create_plist()
        dtype = np.dtype(ds.dtype)
        shape = tuple(int(n) for n in ds.shape)
        if plist.get_layout() != _h5py().h5d.CHUNKED or plist.get_external_count():
            return None
        filters = tuple(int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters()))
        if filters not in ((_DEFLATE,), (_SHUFFLE, _DEFLATE)) or dtype.kind not in "biuf":
            return None
        if not dtype.isnative:
            return None
        if not math.prod(shape) or ds.id.get_num_chunks() > _MAX_RAW_CHUNKS:
            return None
        chunks = tuple(int(c) for c in ds.chunks)
        stored = {
            tuple(o // c for o, c in zip(info.chunk_offset, chunks)): (
                int(info.byte_offset), int(info.size), int(info.filter_mask)
            )
            for info in _stored_chunks(ds)
        }  # fmt: skip
        return DeflateChunks(fd, name, shape, dtype, chunks, stored, filters, ds.fillvalue)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError):
        return None


class DeflateChunkWriter:
    """Whole chunks of a new gzip dataset, encoded on every core and written by h5py as they
    are (``write_direct_chunk``). A chunk is gathered from the blocks that cover it and
    encoded once it is complete, so the blocks need not follow the chunks."""

    def __init__(self, ds: Any, name: str, level: int) -> None:
        self._ds, self._name, self._level = ds, name, level
        self.shape = tuple(int(n) for n in ds.shape)
        self.chunks = tuple(int(c) for c in ds.chunks)
        self.dtype = np.dtype(ds.dtype)
        self._partial: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}

    def _inside(self, coords: tuple[int, ...]) -> int:
        """How many elements of chunk ``coords`` lie inside the dataset (edge chunks fewer)."""
        return math.prod(min(c, n - g * c) for g, c, n in zip(coords, self.chunks, self.shape))

    def write_box(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape)]
        complete: list[tuple[tuple[int, ...], np.ndarray]] = []
        for piece in chunk_pieces(bounds, self.chunks):
            buffer, left = self._partial.pop(piece.coords, (None, self._inside(piece.coords)))
            if buffer is None:
                buffer = np.zeros(self.chunks, self.dtype)
            part = block[piece.outer]
            buffer[piece.inner] = part
            left -= part.size
            if left > 0:
                self._partial[piece.coords] = (buffer, left)
            else:
                complete.append((piece.coords, buffer))
        self._store(complete)

    def _store(self, complete: list[tuple[tuple[int, ...], np.ndarray]]) -> None:
        """Encode the complete chunks after any decoding that waits (the next block's read
        goes first), each written as soon as it is encoded."""

        def write(item: tuple[tuple[int, ...], np.ndarray], data: bytes) -> None:
            offset = tuple(g * c for g, c in zip(item[0], self.chunks))
            try:
                self._ds.id.write_direct_chunk(offset, data, 0)
            except (OSError, ValueError, RuntimeError) as exc:
                raise write_failure(self._name, exc) from None

        codecs.each_done(lambda item: codecs.deflate(item[1], self._level), complete, write, later=True)

    def flush(self) -> None:
        """Write the chunks no block completed (none, when every block was written)."""
        left, self._partial = self._partial, {}
        self._store([(coords, buffer) for coords, (buffer, _) in left.items()])


class ChunkSpans:
    """Where the stored chunks of a dataset lie in its file, so that the chunks a block needs
    can be fetched at once from a URL; a contiguous dataset gives the bytes from a block's
    first element to its last, where they are mostly the block's own."""

    def __init__(
        self, shape: tuple[int, ...], chunks: tuple[int, ...], spans: dict[tuple[int, ...], tuple[int, int]],
        contiguous: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        self.shape, self.chunks, self.spans, self.contiguous = shape, chunks, spans, contiguous

    def cuts(self, box: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
        """``box``'s first axis cut at chunk boundaries into parts whose stored bytes stay
        under ``limit`` (a part is at least one row of chunks), so that what one fetch holds
        stays bounded however large the block.

        >>> grid = {(r, c): (1000 * r + 100 * c, 1000 * r + 100 * c + 50) for r in range(4) for c in range(2)}
        >>> spans = ChunkSpans((40, 20), (10, 10), grid)  # 4 x 2 chunks of 50 stored bytes
        >>> spans.cuts([(5, 40), (0, 20)], 200), spans.cuts([(5, 40), (0, 20)], 10)
        ([(5, 20), (20, 40)], [(5, 10), (10, 20), (20, 30), (30, 40)])
        """
        step = 1 if self.contiguous is not None else self.chunks[0]
        (a, b), rest = box[0], box[1:]
        parts: list[tuple[int, int]] = []
        start = a
        while start < b:
            stop, held = start, 0
            while stop < b:
                following = min(b, (stop // step + 1) * step)
                more = sum(end - begin for begin, end in self.ranges([(stop, following), *rest]))
                if held and held + more > limit:
                    break
                stop, held = following, held + more
            parts.append((start, stop))
            start = stop
        return parts

    def ranges(self, box: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The byte ranges of the stored data that meet ``box`` ((start, stop) per axis)."""
        if any(b <= a for a, b in box):
            return []
        if self.contiguous is not None:
            offset, itemsize = self.contiguous
            first = int(np.ravel_multi_index([a for a, _ in box], self.shape))
            last = int(np.ravel_multi_index([b - 1 for _, b in box], self.shape))
            if math.prod(b - a for a, b in box) * 2 < last + 1 - first:
                return []  # a narrow window: h5py's own reads of its runs fetch less
            return [(offset + first * itemsize, offset + (last + 1) * itemsize)]
        grid = [range(a // c, -(-b // c)) for (a, b), c in zip(box, self.chunks)]
        found = (self.spans.get(tuple(at)) for at in itertools.product(*grid))
        return [span for span in found if span is not None]


def chunk_spans(ds: Any) -> ChunkSpans | None:
    """The chunks' spans of ``ds``, or None where HDF5 does not say (or they are too many to list)."""
    h5d = _h5py().h5d
    try:
        plist = ds.id.get_create_plist()
        shape = tuple(int(n) for n in ds.shape)
        if plist.get_layout() == h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            return None if offset is None else ChunkSpans(shape, shape, {}, (int(offset), ds.dtype.itemsize))
        if plist.get_layout() != h5d.CHUNKED or ds.id.get_num_chunks() > _MAX_RAW_CHUNKS:
            return None
        chunks = tuple(int(c) for c in ds.chunks)
        spans = {}
        for info in _stored_chunks(ds):
            start = int(info.byte_offset)
            spans[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = (start, start + int(info.size))
        return ChunkSpans(shape, chunks, spans)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError):
        return None


# The stored bytes one prefetch of a block's chunks holds at most.
_PREFETCH_BYTES = 32 << 20


def read_prefetched(ds: Any, remote: RangedFile, spans: ChunkSpans, index: tuple[slice, ...]) -> np.ndarray:
    """``ds[index]`` (an h5py dataset, or an h5netcdf variable over one) at a URL, a part of
    rows of chunks at a time: each part's chunks are fetched together (h5py would ask for
    them one by one), then read by h5py from them."""
    box, steps = box_of(index, tuple(int(n) for n in ds.shape))
    out = np.empty([b - a for a, b in box], dtype=ds.dtype)
    rest = tuple(slice(a, b) for a, b in box[1:])
    try:
        for start, stop in spans.cuts(box, _PREFETCH_BYTES):
            remote.prefetch(spans.ranges([(start, stop), *box[1:]]))
            part = (slice(start, stop),) + rest
            out[start - box[0][0] : stop - box[0][0]] = ds[part]
            remote.forget()
    finally:
        remote.forget()
    return out[steps]


def _check_no_external_link(handle: Any, path: str, dataset: str | None) -> None:
    """Refuse a dataset name that passes through a link into another file, unless allowed."""
    h5py = _h5py()
    parts = (dataset or "").strip("/").split("/") if dataset else []
    for depth in range(1, len(parts) + 1):
        link = handle.get("/" + "/".join(parts[:depth]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            refuse_external(path, printable(f"an external link to {link.filename}:{link.path}"))
        if link is None:
            return


def _check_own_storage(ds: Any, path: str) -> None:
    """Refuse a dataset whose data lies in other files (external raw storage, virtual
    sources) unless allowed; a missing virtual source is always an error (HDF5 would read
    it as fill values)."""
    h5py = _h5py()
    where = printable(f"{path}:{ds.name}")
    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        target = plist.get_external(0)[0].decode("utf-8", "replace")
        refuse_external(path, printable(f"{where} stored in the external file {target}"))
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        sources = [plist.get_virtual_filename(i) for i in range(plist.get_virtual_count())]
        others = sorted({s for s in sources if s != "."})
        if others:
            refuse_external(path, printable(f"{where} a virtual dataset reading {', '.join(others[:3])}"))
        if is_url(path):
            raise FormatError(
                f"expected {where} to hold its own data, found a virtual dataset over other files, which "
                "pwconv does not fetch beside a URL; download the file with its sources first"
            )
        folder = os.path.dirname(os.path.abspath(path))
        missing = [s for s in others if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise FormatError(
                printable(
                    f"expected the sources of the virtual dataset {where}, found {missing[0]!r} missing; "
                    "put it back beside the file or read the sources themselves"
                )
            )


class H5Source(Source):
    """An HDF5 dataset; blocks are read straight from the file where its bytes are raw, as
    hyperslabs through h5py otherwise."""

    def __init__(self, path: str, dataset: str | None) -> None:
        check_readable(path)
        self.path = path
        self._raw_file: Any = None
        self._raw: RawChunks | None = None
        self._deflate: DeflateChunks | None = None
        self._file, self._remote = _opened(path, "r")
        try:
            with _structure_errors(path):
                _check_no_external_link(self._file, path, dataset)
                self._ds = resolve_dataset(self._file, path, dataset)
                self.dataset = self._ds.name
                _check_own_storage(self._ds, path)
                self.shape = tuple(int(n) for n in self._ds.shape)
                self.dtype = numeric_dtype(self._ds.dtype, f"{path}:{self.dataset}")
            # On disk, not through a link; at a URL, the chunks are fetched by ranges.
            where: int | RemoteObject | None = None
            if raw_paths_enabled() and self._remote is not None:
                where, name, size = (
                    self._remote.remote,
                    f"{shown(path)}:{self.dataset}",
                    self._remote.remote.size,
                )
            elif raw_paths_enabled() and os.path.samefile(self._ds.file.filename, path):
                self._raw_file = open(path, "rb")  # noqa: SIM115 - closed in close()
                fd = self._raw_file.fileno()
                where, name, size = fd, f"{path}:{self.dataset}", os.fstat(fd).st_size
            if where is not None:
                self._raw = raw_layout(self._ds, where, name)
                if self._raw is None:
                    self._deflate = deflate_layout(self._ds, where, name)
                for layout in (self._raw, self._deflate):
                    if layout is not None:
                        layout.check_inside(size)
            if self._raw is not None and self._raw_file is not None:
                try:
                    self._raw.mapping = mmap.mmap(self._raw_file.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    pass  # positioned reads only
        except BaseException:
            self.close()
            raise
        # h5py's reads at a URL (other filters) fetch a block's chunks together
        unread = self._raw is None and self._deflate is None
        self._spans = chunk_spans(self._ds) if self._remote is not None and unread else None
        reader = "raw offsets" if self._raw is not None else "h5py"
        if self._deflate is not None:
            reader = f"chunk offsets, {codecs.deflate_implementation()}"
        self.description = Description(reader=reader)

    def chunks(self) -> tuple[int, ...] | None:
        return tuple(self._ds.chunks) if self._ds.chunks else None

    def decoded_piece(self) -> tuple[int, str] | None:
        """A filtered (compressed) chunk is decoded whole; unfiltered data is read by region."""
        if self._raw is not None or not self._ds.chunks or not self._ds.id.get_create_plist().get_nfilters():
            return None
        return math.prod(self._ds.chunks) * self.dtype.itemsize, "a compressed chunk"

    def storage(self) -> dict[str, Any]:
        return {
            "format": "hdf5",
            "dataset": self.dataset,
            "chunks": list(self._ds.chunks) if self._ds.chunks else None,
            "compression": self._ds.compression,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if any(len(range(*sl.indices(n))) == 0 for sl, n in zip(index, self.shape)):
            extents = tuple(len(range(*sl.indices(n))) for sl, n in zip(index, self.shape))
            return np.empty(extents, dtype=self.dtype)
        if self._raw is not None:
            return self._raw.read(index)
        if self._deflate is not None:
            return self._deflate.read(index)
        try:
            if self._remote is not None and self._spans is not None:
                return read_prefetched(self._ds, self._remote, self._spans, index)
            return np.asarray(self._ds[index])
        except OSError as exc:
            if self._remote is not None:
                self._remote.raise_failure()
            raise FormatError(f"cannot read {self.path}:{self.dataset}: {first_line(exc)}") from None

    def release(self, index: tuple[slice, ...]) -> None:
        """Drop the pages of a finished block read from the map (not from the file)."""
        if self._raw is not None:
            box, _ = box_of(index, self.shape)
            self._raw.release(tuple(slice(a, b) for a, b in box))

    def close(self) -> None:
        # The map goes when the last block that uses it goes (its views hold it).
        if self._raw_file is not None:
            self._raw_file.close()
        self._file.close()


def auto_chunks(shape: tuple[int, ...], dtype: np.dtype, channel_axis: int) -> tuple[int, ...] | None:
    """About 1 MiB chunks of whole channel vectors (None for an empty dataset)."""
    if not shape or math.prod(shape) == 0:
        return None
    return chunk_shape(shape, dtype.itemsize, channel_axis, _CHUNK_TARGET_BYTES)


def _dataset_options(request: SinkRequest, direct: bool) -> dict[str, Any]:
    """h5py's create_dataset options for an output: chunks, compression and, for a new
    uncompressed file, space for every chunk now and no fill (blocks then go straight in)."""
    dtype, chunks = np.dtype(request.dtype), request.chunks
    if chunks == "auto" or (request.compression and chunks == "none"):
        chunks = auto_chunks(request.shape, dtype, request.channel_axis) or "none"
    opts: dict[str, Any] = {}
    if chunks != "none":
        opts["chunks"] = tuple(chunks)
    if request.compression:
        opts["compression"] = request.compression
        if request.compression == "gzip":
            opts["compression_opts"] = request.compression_level or GZIP_LEVEL
    if direct:
        h5py = _h5py()
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        opts.update(dcpl=dcpl, fill_time="never")
    return opts


def _write_hyperslab(ds: Any, where: str, index: tuple[slice, ...], block: np.ndarray) -> None:
    try:
        ds[index] = block
    except (OSError, ValueError, RuntimeError) as exc:
        raise write_failure(where, exc) from None


class H5Sink(FileSink):
    """A new HDF5 file written block by block into a temp file renamed on commit. An
    uncompressed dataset is written at the offsets HDF5 gave its chunks once h5py has
    closed the file."""

    def __init__(self, path: str, dataset: str | None, request: SinkRequest) -> None:
        super().__init__(path)
        self.dataset = dataset or "/data"
        self._file: Any = None
        self._raw: RawChunks | None = None
        self._chunk_writer: DeflateChunkWriter | None = None
        direct = not request.compression and raw_paths_enabled()
        with setting_up(self, f"{path}:{self.dataset}"):
            # A file h5py keeps open for the whole run is created anew, not truncated: see
            # atomic.open_empty. A file for raw offsets is truncated: h5py closes it once the
            # dataset exists, and that small flush also places h5py's first bytes, which ext4
            # otherwise leaves for later, so that replacing an older output wrote the whole
            # file back at the rename (0.16 s per 256 MiB).
            self._file = (
                _open_file(self.temp.path, "w") if direct else _open_file(made_anew(self.temp.path), "x")
            )
            self._ds = self._file.create_dataset(
                self.dataset, shape=request.shape, dtype=np.dtype(request.dtype),
                **_dataset_options(request, direct),
            )  # fmt: skip
            self._ds.attrs.update(request.attrs)
            self._raw = raw_layout(self._ds, -1, f"{path}:{self.dataset}") if direct else None
            self.writer = "raw offsets" if self._raw is not None else "h5py"
            if request.compression == "gzip" and raw_paths_enabled() and self._ds.chunks:
                level = request.compression_level or GZIP_LEVEL
                self._chunk_writer = DeflateChunkWriter(self._ds, f"{path}:{self.dataset}", level)
                self.writer = f"whole chunks, {codecs.deflate_implementation()}"
            if self._raw is not None:
                self._file.close()
                self._file = None
                self._raw.fd = os.open(self.temp.path, os.O_WRONLY)
                self._raw.reserve()

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size and self._raw is not None:
            self._raw.write_box(index, block)
        elif block.size and self._chunk_writer is not None:
            self._chunk_writer.write_box(index, block)
        elif block.size:
            _write_hyperslab(self._ds, f"{self.target}:{self.dataset}", index, block)

    def finish(self) -> None:
        if self._chunk_writer is not None:
            self._chunk_writer.flush()
        self.close_quietly()  # closing is all that is left: h5py or the raw fd flushes

    def close_quietly(self) -> None:
        if self._raw is not None and isinstance(self._raw.fd, int) and self._raw.fd >= 0:
            os.close(self._raw.fd)
        self._raw = None
        file, self._file = self._file, None  # closed at most once, even when closing fails
        if file is not None:
            file.close()


class H5MemberSink(FileSink):
    """A dataset added to (or replaced in) an existing HDF5 file.

    The file is copied to a temp file beside it, the dataset is written into the copy, and
    the copy is renamed over the file on commit: the user's file is either the old one,
    untouched, or the new one with the dataset complete, whatever fails in between (a full
    disk, a signal). The price is a copy of the container, the same disk space again.
    """

    writer = "h5py"

    def __init__(self, path: str, dataset: str, request: SinkRequest) -> None:
        check_readable(path)
        with _open_file(path, "r") as handle:
            if handle.get(dataset) is not None and not request.overwrite:
                raise OutputExistsError(
                    f"dataset {dataset!r} exists in {path!r}; pass [[overwrite!]] to replace it, "
                    "or choose another dataset name"
                )
        super().__init__(os.path.realpath(path), keep_mode=True)  # a link's file is edited
        self.dataset = dataset
        self._file: Any = None
        with setting_up(self, f"{path}:{dataset}"):
            shutil.copyfile(path, self.temp.path)
            shutil.copymode(path, self.temp.path)
            self._file = _open_file(self.temp.path, "r+")
            if self._file.get(dataset) is not None:
                del self._file[dataset]
            self._ds = self._file.create_dataset(
                dataset, shape=request.shape, dtype=np.dtype(request.dtype),
                **_dataset_options(request, direct=False),
            )  # fmt: skip
            self._ds.attrs.update(request.attrs)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size:
            _write_hyperslab(self._ds, f"{self.target}:{self.dataset}", index, block)

    def finish(self) -> None:
        self.close_quietly()

    def close_quietly(self) -> None:
        file, self._file = self._file, None  # closed at most once, even when closing fails
        if file is not None:
            file.close()


class Hdf5Format(Backend):
    """HDF5 files: any dataset read by name; outputs a new file, or a dataset added to one."""

    def open_source(self, spec: Spec) -> H5Source:
        return H5Source(spec.path, spec.member)

    def open_sink(self, spec: Spec, request: SinkRequest) -> Sink:
        if spec.member and is_url(spec.path) and exists(spec.path):
            # On disk the dataset is added to the file; an object can only be replaced whole,
            # which would drop its other datasets.
            raise UsageError(
                f"expected a new HDF5 object for {spec.text!r}, found {spec.path!r} there: pwconv adds a "
                "dataset to a file on disk only (at a URL the whole object would be replaced); write a "
                "new object, or download the file, add the dataset there and upload it"
            )
        if spec.member and os.path.exists(spec.path):
            return H5MemberSink(spec.path, spec.member, request)
        check_output_path(spec.path, request.overwrite)
        return H5Sink(spec.path, spec.member, request)

    def array_name(self, name: str) -> str:
        """HDF5 names are absolute: ``group/x`` is ``/group/x``."""
        return name if name.startswith("/") else "/" + name

    def list_arrays(self, path: str) -> list[str]:
        """Every dataset in the file, depth first."""
        check_readable(path)
        with _open_file(path, "r") as handle, _structure_errors(path):
            return list_datasets(handle)

    def read_labels(self, path: str, name: str) -> tuple[str, ...] | None:
        check_readable(path)
        with _open_file(path, "r") as handle, _structure_errors(path):
            ds = handle.get(self.array_name(name))
            if not isinstance(ds, _h5py().Dataset) or ds.dtype.kind not in "OS" or ds.ndim != 1:
                return None
            return tuple(label_text(v) for v in ds[...])

    def write_arrays(self, path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
        """Named arrays as datasets of a new HDF5 file, written atomically (text as HDF5 strings)."""
        h5py = _h5py()

        def write(temp: str) -> None:
            with h5py.File(temp, "w") as handle:
                for name, array in arrays.items():
                    if array.dtype.kind == "U":
                        handle.create_dataset(name, data=array.astype(object), dtype=h5py.string_dtype())
                    else:
                        handle[name] = array

        write_atomically(path, overwrite, write)
        return [path]
