"""Data behind URLs: an S3 API server (moto) and an HTTP server with byte ranges, both on
127.0.0.1. Results are compared with numpy's einsum on the same arrays, files read back
with boto3, GDAL and zarr; errors are one line with the documented exit code."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pwconv.io import stores
from tests.conftest import (
    WORKED_RESULT,
    assert_clean_error,
    modules_imported_by,
    raster_facts,
    run_cli,
    write_geotiff,
)
from tests.servers import FaultProxy, RangeServer, S3Server, free_port

pytest.importorskip("obstore")
pytest.importorskip("moto")

_numbers = itertools.count()


@pytest.fixture(scope="module")
def s3() -> S3Server:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"bucket-{os.getpid()}-{next(_numbers)}"
    s3.client().create_bucket(Bucket=name)
    return name


def put(s3: S3Server, bucket: str, key: str, path: Path) -> str:
    s3.client().upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def keys(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def fetch(s3: S3Server, bucket: str, key: str, path: Path) -> Path:
    s3.client().download_file(bucket, key, str(path))
    return path


def cube(shape: tuple[int, ...] = (48, 40, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def mixed(x: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.moveaxis(np.tensordot(np.moveaxis(x, axis, -1), w.T, axes=1), -1, axis)


def test_npy_from_s3_to_s3_matches_einsum(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    x, w = cube(), np.arange(15, dtype=np.float32).reshape(3, 5) / 10
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    source, weights = (
        put(s3, bucket, "in/x.npy", tmp_path / "x.npy"),
        put(s3, bucket, "w.npy", tmp_path / "w.npy"),
    )
    proc = run_cli("apply", source, weights, "-o", f"s3://{bucket}/out/y.npy", "--json", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    assert doc["output"]["path"] == f"s3://{bucket}/out/y.npy"
    y = np.load(fetch(s3, bucket, "out/y.npy", tmp_path / "y.npy"))
    np.testing.assert_allclose(y, np.einsum("hwc,kc->hwk", x, w), rtol=1e-5, atol=1e-6)
    # streamed in small blocks: each block is its own set of ranged reads
    proc = run_cli("apply", source, weights, "-o", tmp_path / "z.npy", "--max-memory", "1MB", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), mixed(x, w), rtol=1e-5, atol=1e-6)


def test_channels_first_blocks_read_by_ranges(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    x = cube((6, 300, 70), seed=1)
    w = np.random.default_rng(2).random((2, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    source = put(s3, bucket, "x.npy", tmp_path / "x.npy")
    proc = run_cli(
        "apply", source, tmp_path / "w.npy", "-o", tmp_path / "y.npy", "--layout", "channels-first",
        "--max-memory", "2MB", env=s3.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w, 0), rtol=1e-5, atol=1e-6)


def _partial_zarr(
    path: Path, x: np.ndarray, chunks: tuple[int, ...], compressors: object, **extra: object
) -> None:
    """A zarr v3 array of ``x`` whose first chunk is never written (it reads as the fill
    value 7.5); ``extra`` goes to zarr (a key encoding)."""
    zarr = pytest.importorskip("zarr")
    array = zarr.create_array(
        str(path), shape=x.shape, dtype=x.dtype, chunks=chunks, compressors=compressors, fill_value=7.5,
        zarr_format=3, **extra,
    )  # fmt: skip
    array[chunks[0] :] = x[chunks[0] :]


_ZARR_LAYOUTS = {
    # a chunk of 9.6 MB: fetched as two pieces, the first straight into the block
    "plain, large chunks": dict(shape=(50, 400, 12), chunks=(30, 400, 12)),
    "plain, edge chunks": dict(shape=(23, 17, 6), chunks=(5, 7, 6)),
    "plain, v2 keys": dict(shape=(23, 17, 6), chunks=(5, 17, 6), chunk_key_encoding={"name": "v2"}),
    "zstd": dict(shape=(23, 17, 6), chunks=(5, 7, 6), compressors="zstd"),
    "blosc": dict(shape=(23, 17, 6), chunks=(6, 17, 6), compressors="blosc"),
}


@pytest.mark.parametrize("layout", list(_ZARR_LAYOUTS))
@pytest.mark.parametrize("server", ["http", "s3"])
def test_zarr_chunks_at_a_url_are_read_by_pwconv(
    layout: str, server: str, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Plain, zstd and blosc chunks at a URL are fetched and decoded by pwconv (info names the
    reader), in blocks larger and smaller than a chunk, equal to zarr's read of the store on
    disk: edge chunks, a chunk never written (the fill value), v2 keys, a group's member."""
    zarr = pytest.importorskip("zarr")
    from zarr.codecs import BloscCodec, ZstdCodec

    settings = dict(_ZARR_LAYOUTS[layout])
    shape, chunks = settings.pop("shape"), settings.pop("chunks")
    compressor = settings.pop("compressors", None)
    codecs = {None: None, "zstd": ZstdCodec(level=3), "blosc": BloscCodec(cname="lz4")}[compressor]
    x = cube(shape, seed=46)
    _partial_zarr(tmp_path / "g.zarr" / "inner", x, chunks, codecs, **settings)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="a")  # the group's own zarr.json
    expected = zarr.open_array(str(tmp_path / "g.zarr" / "inner"), mode="r")[:]
    assert (expected[: chunks[0]] == 7.5).all()
    w = np.random.default_rng(47).standard_normal((2, shape[-1])).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    http = RangeServer(str(tmp_path)) if server == "http" else None
    try:
        if http is not None:
            base, env = f"{http.url}/g.zarr", None
        else:
            for file in sorted((tmp_path / "g.zarr").rglob("*")):
                if file.is_file():
                    put(s3, bucket, f"g.zarr/{file.relative_to(tmp_path / 'g.zarr').as_posix()}", file)
            base, env = f"s3://{bucket}/g.zarr", s3.env
        info = run_cli("info", f"{base}:inner", "--json", env=env)
        assert info.returncode == 0, info.stderr
        reader = json.loads(info.stdout)[0]["reader"]
        assert reader == (
            "chunk files" if compressor is None else f"chunk files, {compressor} by imagecodecs"
        )
        for budget in ("64MB", "200KB"):
            out = tmp_path / f"y-{budget}.npy"
            proc = run_cli(
                "apply", f"{base}:inner", tmp_path / "w.npy", "-o", out, "--max-memory", budget, env=env
            )
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_allclose(np.load(out), mixed(expected, w), rtol=1e-5, atol=1e-5)
    finally:
        if http is not None:
            http.stop()


def test_damaged_zarr_chunks_at_a_url_are_one_line_errors(tmp_path: Path) -> None:
    """A plain chunk of the wrong size and a zstd chunk that does not decode: exit 2 naming
    the chunk's URL, no output."""
    pytest.importorskip("zarr")
    from zarr.codecs import ZstdCodec

    x = cube((10, 8, 4), seed=48)
    _partial_zarr(tmp_path / "plain.zarr", x, (5, 8, 4), None)
    _partial_zarr(tmp_path / "zstd.zarr", x, (5, 8, 4), ZstdCodec(level=1))
    (tmp_path / "plain.zarr" / "c" / "1" / "0" / "0").write_bytes(b"short")
    (tmp_path / "zstd.zarr" / "c" / "1" / "0" / "0").write_bytes(b"\x28\xb5\x2f\xfd not zstd")
    server = RangeServer(str(tmp_path))
    try:
        for name, words in (("plain", "640 bytes"), ("zstd", "c/1/0/0")):
            out = tmp_path / f"{name}.npy"
            proc = run_cli("apply", f"{server.url}/{name}.zarr", "1,2,3,4", "-o", out)
            assert_clean_error(proc, 2, words)
            assert f"{server.url}/{name}.zarr/c/1/0/0" in proc.stderr, proc.stderr
            assert not out.exists()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "extra",
    [
        ["--chunks", "16,50,2"],
        ["--chunks", "24,32,2", "--max-memory", "20KB"],
        ["--chunks", "24,32,2", "--compression", "zstd", "--max-memory", "20KB"],
        ["--chunks", "24,32,2", "--compression", "gzip", "--max-memory", "20KB"],
    ],
    ids=["plain", "plain, edge chunks cut by small blocks", "zstd, the same", "gzip (zarr's), the same"],
)
def test_zarr_written_to_s3_chunks_then_metadata_and_read_back(
    s3: S3Server, bucket: str, tmp_path: Path, extra: list[str]
) -> None:
    """Whole chunks are put from memory as their blocks are written (zstd-encoded where
    asked), the metadata last; zarr reads the store back, and so does pwconv, in place."""
    zarr = pytest.importorskip("zarr")
    x, w = cube((64, 50, 4), seed=3), np.eye(4, dtype=np.float32)[:2]
    np.save(tmp_path / "x.npy", x)
    target = f"s3://{bucket}/cube.zarr"
    proc = run_cli("apply", tmp_path / "x.npy", "1,0,0,0;0,1,0,0", "-o", target, *extra, env=s3.env)
    assert proc.returncode == 0, proc.stderr
    written = keys(s3, bucket, "cube.zarr/")
    chunks = 4 if extra == ["--chunks", "16,50,2"] else 3 * 2
    assert "cube.zarr/zarr.json" in written and len(written) == chunks + 1, written
    local = tmp_path / "copy.zarr"
    for key in written:
        (local / key[len("cube.zarr/") :]).parent.mkdir(parents=True, exist_ok=True)
        fetch(s3, bucket, key, local / key[len("cube.zarr/") :])
    np.testing.assert_allclose(zarr.open_array(str(local), mode="r")[:], mixed(x, w))
    # pwconv reads the store in place, and an overwrite leaves no chunk of the old one
    proc = run_cli("apply", target, "1,1", "-o", tmp_path / "sum.npy", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "sum.npy")[..., 0], x[..., 0] + x[..., 1], rtol=1e-6)
    proc = run_cli("apply", tmp_path / "x.npy", "1,0,0,0", "-o", target, "--overwrite", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    assert keys(s3, bucket, "cube.zarr/") == ["cube.zarr/c/0/0/0", "cube.zarr/zarr.json"]


def test_geotiff_on_s3_keeps_georeferencing_both_ways(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    bands = np.random.default_rng(4).random((4, 90, 70)).astype(np.float32)
    write_geotiff(tmp_path / "scene.tif", bands, ("blue", "green", "red", "nir"), nodata=-1.0)
    source = put(s3, bucket, "scenes/scene.tif", tmp_path / "scene.tif")
    proc = run_cli("apply", source, "0,0,-1,1", "-o", f"s3://{bucket}/out/diff.tif", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(fetch(s3, bucket, "out/diff.tif", tmp_path / "diff.tif")) as ds:
        assert ds.crs.to_string() == "EPSG:32633" and ds.transform.c == 500000
        np.testing.assert_allclose(ds.read(1), bands[3] - bands[2], rtol=1e-6, atol=1e-6)
    proc = run_cli("info", source, "--json", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["labels"] == {"2": ["blue", "green", "red", "nir"]}


def test_weights_and_banks_from_s3_and_a_fitted_bank_to_s3(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    x = cube((40, 30, 6), seed=5)
    w = np.random.default_rng(6).random((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "bank.npz", weights=w, bias=np.array([1, 2, 3], np.float32))
    bank = put(s3, bucket, "models/bank.npz", tmp_path / "bank.npz")
    proc = run_cli("apply", tmp_path / "x.npy", bank, "-o", tmp_path / "y.npy", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w) + [1, 2, 3], rtol=1e-5)
    source = put(s3, bucket, "x.npy", tmp_path / "x.npy")
    proc = run_cli("fit", "pca", source, "-k", "2", "-o", f"s3://{bucket}/models/pca.npz", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    fitted = np.load(fetch(s3, bucket, "models/pca.npz", tmp_path / "pca.npz"))
    flat = x.reshape(-1, 6).astype(np.float64)
    top = np.linalg.eigh(np.cov(flat, rowvar=False))[1][:, ::-1][:, :2].T
    np.testing.assert_allclose(np.abs(fitted["weights"]), np.abs(top), atol=1e-5)


def test_opening_an_object_fetches_its_size_and_first_bytes_in_one_request(tmp_path: Path) -> None:
    """The request that learns an object's size brings its first HEAD_BYTES: info on an npy
    at a URL is one request (two before), and a small input and bank come whole with it (an
    apply took 8 requests before, then 3 with the bank's digest, now 2)."""
    x = cube((20, 10, 6), seed=44)
    w = np.random.default_rng(45).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        info = run_cli("info", f"{server.url}/x.npy", "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)[0]["shape"] == [20, 10, 6]
        assert server.requests == 1
        proc = run_cli("apply", f"{server.url}/x.npy", f"{server.url}/w.npy", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w), rtol=1e-5)
        assert server.asked[1:] == ["GET /w.npy", "GET /x.npy"], server.asked  # the bank's digest reuses it
    finally:
        server.stop()


def test_a_small_object_kept_whole_is_forgotten_once_pwconv_writes(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small object opened whole is kept for the process, and any write or removal by pwconv
    forgets it: a read after pwconv's own write sees the new bytes."""
    from pwconv.io import stores

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "a.bin").write_bytes(b"first")
    url = put(s3, bucket, "a.bin", tmp_path / "a.bin")
    assert bytes(stores.RemoteObject(url).read_range(0, 5)) == b"first"
    s3.client().put_object(Bucket=bucket, Key="a.bin", Body=b"other")  # behind pwconv's back
    assert bytes(stores.RemoteObject(url).read_range(0, 5)) == b"first"  # kept: the run sees one object
    stores.put_object(url, b"third!")
    assert bytes(stores.RemoteObject(url).read_range(0, 6)) == b"third!"
    stores.remove(url)
    with pytest.raises(stores.MissingObject):
        stores.RemoteObject(url)


def test_an_empty_object_is_a_format_error_not_a_failed_range(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """No range fits an empty object (416): its size is then asked, and the reader says what
    it expected, as for an empty file on disk."""
    (tmp_path / "empty.npy").write_bytes(b"")
    url = put(s3, bucket, "empty.npy", tmp_path / "empty.npy")
    proc = run_cli("info", url, env=s3.env)
    assert_clean_error(proc, 2, "expected an npy file", "save the array with numpy.save")


def test_a_small_bank_over_http_is_fetched_once(tmp_path: Path) -> None:
    """A bank's zip is opened by several readers (names, labels, tensors, its digest): the
    first open fetches the whole small object, which the others reuse (33 requests for an
    apply with a bank over HTTP two stops ago, 7 before it was kept)."""
    x = cube((20, 10, 6), seed=42)
    w = np.random.default_rng(43).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "bank.npz", weights=w, bias=np.array([1, 2, 3], np.float32))
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("apply", tmp_path / "x.npy", f"{server.url}/bank.npz", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w) + [1, 2, 3], rtol=1e-5)
        assert server.asked == ["GET /bank.npz"], server.asked  # 7 requests before it was kept whole
    finally:
        server.stop()


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "whole answers"])
def test_a_large_npy_over_http_is_read_in_pieces_into_place(tmp_path: Path, ranges: bool) -> None:
    """A 24 MiB input is fetched as 8 MiB pieces, each read from the socket into its place in
    the block; a server that ignores Range sends the whole file for each piece, of which
    pwconv keeps the piece's bytes. Both equal the product of the file on disk."""
    x = cube((48, 1024, 128), seed=44)
    w = np.random.default_rng(45).standard_normal((3, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path), ranges=ranges)
    try:
        proc = run_cli("apply", f"{server.url}/x.npy", tmp_path / "w.npy", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w), rtol=1e-4, atol=1e-4)
        if ranges:
            assert server.sent < 1.01 * x.nbytes + (1 << 20), server.sent
    finally:
        server.stop()


def test_presigned_url_query_never_shown(tmp_path: Path) -> None:
    x = cube((30, 20, 3), seed=7)
    np.save(tmp_path / "x.npy", x)
    server = RangeServer(str(tmp_path), token="s3cr3t-signature")
    try:
        url = f"{server.url}/x.npy?X-Amz-Signature=s3cr3t-signature"
        out = tmp_path / "y.h5"
        proc = run_cli("apply", url, "1,2,3", "-o", out, "--json")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(
            __import__("h5py").File(out)[next(iter(__import__("h5py").File(out)))][:][..., 0], x @ [1, 2, 3],
            rtol=1e-5,
        )  # fmt: skip
        everything = proc.stdout.decode() + proc.stderr + out.read_bytes().decode("latin1")
        assert "s3cr3t" not in everything
        assert f"{server.url}/x.npy?..." in proc.stdout.decode()
        denied = run_cli("info", f"{server.url}/x.npy?X-Amz-Signature=wrong-one")
        assert_clean_error(denied, 2, "denied", f"{server.url}/x.npy?...")
        assert "wrong-one" not in denied.stderr
    finally:
        server.stop()


def test_explain_code_for_inputs_at_urls_runs_and_keeps_the_signature_out(tmp_path: Path) -> None:
    """numpy and h5py take no URL: the code reads the input and the weights through pwconv,
    and a presigned URL appears without its query string."""
    h5py = pytest.importorskip("h5py")
    x, w = cube((6, 5, 4), seed=41), np.random.default_rng(42).random((2, 4)).astype(np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["cube"] = x
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("explain", f"{server.url}/x.h5:/cube", f"{server.url}/w.npy", "--code", "numpy")
        assert proc.returncode == 0, proc.stderr
        code = proc.stdout.decode()
        assert f"pwconv.load_array('{server.url}/x.h5', '/cube')" in code, code
        (tmp_path / "snippet.py").write_text(code + "\nnp.save('snippet_out.npy', y)\n")
        ran = subprocess.run(
            [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stderr
        np.testing.assert_allclose(np.load(tmp_path / "snippet_out.npy"), mixed(x, w), rtol=1e-5)
    finally:
        server.stop()
    signed = RangeServer(str(tmp_path), token="s3cr3t-signature")
    try:
        url = f"{signed.url}/w.npy?X-Amz-Signature=s3cr3t-signature"
        proc = run_cli("explain", tmp_path / "x.h5:/cube", url, "--code", "numpy")
        assert proc.returncode == 0, proc.stderr
        code = proc.stdout.decode()
        assert "s3cr3t" not in code + proc.stderr
        assert f"pwconv.load_weights('{signed.url}/w.npy?...')  # the URL's query string" in code, code
    finally:
        signed.stop()


def test_explain_on_http_reads_a_few_ranges_not_the_file(tmp_path: Path) -> None:
    x = cube((4, 1024, 1024), seed=8)  # 16 MiB, channels first: planes 4 MiB apart
    np.save(tmp_path / "x.npy", x)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("explain", f"{server.url}/x.npy", "1,1,1,1", "--at", "100,100", "--layout",
                       "channels-first", "--json")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["results"][0]["sum"] == pytest.approx(
            float(x[:, 100, 100].sum()), rel=1e-5
        )
        assert server.sent < os.path.getsize(tmp_path / "x.npy") / 100, server.sent
        before = server.sent
        proc = run_cli("info", f"{server.url}/x.npy")
        assert proc.returncode == 0, proc.stderr
        assert server.sent - before <= stores.HEAD_BYTES  # the first bytes, with the size
    finally:
        server.stop()


def test_an_input_at_a_url_is_streamed_even_when_it_fits(tmp_path: Path) -> None:
    """48 MiB over HTTP under a --max-memory that holds it (one block for a local file): read
    in streamed blocks, so that fetching one overlaps writing the one before."""
    x = cube((96, 2048, 64), seed=41)  # 48 MiB
    np.save(tmp_path / "x.npy", x)
    w = np.random.default_rng(42).standard_normal((4, 64)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    memory = ["--max-memory", "96MB", "--json"]
    local = run_cli("apply", tmp_path / "x.npy", tmp_path / "w.npy", "-o", tmp_path / "a.npy", *memory)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)[0]["blocks"] == 1
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("apply", f"{server.url}/x.npy", tmp_path / "w.npy", "-o", tmp_path / "b.npy", *memory)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["blocks"] > 1
        np.testing.assert_allclose(np.load(tmp_path / "b.npy"), mixed(x, w), rtol=1e-5, atol=1e-4)
    finally:
        server.stop()


def test_hdf5_over_http_reads_its_chunks_not_the_file(tmp_path: Path) -> None:
    """h5py reads an HDF5 object through a ranged file object: explain and info fetch the
    metadata and a few chunks, apply reads every chunk (compressed and contiguous datasets)."""
    h5py = pytest.importorskip("h5py")
    x = cube((512, 512, 8), seed=30)  # 8 MiB a dataset
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_dataset("cube", data=x, chunks=(64, 64, 8), compression="gzip")
        handle.create_dataset("plain", data=x)
    size = os.path.getsize(tmp_path / "x.h5")
    w = np.random.default_rng(31).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("explain", f"{server.url}/x.h5:/cube", tmp_path / "w.npy", "--at", "100,200", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["results"][0]["sum"] == pytest.approx(
            float(x[100, 200] @ w[0]), rel=1e-5, abs=1e-5
        )
        assert server.sent < size / 10, (server.sent, size)
        before = server.sent
        proc = run_cli("info", f"{server.url}/x.h5:/plain")
        assert proc.returncode == 0, proc.stderr
        assert server.sent - before < size / 50, server.sent - before
        for name in ("cube", "plain"):
            out = tmp_path / f"{name}.npy"
            proc = run_cli(
                "apply", f"{server.url}/x.h5:/{name}", tmp_path / "w.npy", "-o", out, "--max-memory", "1MiB"
            )
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_allclose(np.load(out), mixed(x, w), rtol=1e-5, atol=1e-5)
    finally:
        server.stop()


def test_one_tensor_of_a_safetensors_model_over_http_is_read_by_range(tmp_path: Path) -> None:
    """WEIGHTS as ``URL:tensor`` of a model file: the header and that tensor are fetched, not
    the 8 MiB tensor beside it; ``info`` reads the header only; a bank's names come along."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(33)
    w = rng.standard_normal((4, 5, 1, 1)).astype(np.float32)
    save_file({"embed": rng.standard_normal((2048, 1024)).astype(np.float32), "conv.weight": w},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    size = os.path.getsize(tmp_path / "model.safetensors")
    x = cube((32, 24, 5), seed=34)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("export", "0.1,0.2,0.3,0.4,0.5;1,0,0,0,-1", "-o", tmp_path / "bank.safetensors")
    assert proc.returncode == 0, proc.stderr
    server = RangeServer(str(tmp_path))
    try:
        out = tmp_path / "y.npy"
        proc = run_cli("apply", tmp_path / "x.npy", f"{server.url}/model.safetensors:conv.weight", "-o", out)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out), mixed(x, w[:, :, 0, 0]), rtol=1e-5, atol=1e-5)
        assert server.sent < size / 20, (server.sent, size)
        before = server.sent
        proc = run_cli("info", f"{server.url}/model.safetensors", "--json")
        assert proc.returncode == 0, proc.stderr
        assert server.sent - before < 64 << 10
        proc = run_cli(
            "apply", tmp_path / "x.npy", f"{server.url}/bank.safetensors", "-o", tmp_path / "b.npy"
        )
        assert proc.returncode == 0, proc.stderr
        expected = mixed(x, np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [1, 0, 0, 0, -1]], np.float32))
        np.testing.assert_allclose(np.load(tmp_path / "b.npy"), expected, rtol=1e-5, atol=1e-5)
    finally:
        server.stop()


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".compressed.npz"])
def test_one_tensor_of_a_torch_or_npz_file_over_http_is_read_by_range(tmp_path: Path, suffix: str) -> None:
    """A zip-based model file at a URL: its directory, the pickle (torch) and the one member
    named are fetched, not the 8 MiB tensor beside it; a deflated npz member too."""
    rng = np.random.default_rng(44)
    w, embed = (
        rng.standard_normal((3, 5)).astype(np.float32),
        rng.standard_normal((2048, 1024)).astype(np.float32),
    )
    name = f"model{suffix}"
    if suffix == ".pt":
        torch = pytest.importorskip("torch")
        torch.save(
            {"embed": torch.from_numpy(embed), "head": {"weight": torch.from_numpy(w)}}, tmp_path / name
        )
        member = "head.weight"
    else:
        save = np.savez_compressed if suffix.startswith(".compressed") else np.savez
        save(tmp_path / name, embed=embed, weight=w)
        member = "weight"
    size = os.path.getsize(tmp_path / name)
    x = cube((20, 16, 5), seed=45)
    np.save(tmp_path / "x.npy", x)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("apply", tmp_path / "x.npy", f"{server.url}/{name}:{member}", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mixed(x, w), rtol=1e-5, atol=1e-5)
        assert server.sent < size / 20, (server.sent, size)
        before = server.sent
        proc = run_cli("info", f"{server.url}/{name}", "--json")
        assert proc.returncode == 0, proc.stderr
        assert server.sent - before < size / 20, (server.sent - before, size)
        missing = run_cli("apply", tmp_path / "x.npy", f"{server.url}/missing{suffix}:{member}", "-o",
                          tmp_path / "z.npy")  # fmt: skip
        assert_clean_error(missing, 2, "no such object")
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["hdf5", "netcdf"])
def test_a_block_fetches_its_chunks_together(tmp_path: Path, kind: str) -> None:
    """Each block's chunks are fetched at once (neighbours joined), not one request per chunk
    as h5py asks for them: 256 gzip chunks in far fewer requests (137 before, one or two
    chunks a request)."""
    x = cube((512, 512, 8), seed=37)
    if kind == "hdf5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "x.h5", "w") as handle:
            handle.create_dataset("cube", data=x, chunks=(32, 32, 8), compression="gzip")  # 256 chunks
        name = "x.h5:/cube"
    else:
        h5netcdf = pytest.importorskip("h5netcdf")
        with h5netcdf.File(tmp_path / "x.nc", "w") as handle:
            handle.dimensions = {"y": 512, "x": 512, "band": 8}
            var = handle.create_variable("cube", ("y", "x", "band"), np.float32, chunks=(32, 32, 8),
                                         compression="gzip")  # fmt: skip
            var[...] = x
        name = "x.nc:cube"
    w = np.random.default_rng(38).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        out = tmp_path / "y.npy"
        proc = run_cli("apply", f"{server.url}/{name}", tmp_path / "w.npy", "-o", out, "--max-memory", "2MiB")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out), mixed(x, w), rtol=1e-5, atol=1e-5)
        assert server.requests < 64, server.requests
    finally:
        server.stop()


def test_spans_of_byte_ranges_come_back_whole_in_pieces_fetched_together(tmp_path: Path) -> None:
    """Neighbouring ranges are joined into one span, and a span is fetched in pieces of
    PIECE bytes (several requests in flight), each range's bytes exactly where it lies."""
    from pwconv.io.stores import PIECE, RemoteObject

    data = np.random.default_rng(41).integers(0, 256, 3 * PIECE + 12345, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    server = RangeServer(str(tmp_path))
    try:
        remote = RemoteObject(f"{server.url}/blob.bin")
        before = server.requests
        starts = [5, PIECE - 3, 2 * PIECE + 100, len(data) - 10]
        ends = [PIECE - 3, 2 * PIECE + 50, 3 * PIECE, len(data)]
        got = remote.read_spans(starts, ends)
        assert [bytes(part) for part in got] == [data[s:e] for s, e in zip(starts, ends)]
        assert server.requests - before == 4  # one span of 3 pieces and a bit
        small = remote.read_spans([10, 100], [20, 110])
        assert [bytes(part) for part in small] == [data[10:20], data[100:110]]
    finally:
        server.stop()


def test_a_compressed_geotiff_over_http_has_its_blocks_fetched_and_decoded_by_pwconv(tmp_path: Path) -> None:
    """GDAL opens the file; pwconv fetches a block's tiles together and decodes them itself:
    the data is GDAL's, in far fewer requests than tiles, and explain fetches a few tiles."""
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("imagecodecs")
    from rasterio.transform import from_origin

    bands = np.random.default_rng(39).random((4, 512, 384)).astype(np.float32)  # 3 MiB
    profile = {
        "driver": "GTiff", "height": 512, "width": 384, "count": 4, "dtype": "float32", "tiled": True,
        "blockxsize": 32, "blockysize": 32, "compress": "deflate", "predictor": 3, "crs": "EPSG:32633",
        "transform": from_origin(500000, 4200000, 30, 30),
    }  # fmt: skip
    with rasterio.open(tmp_path / "x.tif", "w", **profile) as ds:  # 192 tiles
        ds.write(bands)
    w = np.random.default_rng(40).standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        info = run_cli("info", f"{server.url}/x.tif", "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)[0]["reader"] == "block offsets, deflate"
        before = server.requests
        out = tmp_path / "y.npy"
        proc = run_cli("apply", f"{server.url}/x.tif", tmp_path / "w.npy", "-o", out, "--max-memory", "4MiB")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out), mixed(np.moveaxis(bands, 0, -1), w), rtol=1e-5, atol=1e-5)
        assert server.requests - before < 64, server.requests - before
        sent = server.sent
        proc = run_cli("explain", f"{server.url}/x.tif", tmp_path / "w.npy", "--at", "100,200")
        assert proc.returncode == 0, proc.stderr
        assert server.sent - sent < (tmp_path / "x.tif").stat().st_size / 10
    finally:
        server.stop()


def test_windows_cutting_across_uncompressed_tiles_fetch_only_the_rows_they_need(tmp_path: Path) -> None:
    """Tiles of 8 MiB (16 bands of 256 x 512) read in windows of about 100 rows (an output
    written front to back, here a pipe): each window fetches its rows of each tile, and the
    file is transferred about once (whole tiles: each tile for every window that met it)."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    bands = np.random.default_rng(57).random((16, 512, 512)).astype(np.float32)  # 16 MiB
    profile = {
        "driver": "GTiff", "height": 512, "width": 512, "count": 16, "dtype": "float32", "tiled": True,
        "blockxsize": 512, "blockysize": 256, "crs": "EPSG:32633", "transform": from_origin(500000, 4200000, 30, 30),
    }  # fmt: skip
    with rasterio.open(tmp_path / "x.tif", "w", **profile) as ds:
        ds.write(bands)
    w = np.random.default_rng(58).standard_normal((2, 16)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("apply", f"{server.url}/x.tif", tmp_path / "w.npy", "-o", "-", "--max-memory", "8MB")
        assert proc.returncode == 0, proc.stderr
        assert int(re.search(r"\((\d+) blocks", proc.stderr).group(1)) >= 4, proc.stderr
        got = np.load(io.BytesIO(proc.stdout))
        np.testing.assert_allclose(got, mixed(np.moveaxis(bands, 0, -1), w), rtol=1e-5, atol=1e-5)
        assert server.sent < 1.2 * (tmp_path / "x.tif").stat().st_size, server.sent
    finally:
        server.stop()


def test_a_geotiff_at_a_url_is_opened_without_asking_for_sidecar_files(tmp_path: Path) -> None:
    """GDAL listed the folder and asked for 38 names beside a GeoTIFF (.aux.xml, .ovr, .msk,
    _MTL.txt, ...) at every open, each a request: now only the file itself is asked for."""
    x = cube((40, 30, 3), seed=46)
    write_geotiff(tmp_path / "scene.tif", np.moveaxis(x, -1, 0).copy())
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("apply", f"{server.url}/scene.tif", "1,0,-1", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(
            np.load(tmp_path / "y.npy")[..., 0], x[..., 0] - x[..., 2], rtol=1e-5, atol=1e-5
        )
        assert {line.split(" ", 1)[1] for line in server.asked} == {"/scene.tif"}, server.asked
        assert len(server.asked) <= 6, server.asked
    finally:
        server.stop()


def test_gdal_retries_a_busy_server_and_names_one_that_stays_busy(tmp_path: Path) -> None:
    """GDAL made no retries: a 503 to its request ended the run as a raster it cannot read
    (exit 2). Now it retries with backoff, as pwconv's own requests do; a server busy for
    good is the network's failure (exit 1), one line naming the URL and the status."""
    x = cube((40, 30, 3), seed=47)
    write_geotiff(tmp_path / "scene.tif", np.moveaxis(x, -1, 0).copy())
    every_other = RangeServer(str(tmp_path), busy=lambda method, n: 503 if n % 2 == 0 else None)
    try:
        proc = run_cli("apply", f"{every_other.url}/scene.tif", "1,0,-1", "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(
            np.load(tmp_path / "y.npy")[..., 0], x[..., 0] - x[..., 2], rtol=1e-5, atol=1e-5
        )
    finally:
        every_other.stop()
    heads_refused = RangeServer(str(tmp_path), busy=lambda method, n: 503 if method == "HEAD" else None)
    try:
        url = f"{heads_refused.url}/scene.tif"
        proc = run_cli("apply", url, "1,0,-1", "-o", tmp_path / "z.npy")
        assert_clean_error(proc, 1, url, "503")
        assert not (tmp_path / "z.npy").exists()
    finally:
        heads_refused.stop()


def test_netcdf_over_http_reads_its_chunks_not_the_file(tmp_path: Path) -> None:
    """A NetCDF-4 variable at a URL through the same ranged file object: its dimensions and
    nodata are read, explain fetches a few chunks, apply reads them all."""
    h5netcdf = pytest.importorskip("h5netcdf")
    x = cube((6, 400, 400), seed=35)  # (band, y, x): 3.7 MiB
    x[:, 0, 0] = -9999.0
    with h5netcdf.File(tmp_path / "x.nc", "w") as handle:
        handle.dimensions = {"band": 6, "y": 400, "x": 400}
        var = handle.create_variable("refl", ("band", "y", "x"), np.float32, chunks=(6, 50, 50),
                                     compression="gzip", fillvalue=np.float32(-9999.0))  # fmt: skip
        var[...] = x
    size = os.path.getsize(tmp_path / "x.nc")
    w = np.random.default_rng(36).standard_normal((2, 6)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("explain", f"{server.url}/x.nc:refl", tmp_path / "w.npy", "--at", "120,300",
                       "--channel-dim", "band", "--json")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["results"][0]["sum"] == pytest.approx(
            float(w[0] @ x[:, 120, 300]), rel=1e-5, abs=1e-5
        )
        assert server.sent < size / 5, (server.sent, size)
        out = tmp_path / "y.npy"
        proc = run_cli("apply", f"{server.url}/x.nc:refl", tmp_path / "w.npy", "--channel-dim", "band", "-o", out,
                       "--max-memory", "1MiB")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        y = np.load(out)
        expected = mixed(x, w, axis=0)
        assert np.isnan(y[:, 0, 0]).all()  # the fill value is nodata
        np.testing.assert_allclose(y[:, 1:, 1:], expected[:, 1:, 1:], rtol=1e-5, atol=1e-5)
    finally:
        server.stop()


def test_a_virtual_hdf5_dataset_at_a_url_is_refused(tmp_path: Path) -> None:
    """Its sources are other files, which pwconv does not look for beside a URL: one line,
    exit 2, also with --allow-external, and nothing written."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "part.h5", "w") as handle:
        handle["x"] = cube((8, 8, 3), 43)
    layout = h5py.VirtualLayout(shape=(8, 8, 3), dtype="float32")
    layout[...] = h5py.VirtualSource("part.h5", "x", shape=(8, 8, 3))
    with h5py.File(tmp_path / "virtual.h5", "w") as handle:
        handle.create_virtual_dataset("v", layout)
    server = RangeServer(str(tmp_path))
    try:
        out = tmp_path / "y.npy"
        proc = run_cli("apply", f"{server.url}/virtual.h5:/v", "1,1,1", "-o", out, "--allow-external")
        assert_clean_error(proc, 2, "virtual dataset", "download the file")
        assert not out.exists()
    finally:
        server.stop()


@pytest.mark.parametrize("codec", [None, "zstd"], ids=["plain", "zstd"])
def test_zarr_chunks_lost_in_mid_read_are_a_network_error(tmp_path: Path, codec: str | None) -> None:
    """A server that goes away after the store was opened: pwconv's chunk reads fail with
    its network error (exit 1), not as a corrupt chunk."""
    pytest.importorskip("zarr")
    from zarr.codecs import ZstdCodec

    _partial_zarr(tmp_path / "s.zarr", cube((12, 8, 4), 51), (4, 8, 4), ZstdCodec(level=1) if codec else None)
    read_after_the_server_went(tmp_path, "s.zarr")


def test_a_zarr_group_over_plain_http_names_its_arrays_in_full(tmp_path: Path) -> None:
    """Plain HTTP lists no folders: a group's array named in full is read; the group alone
    is exit 2 in one line naming that spelling, and writes nothing."""
    zarr = pytest.importorskip("zarr")
    _partial_zarr(tmp_path / "g.zarr" / "inner", cube((12, 8, 4), 52), (4, 8, 4), None)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="a")
    server = RangeServer(str(tmp_path))
    try:
        named = run_cli("apply", f"{server.url}/g.zarr:inner", "1,1,1,1", "-o", tmp_path / "y.npy")
        assert named.returncode == 0, named.stderr
        proc = run_cli("apply", f"{server.url}/g.zarr", "1,1,1,1", "-o", tmp_path / "z.npy")
        assert_clean_error(proc, 2, "lists no folders", f"{server.url}/g.zarr:path/in/group")
        assert not (tmp_path / "z.npy").exists()
    finally:
        server.stop()


def test_info_on_a_zarr_array_at_a_url_asks_for_its_zarr_json_only(tmp_path: Path) -> None:
    """An array's store has no sibling arrays to list: info reads its zarr.json (twice: the
    listing and the reader) and nothing else; zarr's own open asked for three objects more,
    under keys with a doubled "/" (another key to an object store)."""
    _partial_zarr(tmp_path / "a.zarr", cube((12, 8, 4), 53), (4, 8, 4), None)
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("info", f"{server.url}/a.zarr", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["shape"] == [12, 8, 4]
        assert server.asked == ["GET /a.zarr/zarr.json"] * 2, server.asked
    finally:
        server.stop()


def test_hdf5_object_lost_in_mid_read_is_a_network_error(tmp_path: Path) -> None:
    """A server that goes away after the file was opened: the read fails with pwconv's
    network error (exit 1), not with h5py's account of a failed read."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_dataset("cube", data=cube((256, 256, 4), 32), chunks=(32, 32, 4), compression="gzip")
    read_after_the_server_went(tmp_path, "x.h5")


def read_after_the_server_went(folder: Path, name: str) -> None:
    """Open ``name`` (a spec under ``folder``) over HTTP, stop the server, then read it whole:
    that must raise pwconv's NetworkError."""
    from pwconv.errors import NetworkError
    from pwconv.io.registry import open_source
    from pwconv.io.spec import parse_spec

    server = RangeServer(str(folder))
    try:
        source = open_source(parse_spec(f"{server.url}/{name}"))
    finally:
        server.stop()
    with pytest.raises(NetworkError):
        source.read(tuple(slice(0, n) for n in source.shape))
    source.close()


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_zip_model_lost_in_mid_read_is_a_network_error(tmp_path: Path, suffix: str) -> None:
    """A model file whose server goes away once its directory was read: pwconv's network
    error (exit 1), not "the archive is damaged" (zipfile's OSError from a failed read)."""
    w = cube((300, 400), 33)  # beyond the directory's 64 KiB read-ahead
    if suffix == ".pt":
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.from_numpy(w)}, tmp_path / f"m{suffix}")
    else:
        np.savez(tmp_path / f"m{suffix}", w=w)
    read_after_the_server_went(tmp_path, f"m{suffix}:w")


def test_stack_of_band_objects(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    bands = np.random.default_rng(9).random((3, 50, 40)).astype(np.float32)
    urls = []
    for i, band in enumerate(bands):
        write_geotiff(tmp_path / f"B{i}.tif", band[None])
        urls.append(put(s3, bucket, f"scene/B{i}.tif", tmp_path / f"B{i}.tif"))
    proc = run_cli("apply", "+".join(urls), "1,-2,1", "-o", tmp_path / "y.npy", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy")[..., 0], bands[0] - 2 * bands[1] + bands[2], atol=1e-5
    )


@pytest.mark.parametrize(
    ("where", "code", "fragment"),
    [
        ("s3://{bucket}/missing.npy", 2, "no such object"),
        ("s3://no-such-bucket-here/x.npy", 2, "no such object"),
        ("s3:///x.npy", 2, "expected a bucket"),
    ],
)
def test_missing_inputs_are_one_line(s3: S3Server, bucket: str, tmp_path: Path, where: str, code: int,
                                     fragment: str) -> None:  # fmt: skip
    proc = run_cli("apply", where.format(bucket=bucket), "1,2", "-o", tmp_path / "y.npy", env=s3.env)
    assert_clean_error(proc, code, fragment)
    assert not (tmp_path / "y.npy").exists()


def test_output_errors(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", cube((8, 8, 2)))
    no_bucket = run_cli(
        "apply", tmp_path / "x.npy", "1,2", "-o", "s3://no-such-bucket-here/y.npy", env=s3.env
    )
    assert_clean_error(no_bucket, 2, "existing bucket")
    http = run_cli("apply", tmp_path / "x.npy", "1,2", "-o", "http://127.0.0.1:9/y.npy")
    assert_clean_error(http, 2, "read only")
    put(s3, bucket, "y.npy", tmp_path / "x.npy")
    exists = run_cli("apply", tmp_path / "x.npy", "1,2", "-o", f"s3://{bucket}/y.npy", env=s3.env)
    assert_clean_error(exists, 2, "exists", "--overwrite")
    same = run_cli(
        "apply", f"s3://{bucket}/y.npy", "1,2", "-o", f"s3://{bucket}/y.npy", "--overwrite", env=s3.env
    )
    assert_clean_error(same, 2, "same file")


def test_a_dataset_is_not_added_to_an_hdf5_object_by_replacing_it(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """On disk ``-o f.h5:/b`` adds /b and keeps the file's other datasets; at a URL that
    would replace the object whole, so it is refused, with or without --overwrite."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "two.h5", "w") as handle:
        handle["a"] = cube((4, 4, 2), 39)
    put(s3, bucket, "two.h5", tmp_path / "two.h5")
    np.save(tmp_path / "x.npy", cube((4, 4, 2), 40))
    for extra in ([], ["--overwrite"]):
        proc = run_cli(
            "apply", tmp_path / "x.npy", "1,1", "-o", f"s3://{bucket}/two.h5:/b", *extra, env=s3.env
        )
        assert_clean_error(proc, 2, "adds a dataset to a file on disk only")
    with h5py.File(fetch(s3, bucket, "two.h5", tmp_path / "back.h5")) as handle:
        assert list(handle) == ["a"]
    proc = run_cli("apply", tmp_path / "x.npy", "1,1", "-o", f"s3://{bucket}/new.h5:/b", env=s3.env)
    assert proc.returncode == 0, proc.stderr  # a new object may name its dataset


def test_unreachable_endpoint_is_exit_1(tmp_path: Path) -> None:
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "a",
           "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}  # fmt: skip
    proc = run_cli("info", "s3://bucket/x.npy", env=env)
    assert_clean_error(proc, 1, "s3://bucket/x.npy", "connection refused")
    http = run_cli("info", f"http://127.0.0.1:{free_port()}/x.npy")
    assert_clean_error(http, 1, "connection refused")


def test_reset_in_mid_upload_leaves_nothing(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    x = cube((512, 512, 16), seed=10)  # 16 MiB in and out: a multipart upload of the npy
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", np.eye(16, dtype=np.float32))
    w = str(tmp_path / "w.npy")

    def cut(method: str, path: str) -> bool:
        return method == "PUT" and ("partNumber=2" in path or "/c/1/" in path)

    proxy = FaultProxy(s3.port, cut)
    try:
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint}
        proc = run_cli(
            "apply", tmp_path / "x.npy", w, "-o", f"s3://{bucket}/y.npy", "--dtype", "float32", env=env
        )
        assert_clean_error(proc, 1, f"s3://{bucket}/y.npy")
        proc = run_cli("apply", tmp_path / "x.npy", w, "-o", f"s3://{bucket}/y.zarr", "--chunks", "128,512,16",
                       env=env)  # fmt: skip
        assert_clean_error(proc, 1, f"s3://{bucket}/y.zarr")
        proc = run_cli("apply", tmp_path / "x.npy", w, "-o", f"s3://{bucket}/y.tif", "--co", "COMPRESS=NONE",
                       env=env)  # fmt: skip
        assert_clean_error(proc, 1, f"s3://{bucket}/y.tif")
        assert proxy.failed >= 3
    finally:
        proxy.stop()
    assert keys(s3, bucket) == []
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], uploads
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_folders_a_killed_run_left_in_tmpdir_go_with_the_next_run(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A SIGKILL runs no exit handler: its staging and copy folders stay until the next run
    that makes one removes them, those of processes still running excepted."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, alive = int(gone.stdout), os.getpid()
    left = [
        f"pwconv-upload-{dead}-a1",
        f"pwconv-remote-{dead}-b2",
        f"pwconv-upload-{alive}-c3",
        "pwconv-upload-x",
    ]
    for name in left:
        (temp / name).mkdir()
        (temp / name / "part.npy").write_bytes(b"left")
    image = pytest.importorskip("PIL.Image")
    x = np.random.default_rng(43).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image.fromarray(x).save(tmp_path / "x.png")  # a picture at a URL is read from a local copy
    source = put(s3, bucket, "x.png", tmp_path / "x.png")
    # An HDF5 output at a URL is staged in a folder of its own (a .npy one is streamed).
    proc = run_cli("apply", source, "1,2,0", "-o", f"s3://{bucket}/y.h5", "--dtype", "float32",
                   env={**s3.env, "TMPDIR": str(temp)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in temp.iterdir()) == [f"pwconv-upload-{alive}-c3", "pwconv-upload-x"]
    h5py = pytest.importorskip("h5py")
    with h5py.File(fetch(s3, bucket, "y.h5", tmp_path / "y.h5"), "r") as handle:
        got = handle["data"][...]
    np.testing.assert_allclose(got[..., 0], x[..., :2].astype(np.float32) @ [1.0, 2.0], rtol=1e-6)


def test_a_zarr_output_at_a_url_puts_each_blocks_chunks_as_it_goes(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A block's chunks go up while the next block is read (the staging folder never holds
    the whole store); when the metadata, put last, fails, the chunks already put go too."""
    x = cube((256, 256, 16), seed=50)  # 4 MiB in blocks of under 1 MiB: several blocks
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", np.eye(16, dtype=np.float32)[:2])
    source = put(s3, bucket, "x.npy", tmp_path / "x.npy")
    requests: list[tuple[str, str]] = []

    def cut(method: str, path: str) -> bool:
        requests.append((method, path))
        return method == "PUT" and "zarr.json" in path

    proxy = FaultProxy(s3.port, cut)
    try:
        target = f"s3://{bucket}/y.zarr"
        proc = run_cli("apply", source, tmp_path / "w.npy", "-o", target, "--max-memory", "2MB",
                       env={**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint})  # fmt: skip
        assert_clean_error(proc, 1, target)
    finally:
        proxy.stop()
    order = [i for i, (method, path) in enumerate(requests) if method == "PUT" and "/y.zarr/c/" in path]
    reads = [i for i, (method, path) in enumerate(requests) if method == "GET" and "/x.npy" in path]
    assert len(order) >= 4 and order[0] < reads[-1], requests  # chunks put before the input is all read
    assert keys(s3, bucket) == ["x.npy"]


class _ReadsCut:
    """A proxy to the S3 server that records every request and cuts every GET of ``key``
    after the first ``after`` of them (a network failing in mid-run)."""

    def __init__(self, s3: S3Server, key: str) -> None:
        self.key, self.after = key, 10**9
        self.requests: list[tuple[str, str]] = []
        self.proxy = FaultProxy(s3.port, self._cut)

    def _cut(self, method: str, path: str) -> bool:
        self.requests.append((method, path))
        reads = sum(1 for m, p in self.requests if m == "GET" and self.key in p)
        return method == "GET" and self.key in path and reads > self.after

    def reads(self) -> list[int]:
        return [i for i, (m, p) in enumerate(self.requests) if m == "GET" and self.key in p]

    def parts(self, target: str) -> list[int]:
        """The positions of the upload parts put at ``target``, among all requests."""
        return [
            i
            for i, (m, p) in enumerate(self.requests)
            if m == "PUT" and f"/{target}?" in p and "partNumber" in p
        ]

    def assert_a_part_went_up_before_the_last_read(self, target: str) -> None:
        parts, reads = self.parts(target), self.reads()
        assert len(parts) >= 2 and parts[0] < reads[-1], self.requests

    def fail_after_three_quarters(self) -> None:
        """The next run's reads fail three quarters of the way through (those of the last run)."""
        self.after, self.requests = len(self.reads()) * 3 // 4, []


def test_an_npy_output_at_a_url_is_uploaded_as_its_blocks_come(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Parts go up while the input is still being read, nothing is staged in TMPDIR, and a
    read failing after some parts are up aborts the upload: no object, no upload left."""
    x = cube((512, 512, 16), seed=51)  # 16 MiB in and out, in blocks of about 1 MiB
    np.save(tmp_path / "x.npy", x)
    w = np.random.default_rng(52).random((16, 16)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    source = put(s3, bucket, "x.npy", tmp_path / "x.npy")
    temp = tmp_path / "tmp"
    temp.mkdir()
    cut = _ReadsCut(s3, "/x.npy")
    env = {**s3.env, "AWS_ENDPOINT_URL": cut.proxy.endpoint, "TMPDIR": str(temp)}
    target = f"s3://{bucket}/y.npy"
    try:
        proc = run_cli("apply", source, tmp_path / "w.npy", "-o", target, "--max-memory", "4MB", env=env)
        assert proc.returncode == 0, proc.stderr
        cut.assert_a_part_went_up_before_the_last_read("y.npy")
        assert list(temp.iterdir()) == []
        got = np.load(fetch(s3, bucket, "y.npy", tmp_path / "y.npy"))
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)
        s3.client().delete_object(Bucket=bucket, Key="y.npy")

        cut.fail_after_three_quarters()  # 12 of the 16 MiB read: the first 8 MiB part is up
        proc = run_cli("apply", source, tmp_path / "w.npy", "-o", target, "--max-memory", "4MB", env=env)
        assert_clean_error(proc, 1, f"s3://{bucket}/x.npy")
        assert cut.parts("y.npy"), cut.requests
    finally:
        cut.proxy.stop()
    assert keys(s3, bucket) == ["x.npy"]
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


_STREAMED_GEOTIFFS = {
    # input dtype, input nodata, output options
    "float32, nodata, names": (np.float32, -1.0, []),
    "int16 out, edge tiles": (np.int16, -999, ["--dtype", "int16", "--co", "BLOCKXSIZE=48", "--co", "BLOCKYSIZE=32"]),
    "uint8 out, bigtiff": (np.uint8, None, ["--dtype", "uint8", "--co", "BIGTIFF=YES"]),
    "float64, nan nodata": (np.float64, float("nan"), []),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_STREAMED_GEOTIFFS))
def test_an_uncompressed_geotiff_at_a_url_is_the_file_gdal_writes(
    s3: S3Server, bucket: str, tmp_path: Path, case: str
) -> None:
    """Streamed to the store by pwconv, it reads back as GDAL's own file of the same run:
    pixels, georeferencing, nodata, band names, tags, tiles and BigTIFF-ness."""
    dtype, nodata, options = _STREAMED_GEOTIFFS[case]
    bands = (np.random.default_rng(54).random((4, 70, 50)) * 90).astype(dtype)
    if nodata is not None and not np.isnan(nodata):
        bands[:, :2, :3] = nodata
    write_geotiff(tmp_path / "in.tif", bands, ("blue", "green", "red", "nir"), nodata=nodata)
    weights = "1,0,0,0;0,1,0,1;0,0,1,-1"
    options = [*options, "--co", "COMPRESS=NONE"]
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = run_cli("apply", "in.tif", weights, "-o", f"s3://{bucket}/out.tif", *options, "--json", cwd=tmp_path,
                   env={**s3.env, "TMPDIR": str(temp)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(temp.iterdir()) == []  # nothing staged
    proc = run_cli("apply", "in.tif", weights, "-o", "gdal.tif", *options, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    streamed = raster_facts(fetch(s3, bucket, "out.tif", tmp_path / "streamed.tif"))
    gdal = raster_facts(tmp_path / "gdal.tif")
    np.testing.assert_array_equal(streamed.pop("pixels"), gdal.pop("pixels"))
    assert streamed == gdal
    assert streamed["structure"].get("COMPRESSION") is None
    with open(tmp_path / "streamed.tif", "rb") as handle:
        assert handle.read(4)[2:] == (b"+\x00" if "BIGTIFF=YES" in options else b"*\x00")


def test_an_uncompressed_geotiff_at_a_url_is_uploaded_as_its_tiles_come(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Parts go up while the input is still being read, and the run replaces an old output
    and removes its sidecar; a read failing after some parts are up aborts the upload and
    leaves an old output and its sidecar as they were."""
    x = cube((1024, 1024, 4), seed=55)  # 16 MiB in and out: parts of 8 MiB
    write_geotiff(tmp_path / "in.tif", np.moveaxis(x, -1, 0).copy())
    source = put(s3, bucket, "in.tif", tmp_path / "in.tif")
    w = np.random.default_rng(56).random((4, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    target = f"s3://{bucket}/out.tif"

    def old_output() -> None:
        s3.client().put_object(Bucket=bucket, Key="out.tif", Body=b"old")
        s3.client().put_object(Bucket=bucket, Key="out.tif.aux.xml", Body=b"<PAMDataset/>")

    cut = _ReadsCut(s3, "/in.tif")
    env = {**s3.env, "AWS_ENDPOINT_URL": cut.proxy.endpoint}
    run = ["apply", source, tmp_path / "w.npy", "-o", target, "--co", "COMPRESS=NONE", "--overwrite",
           "--max-memory", "8MB"]  # fmt: skip
    rasterio = pytest.importorskip("rasterio")
    try:
        old_output()
        proc = run_cli(*run, env=env)
        assert proc.returncode == 0, proc.stderr
        cut.assert_a_part_went_up_before_the_last_read("out.tif")
        assert keys(s3, bucket) == ["in.tif", "out.tif"]  # the old sidecar is gone
        with rasterio.open(fetch(s3, bucket, "out.tif", tmp_path / "out.tif")) as ds:
            assert ds.crs == "EPSG:32633" and ds.compression is None
            np.testing.assert_allclose(np.moveaxis(ds.read(), 0, -1), mixed(x, w), rtol=1e-5, atol=1e-5)

        old_output()
        cut.fail_after_three_quarters()  # 12 of the 16 MiB read: the first part is up
        proc = run_cli(*run, env=env)
        assert_clean_error(proc, 1, f"s3://{bucket}/in.tif")
        assert cut.parts("out.tif"), cut.requests
    finally:
        cut.proxy.stop()
    assert keys(s3, bucket) == ["in.tif", "out.tif", "out.tif.aux.xml"]
    assert s3.client().get_object(Bucket=bucket, Key="out.tif")["Body"].read() == b"old"
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_sigterm_during_a_streamed_upload_leaves_nothing(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """SIGTERM after the first part is up: exit 143, the upload aborted, no object."""
    import signal
    import time

    x = cube((512, 512, 16), seed=53)  # read over HTTP, 50 ms a request: several seconds
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", np.eye(16, dtype=np.float32))
    server = RangeServer(str(tmp_path), latency=0.05)
    parts: list[str] = []
    proxy = FaultProxy(
        s3.port, lambda method, path: bool(parts.append(path)) if "partNumber" in path else False
    )
    target = f"s3://{bucket}/y.npy"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pwconv", "apply", f"{server.url}/x.npy", str(tmp_path / "w.npy"), "-o", target,
             "--max-memory", "4MB"],
            env={**os.environ, **s3.env, "AWS_ENDPOINT_URL": proxy.endpoint}, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not parts and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert parts and proc.poll() is None, "no part went up while the run went on"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert b"Traceback" not in err, err
    finally:
        proxy.stop()
        server.stop()
    assert keys(s3, bucket) == []
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_signal_while_the_upload_completes_leaves_nothing(s3: S3Server, bucket: str) -> None:
    """A signal's exception that stops ``finish()`` while it waits for the last parts (the
    client already has them all) leaves the upload running: ``cancel()`` must wait for it and
    remove the object it completes, not take the interrupted wait for its end."""
    import time

    from tests.conftest import Interrupted, interrupted_after
    from tests.servers import environment

    def slow_parts(method: str, path: str) -> bool:
        if "partNumber" in path:
            time.sleep(1.0)
        return False

    proxy = FaultProxy(s3.port, slow_parts)
    try:
        with environment({**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint}):
            upload = stores.StreamedUpload(f"s3://{bucket}/y.bin", parts=2)
            upload.send(b"x" * (9 << 20))  # two parts
            with interrupted_after(0.2), pytest.raises(Interrupted):
                upload.finish()
            upload.cancel()
            assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            assert keys(s3, bucket) == []

            # A failure after finish() returned (a sidecar's) leaves the output in place.
            upload = stores.StreamedUpload(f"s3://{bucket}/z.bin", parts=2)
            upload.send(b"z" * (9 << 20))
            upload.finish()
            upload.cancel()
    finally:
        proxy.stop()
    assert keys(s3, bucket) == ["z.bin"]


def test_a_streamed_output_counts_as_written_once_its_upload_completed(s3: S3Server, bucket: str) -> None:
    """A signal after the upload completed must not say "no output was written": the streamed
    sinks record the object as published, as an atomic rename does."""
    from pwconv.io import atomic
    from pwconv.io.formats.npy import StreamedNpySink
    from tests.servers import environment

    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    url = f"s3://{bucket}/y.npy"
    with environment(s3.env):
        sink = StreamedNpySink(url, x.shape, x.dtype)
        sink.write((slice(0, 2), slice(0, 3), slice(0, 4)), x)
        assert url not in atomic.published()
        sink.commit()
    assert atomic.published()[-1] == url
    np.testing.assert_array_equal(
        np.load(io.BytesIO(s3.client().get_object(Bucket=bucket, Key="y.npy")["Body"].read())), x
    )


def test_file_urls_name_local_paths_and_other_schemes_are_refused(worked: Path) -> None:
    """``file://`` is the local path it names; a scheme pwconv has no client for is one line,
    exit 2, without the URL's user, password or query, not "no file at 'ftp://...'"."""
    proc = run_cli("apply", (worked / "M.npy").as_uri(), "2,3", "-o", f"file://{worked}/o.npy", "--layout", "CHW",
                   cwd=worked)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(worked / "o.npy")[0], WORKED_RESULT)

    proc = run_cli("apply", "file://elsewhere/M.npy", "2,3", "-o", "o2.npy", cwd=worked)
    assert_clean_error(proc, 2, "file:///path", "'elsewhere'")
    for args in (["ftp://user:secret@host/x.npy?token=abc", "2,3", "-o", "o2.npy"],
                 ["M.npy", "sftp://host/w.npy", "-o", "o2.npy"],
                 ["M.npy", "2,3", "-o", "ftp://host/o2.npy"],
                 ["M.npy+ftp://host/y.npy", "1", "-o", "o2.npy"]):  # fmt: skip
        proc = run_cli("apply", *args, cwd=worked)
        assert_clean_error(proc, 2, "found the scheme", "://host/")
        assert "secret" not in proc.stderr and "token" not in proc.stderr
    assert not (worked / "o2.npy").exists() and not (worked / "ftp:").exists()


def test_local_run_imports_no_cloud_client(worked: Path) -> None:
    clients = ("obstore", "urllib.request", "http.client", "boto3")
    assert modules_imported_by(worked, ["apply", "M.npy", "2,3", "-o", "o.npy"], clients) == (0, [])


def test_dask_cluster_reads_and_writes_the_store(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Worker processes started in another folder read their blocks from S3 and put their
    chunks there themselves; only the URL and the store's metadata travel to them."""
    distributed = pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")
    x = cube((512, 128, 6), seed=11)
    w = np.random.default_rng(12).random((4, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    source = put(s3, bucket, "x.npy", tmp_path / "x.npy")
    elsewhere = tmp_path / "workers"
    elsewhere.mkdir()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        worker_dashboard_address=None, env=s3.env, local_directory=str(elsewhere),
    ) as cluster:  # fmt: skip
        proc = run_cli(
            "apply", source, tmp_path / "w.npy", "-o", f"s3://{bucket}/y.zarr", "--engine", "dask",
            "--scheduler", cluster.scheduler_address, "--max-memory", "1MB", env=s3.env,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = keys(s3, bucket, "y.zarr/")
    assert len(written) >= 3 and "y.zarr/zarr.json" in written  # two chunks at least
    local = tmp_path / "y.zarr"
    for key in written:
        (local / key[len("y.zarr/") :]).parent.mkdir(parents=True, exist_ok=True)
        fetch(s3, bucket, key, local / key[len("y.zarr/") :])
    np.testing.assert_allclose(zarr.open_array(str(local), mode="r")[:], mixed(x, w), rtol=1e-5, atol=1e-6)


def test_object_writer_carries_no_local_path(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    import pickle

    from pwconv.io.interface import SinkRequest
    from pwconv.io.registry import open_sink
    from tests.servers import environment

    with environment(s3.env):
        spec = __import__("pwconv.io.spec", fromlist=["parse_spec"]).parse_spec(
            f"s3://{bucket}/o.zarr", what="output"
        )
        sink = open_sink(spec, SinkRequest((8, 8, 2), np.dtype("float32"), 2, block_shape=(4, 8, 2)))
        try:
            writer = sink.parallel_writer()
            assert b"pwconv-upload" not in pickle.dumps(writer)
            writer[0:4, :, :] = np.ones((4, 8, 2), np.float32)
            assert keys(s3, bucket) == ["o.zarr/c/0/0/0"]  # the chunk, and no metadata before commit
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        assert keys(s3, bucket) == ["o.zarr/c/0/0/0", "o.zarr/zarr.json"]


def test_batch_walks_a_prefix_and_writes_under_one(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    arrays = {
        "a/x.npy": cube((10, 12, 3), 13),
        "b/x.npy": cube((6, 5, 3), 14),
        "top.npy": cube((4, 4, 3), 15),
    }
    for key, array in arrays.items():
        np.save(tmp_path / "one.npy", array)
        put(s3, bucket, f"in/{key}", tmp_path / "one.npy")
    zarr.save_array(str(tmp_path / "s.zarr"), cube((7, 3, 3), 16), zarr_format=3)
    for file in sorted((tmp_path / "s.zarr").rglob("*")):
        if file.is_file():
            put(s3, bucket, f"in/c/s.zarr/{file.relative_to(tmp_path / 's.zarr').as_posix()}", file)
    put(s3, bucket, "in/notes.txt", tmp_path / "one.npy")
    proc = run_cli(
        "batch", "1,2,3", f"s3://{bucket}/in/", "--out-dir", f"s3://{bucket}/out", "--json", env=s3.env
    )
    assert proc.returncode == 0, proc.stderr
    outputs = [key for key in keys(s3, bucket, "out/") if not key.startswith("out/c/s.pw.zarr/c/")]
    assert outputs == ["out/a/x.pw.npy", "out/b/x.pw.npy", "out/c/s.pw.zarr/zarr.json", "out/top.pw.npy"]
    for key, array in arrays.items():
        got = np.load(fetch(s3, bucket, f"out/{key[:-4]}.pw.npy", tmp_path / "got.npy"))
        np.testing.assert_allclose(got[..., 0], array @ [1, 2, 3], rtol=1e-5)
    again = run_cli("batch", "1,2,3", f"s3://{bucket}/in/", "--out-dir", f"s3://{bucket}/out", "--skip-existing",
                    "--json", env=s3.env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert {e["status"] for e in json.loads(again.stdout)} == {"skipped"}, again.stdout


def _stac_item(assets: dict[str, dict]) -> str:
    return json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "scene", "geometry": None, "links": [],
        "properties": {"datetime": "2023-01-01T00:00:00Z"}, "assets": assets,
    })  # fmt: skip


def test_stac_item_on_s3_and_http_names_band_objects(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    pytest.importorskip("pystac")
    bands = np.random.default_rng(17).random((2, 20, 30)).astype(np.float32)
    assets = {}
    for name, band in zip(("red", "nir08"), bands):
        write_geotiff(tmp_path / f"{name}.tif", band[None])
        put(s3, bucket, f"scene/bands/{name}.tif", tmp_path / f"{name}.tif")
        assets[f"B_{name}"] = {
            "href": f"./bands/{name}.tif",
            "eo:bands": [{"name": name, "common_name": name}],
        }
    (tmp_path / "item.json").write_text(_stac_item(assets))
    item = put(s3, bucket, "scene/item.json", tmp_path / "item.json")
    proc = run_cli("apply", f"{item}:nir08,red", "1,-1", "-o", tmp_path / "d.npy", env=s3.env)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "d.npy")[..., 0], bands[1] - bands[0], atol=1e-6)
    # over HTTP, the same item and its relative assets
    (tmp_path / "bands").mkdir()
    for name in ("red", "nir08"):
        os.replace(tmp_path / f"{name}.tif", tmp_path / "bands" / f"{name}.tif")
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli("info", f"{server.url}/item.json:nir08,red", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["labels"] == {"2": ["nir08", "red"]}
    finally:
        server.stop()
    # an asset elsewhere in the bucket is outside the item's prefix
    (tmp_path / "far.json").write_text(_stac_item({"x": {"href": f"s3://{bucket}/other/x.tif"}}))
    far = put(s3, bucket, "scene/far.json", tmp_path / "far.json")
    assert_clean_error(run_cli("info", f"{far}:x", env=s3.env), 2, "--allow-external")


def _damaged(good: bytes, cuts: tuple[int, ...], flips: int, within: int, rng: np.random.Generator,
             folder: Path, stem: str) -> list[str]:  # fmt: skip
    """Truncations of ``good`` at ``cuts`` and ``flips`` copies with 1-3 bytes changed in
    its first ``within`` bytes, written to ``folder`` as ``stem{i}``; their names."""
    cases = [good[:n] for n in cuts]
    for _ in range(flips):
        damaged = bytearray(good)
        for at in rng.integers(0, min(len(good), within), size=int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        cases.append(bytes(damaged))
    names = []
    for i, data in enumerate(cases):
        name = stem.replace("*", str(i))
        (folder / name).write_bytes(data)
        names.append(name)
    return names


def test_damaged_objects_over_http_are_pwconv_errors(tmp_path: Path) -> None:
    """Truncations and flipped bytes of an npy header, an HDF5 file, a safetensors header and
    a NetCDF-4 file, read by range over HTTP: each opens and reads, or fails with pwconv's
    own error, never another exception."""
    from safetensors.numpy import save_file

    from pwconv.errors import PwconvError
    from pwconv.io.registry import open_source
    from pwconv.io.spec import parse_spec

    h5py = pytest.importorskip("h5py")
    h5netcdf = pytest.importorskip("h5netcdf")
    rng = np.random.default_rng(19)
    np.save(tmp_path / "good.npy", cube((6, 5, 3), 18))
    with h5py.File(tmp_path / "good.h5", "w") as handle:
        handle.create_dataset("x", data=cube((16, 16, 3), 20), chunks=(8, 8, 3), compression="gzip")
    save_file({"w": cube((3, 4), 22), "b": cube((3,), 23)}, str(tmp_path / "good.safetensors"))
    with h5netcdf.File(tmp_path / "good.nc", "w") as handle:
        handle.dimensions = {"y": 8, "x": 8, "band": 3}
        var = handle.create_variable(
            "v", ("y", "x", "band"), np.float32, chunks=(4, 4, 3), compression="gzip"
        )
        var[...] = cube((8, 8, 3), 24)
    sizes = {
        suffix: len((tmp_path / f"good{suffix}").read_bytes())
        for suffix in (".npy", ".h5", ".safetensors", ".nc")
    }
    names = _damaged((tmp_path / "good.npy").read_bytes(), (0, 5, 9, 40, 127, 129, sizes[".npy"] - 1), 120, 128,
                     rng, tmp_path, "c*.npy")  # fmt: skip
    names += _damaged((tmp_path / "good.h5").read_bytes(), (0, 8, 100, 1000, sizes[".h5"] - 100), 40, 4096, rng,
                      tmp_path, "h*.h5")  # fmt: skip
    names += _damaged((tmp_path / "good.safetensors").read_bytes(), (0, 7, 8, 20, sizes[".safetensors"] - 1), 40,
                      200, rng, tmp_path, "s*.safetensors")  # fmt: skip
    names += _damaged((tmp_path / "good.nc").read_bytes(), (4, 100, 2000, sizes[".nc"] - 50), 30, 4096, rng,
                      tmp_path, "n*.nc")  # fmt: skip
    server = RangeServer(str(tmp_path))
    try:
        for name in names:
            try:
                source = open_source(parse_spec(f"{server.url}/{name}"))
                source.read(tuple(slice(0, n) for n in source.shape))
                source.close()
            except PwconvError:
                pass
    finally:
        server.stop()


def test_damaged_zip_models_over_http_are_pwconv_errors(tmp_path: Path) -> None:
    """Truncated torch and npz files, and copies with bytes changed in their directory (the
    last bytes) or anywhere, read by range over HTTP and from disk: every tensor of each
    reads, or the reader fails with pwconv's own error, never another exception."""
    torch = pytest.importorskip("torch")
    from pwconv.errors import PwconvError
    from pwconv.io.registry import backend_of
    from pwconv.io.spec import parse_spec

    rng = np.random.default_rng(46)
    torch.save({"w": torch.ones(3, 4), "b": torch.arange(3.0)}, tmp_path / "good.pt")
    np.savez(tmp_path / "good.npz", w=cube((3, 4), 47), b=cube((3,), 48))
    np.savez_compressed(tmp_path / "goodz.npz", w=cube((3, 4), 49))
    names = []
    for stem, suffix in (("good", ".pt"), ("good", ".npz"), ("goodz", ".npz")):
        good = (tmp_path / f"{stem}{suffix}").read_bytes()
        cases = [good[:n] for n in (0, 4, 30, len(good) // 2, len(good) - 22, len(good) - 1)]
        for i in range(40):
            damaged = bytearray(good)
            low = len(good) - 200 if i % 2 else 0
            for at in rng.integers(max(0, low), len(good), size=int(rng.integers(1, 4))):
                damaged[at] = int(rng.integers(0, 256))
            cases.append(bytes(damaged))
        for i, data in enumerate(cases):
            (tmp_path / f"d{stem}{i}{suffix}").write_bytes(data)
            names.append(f"d{stem}{i}{suffix}")
    server = RangeServer(str(tmp_path))
    opened = 0
    try:
        for name, base in itertools.product(names, (server.url, str(tmp_path))):
            spec = parse_spec(f"{base}/{name}")
            try:
                for member in backend_of(spec).list_arrays(spec.path):
                    source = backend_of(spec).open_source(parse_spec(f"{base}/{name}:{member}"))
                    source.read(tuple(slice(0, n) for n in source.shape))
                    opened += 1
            except PwconvError:
                pass
    finally:
        server.stop()
    assert opened > 0  # some damage leaves the data readable: the readers got that far


def test_exported_vrt_names_a_raster_at_a_url_the_way_gdal_reads_it(s3: S3Server, bucket: str,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("rasterio")
    bands = np.random.default_rng(20).random((3, 16, 12)).astype(np.float32)
    write_geotiff(tmp_path / "s.tif", bands)
    raster = put(s3, bucket, "scene/s.tif", tmp_path / "s.tif")
    beside = run_cli("export", "1,2,3", "-o", f"s3://{bucket}/scene/mix.vrt", raster, env=s3.env)
    assert beside.returncode == 0, beside.stderr
    here = run_cli("export", "1,2,3", "-o", tmp_path / "mix.vrt", raster, env=s3.env)
    assert here.returncode == 0, here.stderr
    text = fetch(s3, bucket, "scene/mix.vrt", tmp_path / "beside.vrt").read_text()
    assert 'relativeToVRT="1">s.tif<' in text
    assert f">/vsis3/{bucket}/scene/s.tif<" in (tmp_path / "mix.vrt").read_text()
    expected = np.tensordot([1, 2, 3], bands, axes=1)
    # GDAL reads them in its own process: in this one it would wait on the S3 server's
    # threads while holding the interpreter lock
    read = (
        "import sys, numpy as np, rasterio; from pwconv.io.stores import gdal_path\n"
        "for i, path in enumerate(sys.argv[1:]):\n"
        "    with rasterio.open(gdal_path(path) if '://' in path else path) as ds:\n"
        "        np.save(f'read{i}.npy', ds.read(1))\n"
    )
    done = subprocess.run([sys.executable, "-c", read, f"s3://{bucket}/scene/mix.vrt", str(tmp_path / "mix.vrt")],
                          cwd=tmp_path, env={**os.environ, **s3.env}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"read{i}.npy"), expected, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".zarr", ".tif", ".nc", ".img", ".png"])
def test_every_written_format_round_trips_through_s3(
    s3: S3Server, bucket: str, tmp_path: Path, suffix: str
) -> None:
    """Written to a URL by its writer, read back from it by its reader (in place, or through
    a local copy for the formats whose library reads only files)."""
    picture = suffix == ".png"
    x = (np.random.default_rng(21).integers(0, 80, (24, 18, 3)) if picture else cube((24, 18, 3), 21)).astype(
        np.float32
    )
    np.save(tmp_path / "x.npy", x)
    target = f"s3://{bucket}/out/y{suffix}"
    extra = ["--dtype", "uint8"] if picture else []
    proc = run_cli("apply", tmp_path / "x.npy", "1,1,1;1,0,0;0,0,1", "-o", target, *extra, env=s3.env)
    assert proc.returncode == 0, proc.stderr
    back = run_cli("apply", target, "1,0,0;0,1,0;0,0,1", "-o", tmp_path / "back.npy", env=s3.env)
    assert back.returncode == 0, back.stderr
    expected = np.stack([x.sum(-1), x[..., 0], x[..., 2]], -1)
    np.testing.assert_allclose(np.load(tmp_path / "back.npy"), expected, rtol=1e-5, atol=1e-5)
    names = keys(s3, bucket, "out/")
    assert all(name.startswith(f"out/y{suffix}") or name == "out/y.hdr" for name in names), names


def test_a_404_inside_an_id_or_a_lost_upload_is_not_a_missing_bucket() -> None:
    """Status codes are read as words: "404" inside an upload id or an ETag in a client's
    message says nothing about the bucket; a multipart upload lost while a part was retried
    is the network's failure (exit 1), not a wrong URL (exit 2)."""
    from pwconv.errors import NetworkError, UsageError
    from pwconv.io.stores import _failure

    url = "s3://data/y.npy"
    reset = RuntimeError(
        "Generic S3 error: connection reset by peer, PUT .../y.npy?partNumber=2&uploadId=Zx404Qa"
    )
    assert isinstance(_failure(url, reset, "write"), NetworkError)
    lost = RuntimeError("Generic S3 error: HTTP 404 Not Found: <Code>NoSuchUpload</Code>")
    assert isinstance(_failure(url, lost, "write"), NetworkError)
    bucket = RuntimeError("Generic S3 error: HTTP 404 Not Found: <Code>NoSuchBucket</Code>")
    assert isinstance(_failure(url, bucket, "write"), UsageError)


def test_the_copy_of_a_weights_file_fetched_whole_is_gone_after_the_run(tmp_path: Path) -> None:
    """A legacy torch file at a URL is fetched into a private folder; the command's quick exit
    still runs the exit handler that removes it."""
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(4, 6)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    np.save(tmp_path / "x.npy", np.ones((3, 2, 6), np.float32))
    temp = tmp_path / "temp"
    temp.mkdir()
    server = RangeServer(str(tmp_path))
    try:
        proc = run_cli(
            "apply", "x.npy", f"{server.url}/old.pt:w", "-o", "y.npy", cwd=tmp_path, env={"TMPDIR": str(temp)}
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.full((3, 2, 4), 6.0))
    assert list(temp.iterdir()) == []


def test_a_multi_page_tiff_in_a_store_is_read_by_pages_and_a_cut_is_the_networks_failure(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A plain multi-page TIFF in a bucket is read through tifffile (GDAL would read its first
    page only), its tiles fetched by pwconv; when the connection is cut as the tiles are
    fetched, the run ends with exit 1 naming the URL, not with the file called damaged."""
    tifffile = pytest.importorskip("tifffile")
    pages = np.stack([cube((64, 48, 2), seed=60 + i) for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack", planarconfig="contig",
                     compression="zlib", tile=(16, 16))  # fmt: skip
    source = put(s3, bucket, "stack.tif", tmp_path / "stack.tif")
    expected = np.moveaxis(pages, 0, 2).reshape(64, 48, 6).astype(np.float64) @ np.arange(1, 7)
    requests: list[tuple[str, str]] = []
    last = {"allowed": 10**9}

    def cut(method: str, path: str) -> bool:
        requests.append((method, path))
        gets = sum(1 for m, p in requests if m == "GET" and p.split("?")[0].endswith("/stack.tif"))
        return method == "GET" and path.split("?")[0].endswith("/stack.tif") and gets > last["allowed"]

    proxy = FaultProxy(s3.port, cut)
    env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint}
    try:
        whole = run_cli(
            "apply", source, "1,2,3,4,5,6", "-o", tmp_path / "out.npy", "--dtype", "float64", env=env
        )
        assert whole.returncode == 0, whole.stderr
        np.testing.assert_allclose(np.load(tmp_path / "out.npy")[..., 0], expected, rtol=1e-12)
        # the same run again, the last GET (a span of tiles) cut
        last["allowed"] = (
            sum(1 for m, p in requests if m == "GET" and p.split("?")[0].endswith("/stack.tif")) - 1
        )
        requests.clear()
        cut_run = run_cli("apply", source, "1,2,3,4,5,6", "-o", tmp_path / "cut.npy", env=env)
    finally:
        proxy.stop()
    assert_clean_error(cut_run, 1, source)
    assert not (tmp_path / "cut.npy").exists()
