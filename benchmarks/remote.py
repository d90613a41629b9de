"""`pwconv apply` from S3 to S3 against the floor of the fastest client: the same bytes
fetched and put by obstore alone, on the loopback S3 server the tests use (moto).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/remote.py [--size-gib 1] [--store azurite] [--repeats 3] [--server-cpu 0]

Inputs: float32 (2048 * size, 2048, 64) as npy, uncompressed Zarr (32 MiB chunks) and a
Cloud-Optimized GeoTIFF (GDAL's COG driver: 512 x 512 tiles, pixel-interleaved,
uncompressed, no overviews); 16 filters, so the output is a quarter of the input. Floor =
the fastest GET of the input's bytes (8 MiB ranges, 1, 4 or 16 in flight) + a multipart PUT
of the output's bytes (8 MiB parts, 8 in flight), each the best of ``--repeats`` rounds
taken in turn with pwconv's run, whose best is set against it (the output of the round
before removed first, outside the timing).
Everything runs in its own process (the S3 server, the set-up, the floor, each pwconv run:
wall time and peak RSS by wait4), so that no process inherits another's peak. Then: explain
at one pixel of the npy through a counting proxy (the bytes transferred), and the npy read
with 1, 4 and 16 requests in flight (PWCONV_REMOTE_REQUESTS).

moto keeps each object in one buffer and copies it whole for every ranged GET, so its ranged
reads cost more the larger the object (a real S3 does not); pwconv and the floor pay that
alike, request for request. ``--store azurite`` runs the same tables against Azurite's blob
service keeping its data on disk (npm's ``azurite``), which serves a range from its file
without copying the object, and requests concurrently. On a machine of few cores the server
takes cores that pwconv's threads would use, which a real store's servers do not:
``--server-cpu N`` runs the store on CPU N and everything else (the floor, pwconv) on the
other CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import run  # noqa: E402

from tests.servers import FaultProxy, free_port  # noqa: E402

MAKE = """
import sys, numpy as np, rasterio, rasterio.shutil, zarr
rows = int(sys.argv[1])
rng = np.random.default_rng(0)
x = np.lib.format.open_memmap('in.npy', mode='w+', dtype=np.float32, shape=(rows, 2048, 64))
for s in range(0, rows, 128):
    x[s:s + 128] = rng.standard_normal((min(128, rows - s), 2048, 64), dtype=np.float32)
x.flush()
np.save('w.npy', rng.standard_normal((16, 64)).astype(np.float32))
z = zarr.create_array('in.zarr', shape=x.shape, dtype='float32', chunks=(64, 2048, 64), compressors=None,
                      zarr_format=3)
for s in range(0, rows, 64):
    z[s:s + 64] = x[s:s + 64]
with rasterio.open('tiled.tif', 'w', driver='GTiff', width=2048, height=rows, count=64, dtype='float32',
                   tiled=True, blockxsize=512, blockysize=512, interleave='pixel') as ds:
    for s in range(0, rows, 512):
        ds.write(np.moveaxis(x[s:s + 512], -1, 0), window=rasterio.windows.Window(0, s, 2048, min(512, rows - s)))
# a Cloud-Optimized GeoTIFF: its IFD first, then the tiles in order (no overviews)
rasterio.shutil.copy('tiled.tif', 'in.tif', driver='COG', compress='NONE', blocksize=512, overviews='NONE')
import os; os.remove('tiled.tif')
"""

STORE = """
import os, obstore
from obstore.store import AzureStore, S3Store
if os.environ.get('BENCH_AZURE_ENDPOINT'):
    store = AzureStore('bench', config={'account_name': 'devstoreaccount1', 'account_key': os.environ['BENCH_AZURE_KEY'],
                       'endpoint': os.environ['BENCH_AZURE_ENDPOINT']}, client_options={'allow_http': True})
else:
    store = S3Store('bench', config={'endpoint': os.environ['AWS_ENDPOINT_URL']}, client_options={'allow_http': True})
"""

UPLOAD = (
    STORE
    + """
import pathlib
for path in sorted(pathlib.Path('.').rglob('*')):
    if path.is_file() and path.name != 'w.npy':
        with open(path, 'rb') as handle:
            obstore.put(store, path.as_posix(), handle, chunk_size=8 << 20)
"""
)

# The output a round left, removed before the next (outside the timing): overwriting a Zarr
# store removes the old one first, which the floor's PUT does not pay.
REMOVE = (
    STORE
    + """
import sys
keys = [i['path'] for b in obstore.list(store, prefix=sys.argv[1]) for i in b]
if keys:
    obstore.delete(store, keys)
"""
)

FLOOR = (
    STORE
    + """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
prefix, out_bytes = sys.argv[1], int(sys.argv[2])
keys = [i['path'] for b in obstore.list(store, prefix=prefix) for i in b] or [prefix]
pieces = []
for key in keys:
    size = obstore.head(store, key)['size']
    pieces += [(key, s, min(size, s + (8 << 20))) for s in range(0, size, 8 << 20)]
gets = {}
for flight in (1, 4, 16):
    start = time.perf_counter()
    with ThreadPoolExecutor(flight) as pool:
        total = sum(pool.map(lambda p: len(obstore.get_range(store, p[0], start=p[1], end=p[2])), pieces))
    gets[flight] = time.perf_counter() - start
data = os.urandom(out_bytes)
start = time.perf_counter()
obstore.put(store, 'floor/out.bin', data, chunk_size=8 << 20, max_concurrency=8)
print(json.dumps({'gets': gets, 'put': time.perf_counter() - start, 'bytes': total}))
"""
)


HTTP_SERVER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from tests.servers import RangeServer
server = RangeServer(sys.argv[1], latency=float(sys.argv[3]))
print(server.url, flush=True)
time.sleep(3600)
"""

HTTP_FLOOR = """
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, size = sys.argv[1], int(sys.argv[2])
def get(start):
    request = urllib.request.Request(url, headers={'Range': f'bytes={start}-{min(size, start + (8 << 20)) - 1}'})
    with urllib.request.urlopen(request) as response:
        return len(response.read())
gets = {}
for flight in (1, 4, 16):
    begin = time.perf_counter()
    with ThreadPoolExecutor(flight) as pool:
        assert sum(pool.map(get, range(0, size, 8 << 20))) == size
    gets[flight] = time.perf_counter() - begin
print(json.dumps(gets))
"""


@dataclass
class Store:
    """The server the tables run against, and the variables that point pwconv at it."""

    name: str
    scheme: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen

    def through(self, endpoint: str) -> dict[str, str]:
        """The variables that send pwconv through ``endpoint`` (a counting proxy) instead."""
        if self.scheme == "s3":
            return {"AWS_ENDPOINT_URL": endpoint}
        return {"AZURE_STORAGE_CONNECTION_STRING": self.env["AZURE_STORAGE_CONNECTION_STRING"].replace(
            f"http://127.0.0.1:{self.port}", endpoint)}  # fmt: skip


def start_moto(pin: list[str]) -> Store:
    port = free_port()
    server = subprocess.Popen([*pin, sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)  # noqa: S310 - loopback
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1"}  # fmt: skip
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/bench", method="PUT"))  # noqa: S310
    return Store(f"moto on 127.0.0.1:{port}", "s3", port, env, server)


def start_azurite(folder: str, pin: list[str]) -> Store:
    """Azurite's blob service keeping its data in ``folder`` (on disk: its in-memory mode
    holds everything twice), with the container ``bench``."""
    from tests.servers import AzuriteServer

    port = free_port()
    server = subprocess.Popen([*pin, "azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                               folder, "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}/{AzuriteServer.ACCOUNT}"
    connection = (f"DefaultEndpointsProtocol=http;AccountName={AzuriteServer.ACCOUNT};"
                  f"AccountKey={AzuriteServer.KEY};BlobEndpoint={base};")  # fmt: skip
    env = {"AZURE_STORAGE_CONNECTION_STRING": connection, "BENCH_AZURE_ENDPOINT": base,
           "BENCH_AZURE_KEY": AzuriteServer.KEY}  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    subprocess.run([sys.executable, "-c", "from azure.storage.blob import BlobServiceClient as B; import os; "
                    "B.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING']).create_container('bench')"],
                   env={**os.environ, **env}, check=True)  # fmt: skip
    return Store(f"Azurite on 127.0.0.1:{port}, on disk", "az", port, env, server)


PY = [sys.executable, "-m", "pwconv"]


def store_tables(folder: Path, store: Store, rows: int, in_bytes: int, out_bytes: int, repeats: int) -> None:
    """apply store -> store against the floor for each input (the floor and pwconv one after
    the other ``repeats`` times, the best of each), explain's transfer, and the npy read with
    1, 4 and 16 requests in flight."""
    subprocess.run([sys.executable, "-c", UPLOAD], cwd=folder, check=True)
    print(f"input {in_bytes / 2**30:.2f} GiB, output {out_bytes / 2**30:.2f} GiB, {store.name}")
    print(
        "| input | GET floor (1 / 4 / 16 in flight) | PUT floor | floor | pwconv store -> store | ratio | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    # A GeoTIFF output is deflate-compressed unless told otherwise: the floor encodes nothing,
    # so the tif row writes it uncompressed, and the next row as by default.
    for name, source, target, extra in (("npy", "in.npy", "out.npy", []), ("zarr", "in.zarr", "out.zarr", []),
                                        ("tif", "in.tif", "out.tif", ["--co", "COMPRESS=NONE"]),
                                        ("tif, deflate output", "in.tif", "out.tif", [])):  # fmt: skip
        gets, put, wall, rss = {1: 1e9, 4: 1e9, 16: 1e9}, 1e9, 1e9, 0
        for _ in range(repeats):  # a slow spell of the VM or the server hits both alike
            done = subprocess.run([sys.executable, "-c", FLOOR, source, str(out_bytes)], capture_output=True,
                                  text=True, check=True)  # fmt: skip
            floor = json.loads(done.stdout)
            gets = {k: min(v, floor["gets"][str(k)]) for k, v in gets.items()}
            put = min(put, floor["put"])
            subprocess.run([sys.executable, "-c", REMOVE, target], check=True)
            once, peak = run([*PY, "apply", f"{store.scheme}://bench/{source}", "w.npy", "-o",
                              f"{store.scheme}://bench/{target}", "--overwrite", *extra], folder)  # fmt: skip
            wall, rss = min(wall, once), max(rss, peak)
        total = min(gets.values()) + put
        print(f"| {name} | {gets[1]:.2f} / {gets[4]:.2f} / {gets[16]:.2f} s | {put:.2f} s | "
              f"{total:.2f} s | {wall:.2f} s | {wall / total:.2f}x | {rss / 2**20:.0f} MiB |")  # fmt: skip
    proxy = FaultProxy(store.port, lambda method, path: False)
    start = time.perf_counter()
    done = subprocess.run([*PY, "explain", f"{store.scheme}://bench/in.npy", "w.npy", "--at", f"{rows // 2},1000"],
                          env={**os.environ, **store.through(proxy.endpoint)}, capture_output=True,
                          cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    print(f"explain at one pixel ({store.scheme}): {proxy.sent:,} bytes transferred of {in_bytes:,} "
          f"({100 * proxy.sent / in_bytes:.4f}%), {time.perf_counter() - start:.2f} s")  # fmt: skip
    proxy.stop()
    print("| requests in flight | npy store -> local npy | throughput | peak RSS |")
    print("|---|---|---|---|")
    for flight in (1, 4, 16):
        wall, rss = run([*PY, "apply", f"{store.scheme}://bench/in.npy", "w.npy", "-o", "local.npy", "--overwrite"],
                        folder, env={"PWCONV_REMOTE_REQUESTS": str(flight)})  # fmt: skip
        print(f"| {flight} | {wall:.2f} s | {in_bytes / wall / 2**20:.0f} MiB/s | {rss / 2**20:.0f} MiB |")


def http_tables(folder: Path, rows: int, in_bytes: int, latency: float) -> None:
    """The npy over HTTP from a threaded server reading the file (faster than moto), each GET
    answered after ``latency`` seconds (a store's time to first byte): against the same GETs
    by urllib, with 1, 4 and 16 requests in flight."""
    http = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, str(folder), str(Path(__file__).parents[1]),
                             str(latency)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert http.stdout is not None
        base = http.stdout.readline().strip()
        url = f"{base}/in.npy"
        done = subprocess.run([sys.executable, "-c", HTTP_FLOOR, url, str(in_bytes)], capture_output=True,
                              text=True, check=True)  # fmt: skip
        gets = {int(k): v for k, v in json.loads(done.stdout).items()}
        print(f"input {in_bytes / 2**30:.2f} GiB over HTTP at {base}, {latency * 1000:.0f} ms to first byte")
        print("| requests in flight | GET floor, HTTP | npy HTTP -> local npy | ratio | peak RSS |")
        print("|---|---|---|---|---|")
        for flight in (1, 4, 16):
            wall, rss = run([*PY, "apply", url, "w.npy", "-o", "local.npy", "--overwrite"], folder,
                            env={"PWCONV_REMOTE_REQUESTS": str(flight)})  # fmt: skip
            print(f"| {flight} | {gets[flight]:.2f} s | {wall:.2f} s | {wall / gets[flight]:.2f}x | "
                  f"{rss / 2**20:.0f} MiB |")  # fmt: skip
        local, rss = run([*PY, "apply", "in.npy", "w.npy", "-o", "local.npy", "--overwrite"], folder)
        print(f"the same apply from the local file: {local:.2f} s, {rss / 2**20:.0f} MiB")
    finally:
        http.terminate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=0.25)
    parser.add_argument("--http-only", action="store_true", help="skip the object-store tables")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of floor and pwconv per input (best of each)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the HTTP server's time to first byte")
    parser.add_argument("--store", choices=("moto", "azurite"), default="moto",
                        help="the object store: moto's S3 (in memory) or Azurite's blob service (on disk)")  # fmt: skip
    parser.add_argument("--server-cpu", type=int, default=None,
                        help="run the store on this CPU and everything else on the others, so that the "
                             "server's work does not take the cores pwconv and the floor run on")  # fmt: skip
    args = parser.parse_args()
    rows = int(2048 * args.size_gib)
    data = tempfile.TemporaryDirectory()
    pin = [] if args.server_cpu is None else ["taskset", "-c", str(args.server_cpu)]
    store = start_moto(pin) if args.store == "moto" else start_azurite(data.name, pin)
    if args.server_cpu is not None:
        os.sched_setaffinity(
            0, os.sched_getaffinity(0) - {args.server_cpu}
        )  # the processes started from here on
        print(f"store on CPU {args.server_cpu}, the rest on CPUs {sorted(os.sched_getaffinity(0))}")
    os.environ.update(store.env)
    try:
        blas = subprocess.run([sys.executable, "-c", "import numpy, threadpoolctl; print([(i.get('internal_api'), "
                               "i.get('architecture'), i.get('num_threads')) for i in threadpoolctl.threadpool_info()])"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        print("BLAS:", blas)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            subprocess.run(
                [sys.executable, "-c", MAKE, str(rows)], cwd=folder, check=True, capture_output=True
            )
            in_bytes, out_bytes = (folder / "in.npy").stat().st_size, rows * 2048 * 16 * 4
            if not args.http_only:
                store_tables(folder, store, rows, in_bytes, out_bytes, args.repeats)
            http_tables(folder, rows, in_bytes, args.latency_ms / 1000)
    finally:
        store.process.terminate()
        store.process.wait()
        data.cleanup()


if __name__ == "__main__":
    main()
