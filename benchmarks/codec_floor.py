"""The codec floor of a compressed file-to-file run: decode every stored chunk of the input
and encode every chunk of the output, on all cores, with the fastest implementation of the
codec found here. Run by ``streaming.py --compressed``; prints one JSON line.

    python benchmarks/codec_floor.py KIND INPUT OUTPUT LEVEL

KIND is hdf5 (gzip chunks of dataset ``x`` in, ``/data`` out), netcdf (variable ``refl`` in and
``data`` out), zarr (zstd chunk files), zarr-blosc (blosc chunk files in, zstd out), tiff
(deflate tiles or strips), tiff-zstd or tiff-lzw (zstd or LZW tiles). OUTPUT is pwconv's output of the same case: its chunks are decoded first (not
timed) to give the bytes the floor encodes, at LEVEL, in chunks of the same size.

Each candidate (stdlib zlib; imagecodecs' libdeflate, zlib-ng and zstd; numcodecs' zstd) is
timed on the first chunks; the fastest decoder and encoder then run over every chunk, the
chunks spread over one thread per core (every candidate releases the GIL). The chunks' bytes
are read from the page cache into memory first, so the floor is the codec's time alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

Codec = Callable[[bytes], bytes]


def _hdf5_chunks(path: str, name: str) -> tuple[list[bytes], int]:
    import h5py

    with h5py.File(path, "r") as handle, open(path, "rb") as raw:
        ds = handle[name]
        chunk_bytes = ds.dtype.itemsize
        for n in ds.chunks:
            chunk_bytes *= n
        found: list[bytes] = []
        spans: list[tuple[int, int]] = []
        ds.id.chunk_iter(lambda info: spans.append((info.byte_offset, info.size)))
        for offset, size in spans:
            found.append(os.pread(raw.fileno(), size, offset))
    return found, chunk_bytes


def _zarr_chunks(path: str) -> tuple[list[bytes], int]:
    import zarr

    array = zarr.open_array(path, mode="r")
    chunk_bytes = array.dtype.itemsize
    for n in array.chunks:
        chunk_bytes *= n
    files = sorted(p for p in (Path(path) / "c").rglob("*") if p.is_file())
    return [p.read_bytes() for p in files], chunk_bytes


def _tiff_chunks(path: str) -> tuple[list[bytes], int]:
    import tifffile

    with tifffile.TiffFile(path) as tif, open(path, "rb") as raw:
        page = tif.pages[0]
        rows, cols = (
            (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        )
        chunk_bytes = min(rows, page.imagelength) * cols * page.samplesperpixel * page.dtype.itemsize
        if page.planarconfig == 2:  # one tile per band
            chunk_bytes //= page.samplesperpixel
        return [
            os.pread(raw.fileno(), size, offset)
            for offset, size in zip(page.dataoffsets, page.databytecounts)
        ], chunk_bytes


def decoders(kind: str, chunk_bytes: int) -> dict[str, Codec]:
    import imagecodecs

    if kind == "zarr-blosc":
        from numcodecs import Blosc

        return {"imagecodecs blosc": imagecodecs.blosc_decode, "numcodecs blosc": Blosc().decode}
    if kind == "tiff-zstd":
        from numcodecs import Zstd

        numcodecs_zstd = Zstd()
        return {
            "imagecodecs zstd": lambda data: imagecodecs.zstd_decode(data, out=chunk_bytes),
            "numcodecs zstd": numcodecs_zstd.decode,
        }
    if kind == "tiff-lzw":
        return {"imagecodecs lzw": lambda data: imagecodecs.lzw_decode(data, out=chunk_bytes)}
    if kind == "zarr":
        from numcodecs import Zstd

        numcodecs_zstd = Zstd()
        return {"imagecodecs zstd": imagecodecs.zstd_decode, "numcodecs zstd": numcodecs_zstd.decode}
    return {
        "zlib": zlib.decompress,
        "libdeflate": lambda data: imagecodecs.deflate_decode(data, out=chunk_bytes),
        "zlib-ng": imagecodecs.zlibng_decode,
    }


def encoders(kind: str, level: int) -> dict[str, Codec]:
    import imagecodecs

    if kind == "tiff-lzw":
        return {"imagecodecs lzw": imagecodecs.lzw_encode}
    if kind in ("zarr", "tiff-zstd"):
        from numcodecs import Zstd

        numcodecs_zstd = Zstd(level=level)
        return {
            "imagecodecs zstd": lambda data: imagecodecs.zstd_encode(data, level=level),
            "numcodecs zstd": numcodecs_zstd.encode,
        }
    return {
        "zlib": lambda data: zlib.compress(data, level),
        "libdeflate": lambda data: imagecodecs.deflate_encode(data, level=level),
        "zlib-ng": lambda data: imagecodecs.zlibng_encode(data, level=level),
    }


def _fastest(codecs: dict[str, Codec], sample: list[bytes]) -> str:
    timings = {}
    for name, codec in codecs.items():
        try:
            codec(sample[0])
        except Exception:  # noqa: BLE001 - a candidate that cannot handle this stream is no candidate
            continue
        start = time.perf_counter()
        for piece in sample:
            codec(piece)
        timings[name] = time.perf_counter() - start
    return min(timings, key=timings.__getitem__)


def _all_cores(codec: Codec, pieces: list[bytes]) -> float:
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        start = time.perf_counter()
        for _ in pool.map(codec, pieces):
            pass
        return time.perf_counter() - start


def main() -> None:
    kind, inp, out, level = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    read = {
        "hdf5": lambda p, role: _hdf5_chunks(p, "x" if role == "in" else "data"),
        "netcdf": lambda p, role: _hdf5_chunks(p, "refl"),  # the output keeps the name
        "zarr": lambda p, role: _zarr_chunks(p),
        "tiff": lambda p, role: _tiff_chunks(p),
        "tiff-zstd": lambda p, role: _tiff_chunks(p),
        "tiff-lzw": lambda p, role: _tiff_chunks(p),
        "zarr-blosc": lambda p, role: _zarr_chunks(p),
    }[kind]
    out_kind = {"zarr-blosc": "zarr"}.get(kind, kind)  # blosc in, zstd out
    stored_in, in_chunk = read(inp, "in")
    stored_out, out_chunk = read(out, "out")
    decode_name = _fastest(decoders(kind, in_chunk), stored_in[:16])
    decode = decoders(kind, in_chunk)[decode_name]
    out_decoders = decoders(out_kind, out_chunk)
    raw_out = [out_decoders[_fastest(out_decoders, stored_out[:4])](p) for p in stored_out]
    encode_name = _fastest(encoders(out_kind, level), raw_out[:16])
    encode = encoders(out_kind, level)[encode_name]
    decode_s = _all_cores(decode, stored_in)
    encode_s = _all_cores(encode, raw_out)
    print(
        json.dumps(
            {
                "decode": decode_name,
                "encode": encode_name,
                "decode_s": decode_s,
                "encode_s": encode_s,
                "floor_s": decode_s + encode_s,
                "in_chunks": len(stored_in),
                "in_ratio": sum(len(p) for p in stored_in) / (len(stored_in) * in_chunk),
                "out_chunks": len(raw_out),
            }
        )
    )


if __name__ == "__main__":
    main()
