"""Which client reads and writes object stores: obstore (pwconv's) against fsspec's s3fs and
boto3 for S3, and against fsspec's HTTP file system and pwconv's own urllib reader for HTTP,
on the loopback servers the tests use, each client timed in the same run.

    python benchmarks/clients.py [--mib 256]

s3fs pins aiobotocore, which pins botocore, so it may not install beside the test extra's
boto3; run this from a virtual environment that has the clients to compare (a client that
is missing is reported as such):

    python -m venv /tmp/clients && /tmp/clients/bin/pip install -e . s3fs obstore 'moto[server]' psutil
    /tmp/clients/bin/python benchmarks/clients.py

Measured per client, best of three: the import (a fresh process, what a command pays at
start-up), one object read whole in 8 MiB ranges with 16 in flight, 256 ranges of 64 KiB
(a block's chunks) in one call of each client's own (obstore joins neighbouring ranges into
fewer requests; s3fs, fsspec and boto3 send one each), and an 8 MiB-part upload of the same
object. moto serves
one request at a time under its GIL and copies the object for each ranged GET, so its
figures are a floor of the server as much as of the client; the HTTP server reads the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import RangeServer, free_port  # noqa: E402

PIECE = 8 << 20
SMALL = 64 << 10
IN_FLIGHT = 16


def best(call: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def import_time(module: str) -> float:
    """Seconds to import ``module`` in a fresh process, less the interpreter's own start."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            return float("nan")
        times.append(float(done.stdout))
    return min(times)


def pieces(size: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(size, s + step)) for s in range(0, size, step)]


def small_ranges(size: int) -> list[tuple[int, int]]:
    stride = max(SMALL, size // 256)
    return [(s, s + SMALL) for s in range(0, size - SMALL, stride)][:256]


def s3_clients(endpoint: str, size: int, data: bytes) -> dict[str, dict[str, float]]:
    """obstore, s3fs and boto3 on the same object: whole read, small ranges, upload."""
    results: dict[str, dict[str, float]] = {}
    whole, small = pieces(size, PIECE), small_ranges(size)
    import obstore
    from obstore.store import S3Store

    store = S3Store("bench", config={"endpoint": endpoint}, client_options={"allow_http": True})
    obstore.put(store, "object.bin", data, chunk_size=PIECE, max_concurrency=8)

    def read() -> None:  # one request a piece, as pwconv's ranged reads go
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(
                pool.map(
                    lambda span: obstore.get_range(store, "object.bin", start=span[0], end=span[1]), whole
                )
            )

    results["obstore"] = {
        "import": import_time("obstore.store"),
        "read": best(read),
        "small": best(
            lambda: obstore.get_ranges(
                store, "object.bin", starts=[a for a, _ in small], ends=[b for _, b in small]
            )
        ),  # fmt: skip
        "write": best(lambda: obstore.put(store, "up.bin", data, chunk_size=PIECE, max_concurrency=8)),
    }
    try:
        import s3fs
    except ImportError:
        results["s3fs (fsspec)"] = {}
    else:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, max_concurrency=IN_FLIGHT)
        path = "bench/object.bin"

        def write() -> None:
            with fs.open("bench/up-s3fs.bin", "wb", block_size=PIECE) as handle:
                handle.write(data)

        results["s3fs (fsspec)"] = {
            "import": import_time("s3fs"),
            "read": best(
                lambda: fs.cat_ranges([path] * len(whole), [a for a, _ in whole], [b for _, b in whole])
            ),
            "small": best(
                lambda: fs.cat_ranges([path] * len(small), [a for a, _ in small], [b for _, b in small])
            ),
            "write": best(write),
        }
    try:
        import boto3
    except ImportError:
        results["boto3"] = {}
    else:
        client = boto3.client("s3", endpoint_url=endpoint)

        def get(span: tuple[int, int]) -> int:
            reply = client.get_object(
                Bucket="bench", Key="object.bin", Range=f"bytes={span[0]}-{span[1] - 1}"
            )
            return len(reply["Body"].read())

        def read(spans: list[tuple[int, int]]) -> None:
            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                list(pool.map(get, spans))

        import io

        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=PIECE, max_concurrency=8)
        results["boto3"] = {
            "import": import_time("boto3"),
            "read": best(lambda: read(whole)),
            "small": best(lambda: read(small)),
            "write": best(
                lambda: client.upload_fileobj(io.BytesIO(data), "bench", "up-boto3.bin", Config=config)
            ),
        }
    return results


def http_clients(url: str, size: int) -> dict[str, dict[str, float]]:
    """obstore's HTTP store, pwconv's urllib reader and fsspec's HTTP file system."""
    results: dict[str, dict[str, float]] = {}
    whole, small = pieces(size, PIECE), small_ranges(size)
    import obstore
    from obstore.store import HTTPStore

    store = HTTPStore.from_url(url.rpartition("/")[0] + "/", client_options={"allow_http": True})
    name = url.rpartition("/")[2]
    results["obstore"] = {
        "import": import_time("obstore.store"),
        "read": best(
            lambda: obstore.get_ranges(store, name, starts=[a for a, _ in whole], ends=[b for _, b in whole])
        ),
        "small": best(
            lambda: obstore.get_ranges(store, name, starts=[a for a, _ in small], ends=[b for _, b in small])
        ),
    }
    from pwconv.io.stores import RemoteObject

    remote = RemoteObject(url)
    out = bytearray(size)
    results["pwconv (urllib)"] = {
        "import": import_time("pwconv.io.stores"),
        "read": best(lambda: remote.read_into([0], size, memoryview(out))),
        "small": best(lambda: remote.read_ranges([a for a, _ in small], [b for _, b in small])),
    }
    try:
        import fsspec
    except ImportError:
        results["fsspec http"] = {}
    else:
        fs = fsspec.filesystem("http")
        results["fsspec http"] = {
            "import": import_time("fsspec.implementations.http"),
            "read": best(
                lambda: fs.cat_ranges([url] * len(whole), [a for a, _ in whole], [b for _, b in whole])
            ),
            "small": best(
                lambda: fs.cat_ranges([url] * len(small), [a for a, _ in small], [b for _, b in small])
            ),
        }
    return results


def table(title: str, size: int, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}, {size >> 20} MiB object")
    print("| client | import | read whole (8 MiB x 16) | 256 x 64 KiB | upload (8 MiB parts) |")
    print("|---|---|---|---|---|")
    for client, got in results.items():
        if not got:
            print(f"| {client} | not installed | | | |")
            continue
        write = f"{got['write']:.2f} s ({size / got['write'] / 2**20:.0f} MiB/s)" if "write" in got else "-"
        print(f"| {client} | {got['import'] * 1000:.0f} ms | {got['read']:.2f} s ({size / got['read'] / 2**20:.0f} "
              f"MiB/s) | {got['small'] * 1000:.0f} ms | {write} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    size = args.mib << 20
    data = os.urandom(size)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"})  # fmt: skip
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1)  # noqa: S310 - loopback
                break
            except OSError:
                time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"))  # noqa: S310
        table("S3 (moto on 127.0.0.1)", size, s3_clients(endpoint, size, data))
    finally:
        server.terminate()
        server.wait()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "object.bin").write_bytes(data)
        http = RangeServer(folder)
        try:
            table(
                "HTTP (threaded range server on 127.0.0.1)",
                size,
                http_clients(f"{http.url}/object.bin", size),
            )
        finally:
            http.stop()


if __name__ == "__main__":
    main()
