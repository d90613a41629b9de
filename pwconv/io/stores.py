"""Data that lives behind a URL: object stores (``s3://``, ``gs://``, ``az://``) and HTTP.

Object stores are reached with obstore (the ``[cloud]`` extra), which reads each cloud's
standard variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME``, ...); HTTP(S) is read
with the standard library, so that a presigned URL's query string is sent as it is. Nothing
here is imported by a local run.

What pwconv prints or writes names a URL through :func:`shown`: no user, password or query
string (a presigned URL's signature) ever appears in a message, a report or an output's
attributes.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pwconv.errors import (
    InputFileError,
    NetworkError,
    OutputExistsError,
    PwconvError,
    UsageError,
    require_extra,
)
from pwconv.io import threads

#: The schemes pwconv reads (and, but for HTTP, writes) and what messages call them.
SCHEMES = {
    "s3": "S3",
    "gs": "Google Cloud Storage",
    "az": "Azure Blob Storage",
    "abfs": "Azure Blob Storage",
    "abfss": "Azure Blob Storage",
    "http": "HTTP",
    "https": "HTTPS",
}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_ANY_URL = re.compile(r"\b(?:s3|gs|az|abfss?|https?)://[^\s'\"<>]+", re.IGNORECASE)
#: Requests in flight at once for the ranges of one read (PWCONV_REMOTE_REQUESTS sets it).
IN_FLIGHT = max(1, int(os.environ.get("PWCONV_REMOTE_REQUESTS") or 16))
#: The bytes of one request when a large read is split to run in parallel.
PIECE = 8 << 20
# A file-object read this large is fetched in pieces, several in flight.
_PARALLEL_READ = 2 << 20
# An object this small is fetched whole by a file object's first read; of a larger one, a
# read near its end fetches this many bytes before it too.
_WHOLE_OBJECT = 1 << 20
_TAIL = 16 << 10
# A ranged read streamed into place arrives in pieces of this size: below the size glibc maps
# on its own (pwconv sets it to 1 MiB), so the pieces reuse the heap's memory.
_STREAMED = 64 << 10
_T = TypeVar("_T")


def is_url(text: str) -> bool:
    """Whether ``text`` names data behind a URL (``file://`` is a local path, see :func:`local_path`).

    >>> is_url("s3://bucket/scene.tif"), is_url("scene.tif"), is_url("C:/data/x.npy")
    (True, False, False)
    """
    match = _URL.match(text)
    return match is not None and match.group("scheme").lower() in SCHEMES


def local_path(text: str) -> str:
    """A ``file://`` URL as the path it names; anything else unchanged, but for a URL of a
    scheme pwconv does not read (``ftp://``), which is refused rather than taken for a
    local path that does not exist.

    >>> local_path("file:///data/x.npy"), local_path("x.npy")
    ('/data/x.npy', 'x.npy')
    """
    if text[:7].lower() != "file://":
        match = _URL.match(text)
        if match is not None and match.group("scheme").lower() not in SCHEMES and not os.path.exists(text):
            parts = urllib.parse.urlsplit(text)  # shown without its user, password or query
            raise UsageError(
                "expected a local path or an s3://, gs://, az://, abfs://, http(s):// or file:// URL, "
                f"found the scheme {parts.scheme + '://'!r} in '{parts.scheme}://{parts.hostname or ''}{parts.path}'; "
                "use one of those instead"
            )
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"expected a file:// URL of this machine (file:///path), found the host {parts.netloc!r} "
            f"in {shown(text)!r}; use s3://, gs://, az:// or https:// for remote data"
        )
    return urllib.parse.unquote(parts.path)


def shown(url: str) -> str:
    """``url`` as messages, reports and output attributes may show it: no user, password or
    query string (which holds a presigned URL's signature).

    >>> shown("https://user:secret@host/x.npy?X-Amz-Signature=abc")
    'https://host/x.npy?...'
    """
    if not is_url(url):
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


def scrub(text: str) -> str:
    """Every URL inside ``text`` as :func:`shown` gives it."""
    if "://" not in text:
        return text

    def hide(match: re.Match[str]) -> str:
        url = match.group(0)
        kept = url.rstrip(":,.;)")
        if kept.endswith("://"):  # a scheme named in prose ("s3://, gs://")
            return url
        return shown(kept) + url[len(kept) :]

    return _ANY_URL.sub(hide, text)


def url_path(text: str) -> str:
    """The part of a URL that names the file (no query string), for matching suffixes.

    >>> url_path("https://host/a/b.tif?sig=1")
    'https://host/a/b.tif'
    """
    if not is_url(text):
        return text
    parts = urllib.parse.urlsplit(text)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def basename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])


def is_http(url: str) -> bool:
    return url[:5].lower() in ("http:", "https")


def join(url: str, name: str) -> str:
    """``url`` with ``name`` appended as one more path part (a prefix's object)."""
    return url.rstrip("/") + "/" + name.lstrip("/")


@dataclass(frozen=True)
class Location:
    """An object-store URL taken apart: scheme, bucket (or container), key, and the Azure
    storage account where the URL names one (``abfs://container@account.dfs.core.windows.net/``).

    >>> Location.of("abfs://scenes@myaccount.dfs.core.windows.net/a/b.npy")
    Location(scheme='abfs', bucket='scenes', key='a/b.npy', account='myaccount')
    """

    scheme: str
    bucket: str
    key: str
    account: str = ""

    @classmethod
    def of(cls, url: str) -> Location:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        bucket, key = parts.netloc, urllib.parse.unquote(parts.path).lstrip("/")
        account = ""
        if scheme.startswith("abfs") and "@" in bucket:
            bucket, host = bucket.split("@", 1)
            account = host.split(".", 1)[0]
        if not bucket:
            raise UsageError(
                f"expected a bucket in {shown(url)!r} ({scheme}://BUCKET/KEY), found none; name one"
            )
        return cls(scheme, bucket, key, account)


# --- errors ----------------------------------------------------------------------------------

_ENDPOINT_HINT = "check the network, or the endpoint (AWS_ENDPOINT_URL and the like)"


class MissingObject(InputFileError):
    """No object at the URL (exit 2): for a store's optional objects (a Zarr chunk never
    written), the reader's cue to use the fill value."""


def _failure(url: str, exc: BaseException, doing: str) -> Exception:
    """A client's exception as pwconv's one-line error: exit 2 for a wrong URL or no access,
    exit 1 for a network that failed."""
    name = shown(url)
    kind = type(exc).__name__
    text = _client_message(exc)
    missing = isinstance(exc, FileNotFoundError) or kind == "NotFoundError" or _says_status(text, "404")
    if missing and "NoSuchUpload" in text:  # a multipart upload lost while a part was retried
        return NetworkError(f"cannot {doing} {name!r}: the upload was lost mid-transfer; {_ENDPOINT_HINT}")
    if missing and doing == "write":
        return UsageError(
            f"expected an existing bucket for the output {name!r}, found none; create it, or check the URL"
        )
    if missing:
        return MissingObject(
            f"expected an object at {name!r}, found none (no such object, prefix or bucket); check the URL"
        )
    if kind in ("PermissionDeniedError", "UnauthenticatedError") or _says_status(text, "40[13]"):
        if is_http(url):
            return InputFileError(
                f"expected access to {name!r}, found it denied; check that the URL is whole (a presigned "
                "URL's query string) and has not expired"
            )
        credentials, anonymous = _ACCESS[url.partition(":")[0].lower()[:2]]
        return InputFileError(
            f"expected access to {name!r}, found it denied; check the credentials ({credentials}), "
            f"or set {anonymous} for a public bucket"
        )
    if isinstance(exc, FileExistsError) or kind in ("AlreadyExistsError", "PreconditionError"):
        return OutputExistsError(
            f"output {name!r} exists; pass [[overwrite!]] to replace it, or choose another name"
        )
    reason = scrub(_reason(text) or kind)
    return NetworkError(f"cannot {doing} {name!r}: {reason}; {_ENDPOINT_HINT}")


#: Where each cloud's credentials come from, and its variable for unsigned (public) access.
_ACCESS = {
    "s3": ("AWS_ACCESS_KEY_ID/AWS_PROFILE", "AWS_SKIP_SIGNATURE=true"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SKIP_SIGNATURE=true"),
    "az": ("AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_*", "AZURE_SKIP_SIGNATURE=true"),
    "ab": ("AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_*", "AZURE_SKIP_SIGNATURE=true"),
}

_REASONS = (
    ("connection refused", "connection refused"),
    ("connection reset", "connection reset"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("dns error", "host not found"),
    ("name or service not known", "host not found"),
    ("incomplete", "the transfer was cut short"),
    ("end of file", "the transfer was cut short"),
)


def _client_message(exc: BaseException) -> str:
    """A client's exception as one line, without its timings (see :func:`_without_timings`)."""
    return _without_timings(" ".join(str(exc).split()))


def _says_status(text: str, codes: str) -> bool:
    """Whether a client's message (:func:`_client_message`) names one of the HTTP statuses
    ``codes`` (a pattern) as a word: "404" inside an upload id or an ETag is not one, nor a
    duration ("in 403.2µs"), which the message no longer holds."""
    return bool(re.search(rf"\b{codes}\b", text[:400]))


def _without_timings(text: str) -> str:
    """A client's message without its timings and retry settings, which are no cause and
    whose numbers read like status codes ("in 403.2µs", "retry_timeout: 30s").

    >>> _without_timings("HEAD /x in 403.217µs - error sending request, retry_timeout: 30s, retries: 3")
    'HEAD /x in - error sending request, retries: 3'
    """
    text = re.sub(r"\b(retry_timeout|elapsed): [^,]*,\s*", "", text)
    return re.sub(r"\s*\b\d+(\.\d+)?(ns|µs|us|ms|s)\b", "", text)


def _reason(text: str) -> str:
    # obstore's "Debug source:" dump names the cause (ConnectionRefused) beside settings and
    # timings that are none (taken out by _failure)
    low = text.lower()
    for key, reason in _REASONS:
        if key in low:
            return reason
    if re.search(r"\b503\b", low):
        return "the server is unavailable (HTTP 503)"
    if re.search(r"\b5\d\d\b", low):
        return "the server failed (HTTP 5xx)"
    return text[:120]


def _guarded(url: str, doing: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except (InputFileError, NetworkError, OutputExistsError, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - obstore's and http.client's errors have many types
        raise _failure(url, exc, doing) from None
    finally:
        if doing == "write":
            _forget_small()


# --- object stores through obstore -----------------------------------------------------------


def _obstore() -> Any:
    return require_extra("obstore", "cloud", "s3://, gs:// and az:// URLs")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _store(scheme: str, bucket: str, prefix: str = "", account: str = "") -> Any:
    """One client per bucket, configured from the cloud's own variables; settings the
    client cannot use (a malformed key or service-account file) are exit 2."""
    _obstore()
    try:
        return _client(scheme, bucket, prefix, account)
    except Exception as exc:  # noqa: BLE001 - obstore's configuration errors have many types
        reason = scrub(" ".join(str(exc).partition("Debug source:")[0].split())[:200])
        raise UsageError(
            f"expected usable {SCHEMES[scheme]} settings for {scheme}://{bucket}, found: {reason}; "
            "check the cloud's variables (AWS_*, GOOGLE_*, AZURE_STORAGE_*)"
        ) from None


def _seconds(value: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=value)


# Three retries with backoff on the errors the clouds call retryable, within 30 s.
_RETRY: Any = {"max_retries": 3, "retry_timeout": _seconds(30), "backoff": {"init_backoff": _seconds(0.1)}}


def _client(scheme: str, bucket: str, prefix: str, account: str) -> Any:
    from obstore.store import AzureStore, GCSStore, S3Store

    client: Any = {"connect_timeout": "10s", "timeout": os.environ.get("PWCONV_REMOTE_TIMEOUT", "120s")}
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")
        if endpoint.startswith("http://"):
            client["allow_http"] = True
        config: Any = {}
        if endpoint:
            config["endpoint"] = endpoint
        if _truthy("AWS_NO_SIGN_REQUEST"):
            config["skip_signature"] = True
        if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            config["region"] = "us-east-1"
        credentials = _profile_credentials()
        return S3Store(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options=client,
            retry_config=_RETRY,
            credential_provider=credentials,
        )
    if scheme == "gs":
        if _gcs_emulator().startswith("http://"):
            client["allow_http"] = True
        return GCSStore(
            bucket, prefix=prefix or None, config=_gcs_config(), client_options=client, retry_config=_RETRY
        )
    config = _azure_config(account)
    if str(config.get("endpoint", "")).startswith("http://"):
        client["allow_http"] = True
    return AzureStore(
        bucket, prefix=prefix or None, config=config, client_options=client, retry_config=_RETRY
    )


def _gcs_emulator() -> str:
    """The base URL of a Cloud Storage emulator named by STORAGE_EMULATOR_HOST (the variable
    Google's client libraries and gcsfs read), or ''."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if host and "://" not in host:
        host = "http://" + host
    return host


def _gcs_config() -> Any:
    """Settings obstore does not read itself: an emulator takes every request at its base
    URL, unsigned (obstore's own form for that is a service-account key naming the URL)."""
    emulator = _gcs_emulator()
    if not emulator:
        return {}
    import json

    key = {
        "gcs_base_url": emulator,
        "disable_oauth": True,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    }
    return {"service_account_key": json.dumps(key)}


#: The Azurite emulator's documented development account (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azure_connection() -> dict[str, str]:
    """The fields of AZURE_STORAGE_CONNECTION_STRING (what the Azure CLI, the SDKs, adlfs
    and GDAL read), ``UseDevelopmentStorage=true`` spelled out as Azurite's own fields.

    >>> import os; os.environ["AZURE_STORAGE_CONNECTION_STRING"] = "AccountName=a;AccountKey=k=="
    >>> azure_connection()
    {'AccountName': 'a', 'AccountKey': 'k=='}
    >>> del os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    """
    text = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    fields = dict(part.strip().split("=", 1) for part in text.split(";") if "=" in part)
    if fields.pop("UseDevelopmentStorage", "").lower() == "true":
        host = fields.pop("DevelopmentStorageProxyUri", "http://127.0.0.1").rstrip("/")
        fields = {**_azurite(f"{host}:10000"), **fields}
    return fields


def _azurite(base: str) -> dict[str, str]:
    """Connection fields of Azurite's development account with its blob service at ``base``."""
    return {
        "AccountName": AZURITE_ACCOUNT,
        "AccountKey": AZURITE_KEY,
        "BlobEndpoint": f"{base}/{AZURITE_ACCOUNT}",
    }


def _azure_key() -> str:
    """The account key by any of its names: obstore's, the Azure CLI's, GDAL's."""
    names = ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY")
    return next((os.environ[name] for name in names if os.environ.get(name)), "")


def _azure_config(account: str) -> Any:
    """Settings obstore does not read itself: the connection string, the Azure CLI's and
    GDAL's names for the account and its key, and an account named in the URL."""
    fields = azure_connection()
    config: dict[str, Any] = {}
    named = {"AccountName": "account_name", "AccountKey": "account_key", "SharedAccessSignature": "sas_key"}
    for field, key in named.items():
        if fields.get(field):
            config[key] = fields[field]
    if fields.get("BlobEndpoint"):
        config["endpoint"] = fields["BlobEndpoint"].rstrip("/")
    elif fields.get("EndpointSuffix") and config.get("account_name"):
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        config["endpoint"] = f"{protocol}://{config['account_name']}.blob.{fields['EndpointSuffix']}"
    if "account_name" not in config and not os.environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
        if os.environ.get("AZURE_STORAGE_ACCOUNT"):
            config["account_name"] = os.environ["AZURE_STORAGE_ACCOUNT"]
    if "account_key" not in config and not os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") and _azure_key():
        config["account_key"] = _azure_key()
    if account:
        config["account_name"] = account
    return config


def _profile_credentials() -> Any:
    """Credentials of an ``~/.aws/config`` profile (AWS_PROFILE), through boto3 where it is
    installed; None lets obstore read the variables itself."""
    if not os.environ.get("AWS_PROFILE") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    try:
        return Boto3CredentialProvider()
    except Exception:  # noqa: BLE001 - boto3 missing or the profile unreadable: obstore's own rules
        return None


def _located(url: str) -> tuple[Any, str]:
    where = Location.of(url)
    return _store(where.scheme, where.bucket, "", where.account), where.key


# --- HTTP through the standard library -------------------------------------------------------


class _HttpStatus(Exception):
    def __init__(self, code: int, location: str = "") -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.location = code, location


_connections = threading.local()
_PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _received(response: Any, into: memoryview | None) -> Any:
    """The body of ``response``: read into ``into`` (as far as it goes; its view of what came)
    for a ranged answer, else as bytes. Bytes beyond ``into`` are read too, so that the
    connection stays usable; the caller finds the length wrong."""
    if into is None or response.status != 206:
        return response.read()
    got = 0
    while got < len(into):
        count = response.readinto(into[got:])
        if not count:
            break
        got += count
    extra = response.read()
    return bytes(into[:got]) + extra if extra else into[:got]


def _http_once(url: str, headers: dict[str, str], into: memoryview | None = None) -> tuple[int, Any, str]:
    """One GET: (status, body, Content-Range). Connections are kept per thread and host
    (keep-alive), but for a proxy from the environment, which urllib then speaks to. A
    ranged answer is read straight into ``into`` where given (the body is then its view)."""
    import http.client

    if any(os.environ.get(name) for name in _PROXIES):
        from urllib.error import HTTPError
        from urllib.request import Request, urlopen

        try:
            with urlopen(Request(url, headers=headers), timeout=_http_timeout()) as response:  # noqa: S310
                body = _received(response, into)
                return response.status, body, response.headers.get("Content-Range", "")
        except HTTPError as exc:
            raise _HttpStatus(exc.code) from None
    parts = urllib.parse.urlsplit(url)
    pool = getattr(_connections, "pool", None)
    if pool is None:
        pool = _connections.pool = {}
    key = (parts.scheme.lower(), parts.netloc)
    connection = pool.get(key)
    if connection is None:
        kind = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
        connection = pool[key] = kind(parts.netloc.rpartition("@")[2], timeout=_http_timeout())
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = _received(response, into)
    except BaseException:
        pool.pop(key, None)
        connection.close()
        raise
    if response.status in (301, 302, 303, 307, 308):
        raise _HttpStatus(response.status, urllib.parse.urljoin(url, response.getheader("Location", "")))
    if response.status >= 400:
        raise _HttpStatus(response.status)
    return response.status, body, response.getheader("Content-Range", "")


def _http_get(
    url: str, start: int | None = None, end: int | None = None, into: memoryview | None = None
) -> tuple[Any, str]:
    """GET ``url`` (bytes start..end-1 where given), following redirects, with retries on
    the errors servers call passing; returns the body and the Content-Range header. With
    ``into`` (a range's length), the body is written there and returned as its view."""
    import http.client

    headers = {"User-Agent": "pwconv"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    delay, where, redirects = 0.1, url, 0
    attempt = 0
    while True:
        try:
            status, body, span = _http_once(where, headers, into)
            if start is not None and status != 206:
                body = body[start:end]  # a server without ranges sent the whole object
                if into is not None and len(body) == len(into):
                    into[:] = body
                    body = into
            return body, span
        except _HttpStatus as exc:
            if exc.location and redirects < 5:
                where, redirects = exc.location, redirects + 1
                continue
            if exc.code not in (429, 500, 502, 503, 504) or attempt == 3:
                raise _failure(url, OSError(f"HTTP {exc.code}"), "read") from None
        except (OSError, http.client.HTTPException) as exc:
            if attempt == 3:
                raise _failure(url, exc, "read") from None
        attempt += 1
        time.sleep(delay)
        delay *= 2


_pool: list[Any] = []


def remote_threads() -> Any:
    """One thread pool for every ranged read of the process (IN_FLIGHT threads)."""
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor

        _pool.append(ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="pwconv-remote"))
    return _pool[0]


def _http_timeout() -> float:
    text = os.environ.get("PWCONV_REMOTE_TIMEOUT", "120s").rstrip("s")
    try:
        return float(text)
    except ValueError:
        return 120.0


#: What opening an object fetches of its start, in the request that learns its size: every
#: reader parses a header there (npy, TIFF, HDF5, safetensors), and a small object comes whole.
#: As much as GDAL reads on opening a file; some objects are opened several times a run (a
#: model file's header by ``info``: three times), so more would cost bytes for no request.
HEAD_BYTES = 16 << 10


def _http_head(url: str) -> tuple[int, Any]:
    """The object's size and first bytes from one ranged GET (a presigned URL signs GET, not
    HEAD)."""
    body, span = _http_get(url, 0, HEAD_BYTES)
    total = span.rpartition("/")[2]
    if total.isdigit():
        return int(total), body
    body, _ = _http_get(url)
    return len(body), memoryview(body)[:HEAD_BYTES]


def _store_head(url: str) -> tuple[int, Any]:
    """The object's size and first bytes from one ranged GET; an empty object, which no range
    fits, is asked its size."""
    store, key = _located(url)
    obstore = _obstore()
    try:
        answer = obstore.get(store, key, options={"range": (0, HEAD_BYTES)})
        return int(answer.meta["size"]), answer.bytes()
    except Exception as exc:  # noqa: BLE001 - obstore's errors have many types; this one says 416
        if not _says_status(_client_message(exc), "416"):
            raise
    return int(obstore.head(store, key)["size"]), b""


# --- one object ------------------------------------------------------------------------------


# Objects that came whole with the request that opened them (at most HEAD_BYTES), kept for
# the rest of the process: a small bank is opened by several readers (its names, labels,
# tensors, the digest) and was fetched by each (an npz bank over HTTP: up to 16 requests).
# Whatever pwconv writes or removes at a URL forgets them all, so no read after it sees a
# copy older than its own write.
_small: dict[str, bytes] = {}
_small_lock = threading.Lock()
_SMALL_MOST = 256  # objects kept at most (4 MiB)


def _forget_small() -> None:
    with _small_lock:
        _small.clear()


def _kept_whole(url: str) -> bytes | None:
    with _small_lock:
        return _small.get(url)


class RemoteObject:
    """One object behind a URL, read by byte ranges, several in flight at once."""

    def __init__(self, url: str, size: int | None = None) -> None:
        """``size``, where the caller knows it (a chunk of a fixed size), spares the request
        that asks it; every ranged answer is then checked against it. Otherwise that request
        also fetches the first :data:`HEAD_BYTES`, kept for the reads that fall within them."""
        self.url = url
        self._head: Any = b""
        self.transferred = 0
        if size is not None:
            self.size = size
        elif (whole := _kept_whole(url)) is not None:  # fetched whole by an earlier open this run
            self.size, self._head = len(whole), whole
        else:
            self.size, self._head = _guarded(
                url, "read", lambda: (_http_head if is_http(url) else _store_head)(url)
            )
            self.transferred = len(self._head)
            if len(self._head) == self.size:
                with _small_lock:
                    if len(_small) < _SMALL_MOST:
                        _small[url] = bytes(self._head)
        self._lock = threading.Lock()

    @property
    def head(self) -> Any:
        """The first bytes, fetched with the size (empty where the size was given)."""
        return self._head

    def _in_head(self, start: int, end: int) -> Any:
        """Bytes start..end-1 from the kept first bytes, or None where they lie beyond."""
        return memoryview(self._head)[start:end] if end <= len(self._head) else None

    def read_range(self, start: int, end: int) -> Any:
        """The bytes start..end-1 (a bytes-like object)."""
        return self.read_ranges([start], [end])[0]

    def _check_within(self, starts: list[int], ends: list[int]) -> None:
        if any(e > self.size or s > e for s, e in zip(starts, ends)):
            raise InputFileError(
                f"expected at least {max(ends)} bytes in {shown(self.url)!r}, found {self.size}; "
                "the object is truncated"
            )

    def read_range_into(self, start: int, out: memoryview) -> None:
        """The bytes from ``start`` written into ``out`` as they arrive, without a buffer of
        their own in between (memory the system would map, fault in and zero for every piece:
        0.4 s of system time per GiB on object stores)."""
        end = start + len(out)
        self._check_within([start], [end])
        kept = self._in_head(start, end)
        if kept is not None:
            out[:] = kept
            return
        if is_http(self.url):
            body, span = _http_get(self.url, start, end, into=out)
            got, total = len(body), span.rpartition("/")[2]
            size = int(total) if total.isdigit() else self.size
        else:
            store, key = _located(self.url)
            obstore = _obstore()

            def stream() -> tuple[int, int]:
                at = 0
                answer = obstore.get(store, key, options={"range": (start, end)})
                for chunk in answer.stream(min_chunk_size=_STREAMED):
                    count = min(len(chunk), len(out) - at)
                    out[at : at + count] = memoryview(chunk)[:count]
                    at += len(chunk)
                return at, int(answer.meta["size"])

            got, size = _guarded(self.url, "read", stream)
        with self._lock:
            self.transferred += got
        if size != self.size:
            raise InputFileError(
                f"expected an object of {self.size} bytes at {shown(self.url)!r}, found {size}; it is "
                "damaged or was replaced while read; write it again"
            )
        if got != len(out):
            raise NetworkError(
                f"cannot read {shown(self.url)!r}: the server sent {got} bytes of the {len(out)} asked; "
                f"{_ENDPOINT_HINT}"
            )

    def read_ranges(self, starts: list[int], ends: list[int]) -> list[Any]:
        """The bytes ``starts[i]:ends[i]`` of each range (obstore merges neighbours and runs
        them in parallel; HTTP ranges run on a thread pool)."""
        if not starts:
            return []
        self._check_within(starts, ends)
        if max(ends) <= len(self._head):
            return [self._in_head(s, e) for s, e in zip(starts, ends)]
        if is_http(self.url):
            merged = _merge(starts, ends)
            if len(merged) == 1:
                bodies = [_http_get(self.url, *merged[0])[0]]
            else:
                bodies = list(remote_threads().map(lambda se: _http_get(self.url, *se)[0], merged))
            parts = _split(merged, bodies, starts, ends)
        else:
            store, key = _located(self.url)
            obstore = _obstore()
            if len(starts) == 1:  # one request, its bytes not copied
                got = [
                    _guarded(
                        self.url, "read", lambda: obstore.get_range(store, key, start=starts[0], end=ends[0])
                    )
                ]
            else:
                got = _guarded(
                    self.url, "read", lambda: obstore.get_ranges(store, key, starts=starts, ends=ends)
                )
            parts = [memoryview(b) for b in got]
        with self._lock:
            self.transferred += sum(len(p) for p in parts)
        if any(len(p) != e - s for p, s, e in zip(parts, starts, ends)):
            raise NetworkError(
                f"cannot read {shown(self.url)!r}: the server sent fewer bytes than asked; {_ENDPOINT_HINT}"
            )
        return parts

    def read_into(self, starts: list[int], length: int, out: memoryview) -> None:
        """Runs of ``length`` bytes from each of ``starts`` (ascending), laid end to end into
        ``out``: neighbouring runs are joined, large ones split into pieces of :data:`PIECE`,
        and the pieces fetched :data:`IN_FLIGHT` at a time, each copied into place as it comes
        (memory: the output plus the pieces in flight)."""
        # Pieces of PIECE bytes, the size object stores serve best (a block is made large enough
        # to fill IN_FLIGHT of them): cut finer, a block's requests cost more than they hide.
        # The pieces in flight never hold more than the output does.
        piece = PIECE
        pieces: list[tuple[int, int, int]] = []  # (object offset, output offset, bytes)
        for i, start in enumerate(starts):
            if pieces and pieces[-1][0] + pieces[-1][2] == start and pieces[-1][2] + length <= piece:
                first, at, count = pieces[-1]
                pieces[-1] = (first, at, count + length)
                continue
            for offset in range(0, length, piece):
                pieces.append((start + offset, i * length + offset, min(piece, length - offset)))
        small = len(pieces) > IN_FLIGHT and sum(p[2] for p in pieces) <= piece
        if small:  # many short runs (a window across channel planes): one call, merged there
            got = self.read_ranges([p[0] for p in pieces], [p[0] + p[2] for p in pieces])
            for (_, at, count), data in zip(pieces, got):
                out[at : at + count] = data
            return

        def fetch(piece: tuple[int, int, int]) -> None:
            first, at, count = piece
            self.read_range_into(first, out[at : at + count])

        if len(pieces) == 1:
            fetch(pieces[0])
            return
        for done in remote_threads().map(fetch, pieces):
            del done

    def read_spans(self, starts: list[int], ends: list[int]) -> list[Any]:
        """The bytes of each range, fetched as spans: neighbouring ranges joined, each span cut
        into pieces of :data:`PIECE` fetched :data:`IN_FLIGHT` at a time (a few large ranges
        would otherwise be as many single streams, many small ones as many requests)."""
        spans = _merge(starts, ends)
        if sum(e - s for s, e in spans) <= PIECE:  # one call: obstore joins and runs them
            return self.read_ranges(starts, ends)
        import numpy as np

        # Not zeroed first (as a bytearray is): each page is touched once, by its bytes.
        buffers = [np.empty(e - s, np.uint8) for s, e in spans]
        pieces = [
            (i, at, min(PIECE, end - start - at))
            for i, (start, end) in enumerate(spans)
            for at in range(0, end - start, PIECE)
        ]

        def fetch(piece: tuple[int, int, int]) -> None:
            i, at, count = piece
            self.read_range_into(spans[i][0] + at, buffers[i].data[at : at + count])

        for done in remote_threads().map(fetch, pieces):
            del done
        return _split(spans, buffers, starts, ends)

    def chunks(self, size: int = 8 << 20) -> Iterator[bytes]:
        """The whole object, a few MiB at a time."""
        for start in range(0, self.size, size * IN_FLIGHT):
            starts = list(range(start, min(self.size, start + size * IN_FLIGHT), size))
            yield from self.read_ranges(starts, [min(self.size, s + size) for s in starts])


def read_head(url: str, limit: int) -> Any:
    """Up to the first ``limit`` bytes of the object at ``url``, in one request that does
    not ask its size first (:class:`MissingObject` where there is none)."""
    if is_http(url):
        return _guarded(url, "read", lambda: _http_get(url, 0, limit)[0])
    store, key = _located(url)
    obstore = _obstore()
    return _guarded(url, "read", lambda: obstore.get(store, key, options={"range": (0, limit)}).bytes())


def _merge(starts: list[int], ends: list[int], gap: int = 256 << 10) -> list[tuple[int, int]]:
    """Ranges joined where they lie within ``gap`` bytes of each other."""
    merged: list[list[int]] = []
    for s, e in sorted(zip(starts, ends)):
        if merged and s <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _split(merged: list[tuple[int, int]], bodies: list[Any], starts: list[int], ends: list[int]) -> list[Any]:
    out: list[Any] = []
    for s, e in zip(starts, ends):
        for (ms, me), body in zip(merged, bodies):
            if ms <= s and e <= me:
                out.append(memoryview(body)[s - ms : e - ms])
                break
    return out


class RangedFile:
    """A read-only file over a :class:`RemoteObject` for code that reads through a file
    object (``read``, ``seek``, ``tell``): a header parser, h5py's file-object driver. Small
    reads take ``ahead`` bytes a request; a read of several MiB is fetched in pieces, several
    in flight (:meth:`RemoteObject.read_into`).

    A library that calls it may turn its errors into its own (h5py raises ``OSError``):
    ``failure`` keeps the first pwconv error, for the caller to raise in their place."""

    def __init__(self, remote: RemoteObject, ahead: int = 64 << 10) -> None:
        self.remote, self.ahead, self.position = remote, ahead, 0
        self._start, self._data = 0, remote.head  # the first window: what opening it fetched
        self._fetched: list[tuple[int, Any]] = []  # (start, bytes) of prefetch()
        self.failure: PwconvError | None = None

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these byte ranges at once, in parallel (neighbours joined), for the reads
        that follow: a block's chunks, which a library would otherwise ask for one by one."""
        ranges = sorted((max(0, a), min(self.remote.size, b)) for a, b in ranges if b > a)
        try:
            bodies = self.remote.read_spans([a for a, _ in ranges], [b for _, b in ranges]) if ranges else []
        except PwconvError as exc:
            self.failure = self.failure or exc
            raise
        self._fetched = [(a, body) for (a, _), body in zip(ranges, bodies)]

    def forget(self) -> None:
        """Drop what :meth:`prefetch` fetched."""
        self._fetched = []

    def read(self, count: int = -1) -> bytes:
        end = self.remote.size if count < 0 else min(self.remote.size, self.position + count)
        out = bytearray(max(0, end - self.position))
        self.readinto(out)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position (h5py reads this way): straight into
        it, from what was prefetched, from the read-ahead, or by ranges in flight."""
        view = memoryview(buffer).cast("B")
        start = self.position
        end = min(self.remote.size, start + len(view))
        if end <= start:
            return 0
        view = view[: end - start]
        for first, body in self._fetched:
            if first <= start and end <= first + len(body):
                view[:] = body[start - first : end - first]
                self.position = end
                return end - start
        try:
            if end - start >= _PARALLEL_READ:
                self.remote.read_into([start], end - start, view)
                self.position = end
                return end - start
            if not (self._start <= start and end <= self._start + len(self._data)):
                self._start, stop = self._window(start, end)
                self._data = self.remote.read_range(self._start, stop)
        except PwconvError as exc:
            self.failure = self.failure or exc
            raise
        view[:] = self._data[start - self._start : end - self._start]
        self.position = end
        return end - start

    def _window(self, start: int, end: int) -> tuple[int, int]:
        """The bytes to fetch for a read of ``start``-``end``: the whole of a small object
        (a bank: every open then costs one request), the last :data:`_TAIL` bytes for a
        read near the end (a zip's end records, read backwards from the end), else ``ahead``
        bytes from ``start``."""
        size = self.remote.size
        if size <= _WHOLE_OBJECT:
            return 0, size
        stop = max(end, min(size, start + self.ahead))
        if stop == size:
            return min(start, max(0, size - _TAIL)), size
        return start, stop

    def raise_failure(self) -> None:
        """Raise the pwconv error a read met, if one did."""
        if self.failure is not None:
            raise self.failure

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.remote.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._data = b""

    def __enter__(self) -> RangedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_binary(path: str) -> Any:
    """A local file opened for reading, or the object at a URL as a :class:`RangedFile`:
    for readers that seek and read a file object (a zip's directory, then one member).

    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "b.bin")
    >>> _ = open(path, "wb").write(b"abc")
    >>> with open_binary(path) as handle: handle.read()
    b'abc'
    """
    if is_url(path):
        return RangedFile(RemoteObject(path))
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def exists(url: str, doing: str = "reach") -> bool:
    """Whether an object, or any object under the prefix ``url/``, is there."""
    if is_http(url):
        try:
            RemoteObject(url)
        except InputFileError:
            return False
        return True
    store, key = _located(url)
    obstore = _obstore()

    def look() -> bool:
        try:
            obstore.head(store, key)
            return True
        except FileNotFoundError:
            pass
        listing = obstore.list(store, prefix=key.rstrip("/") + "/", chunk_size=1)
        return any(True for batch in listing for _ in batch)

    return _guarded(url, doing, look)


def is_prefix(url: str) -> bool:
    """Whether ``url`` names a folder of objects (a Zarr store, a batch's inputs) rather than one."""
    if is_http(url):
        return False
    store, key = _located(url)
    listing = _guarded(
        url, "list", lambda: list(_obstore().list(store, prefix=key.rstrip("/") + "/", chunk_size=1))
    )
    return any(listing)


def list_objects(url: str) -> list[str]:
    """The URLs of every object under the prefix ``url``, sorted."""
    if is_http(url):
        raise UsageError(
            f"expected an s3://, gs:// or az:// prefix to list, found the HTTP URL {shown(url)!r}"
        )
    store, key = _located(url)
    prefix = key.rstrip("/") + "/" if key else ""
    batches = _guarded(url, "list", lambda: list(_obstore().list(store, prefix=prefix)))
    base = url_path(url).rstrip("/")
    return sorted(base + "/" + item["path"][len(prefix) :] for batch in batches for item in batch)


# --- writing ---------------------------------------------------------------------------------


def check_writable_url(url: str, overwrite: bool) -> None:
    """Refuse an HTTP output and an existing object without ``overwrite``."""
    if is_http(url):
        raise UsageError(
            f"expected an output pwconv can write, found the HTTP URL {shown(url)!r}, which is read only; "
            "write to s3://, gs://, az:// or a local file"
        )
    Location.of(url)
    if not overwrite and exists(url, "write"):
        raise OutputExistsError(
            f"output {shown(url)!r} exists; pass [[overwrite!]] to replace it, or choose another name"
        )


def upload_file(local: str, url: str) -> None:
    """Put a finished local file at ``url``: a multipart upload whose object appears only when
    the last part is in (obstore aborts the upload on failure)."""
    store, key = _located(url)
    obstore = _obstore()

    def put() -> None:
        with open(local, "rb") as handle:
            obstore.put(store, key, handle, chunk_size=8 << 20, max_concurrency=8)

    _guarded(url, "write", put)


def streamed_upload_parts(allowance: int) -> int:
    """The parts a streamed upload keeps in flight within ``allowance`` bytes: it holds that
    many 8 MiB pieces and the one being filled (1 to 8 parts, so 16 MiB at the least); 8
    where no allowance is given (0)."""
    if not allowance:
        return 8
    return max(1, min(8, allowance // PIECE - 1))


class StreamedUpload:
    """An object written as its bytes come, front to back: one multipart upload (8 MiB
    parts, ``parts`` in flight) fed from :meth:`send` while the run goes on, so that nothing is
    staged on the local disk. The object appears only when :meth:`finish` completes the
    upload; :meth:`cancel` (or any failure) aborts it, and nothing is left at the URL.

    :meth:`send` returns once the client has taken the bytes, so at most one piece waits
    beside the parts in flight. A failure of the upload is raised by the next call."""

    _END = object()
    _CANCEL = object()

    def __init__(self, url: str, parts: int = 8) -> None:
        import queue

        self.url, self.parts = url, parts
        self._store, self._key = _located(url)
        self._slot: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._taken = threading.Event()
        self._error: BaseException | None = None
        self._all_given = False  # the client has had the last piece: it completes the upload
        self._finished = False  # finish() returned: the object is in place
        self._thread = threads.Thread(self._upload, "pwconv-upload")

    def _pieces(self) -> Iterator[Any]:
        while True:
            item = self._slot.get()
            if item is self._END:
                self._all_given = True
                return
            if item is self._CANCEL:
                raise _Cancelled("the run failed; the upload is aborted")
            yield item
            self._taken.set()  # the client asks for more: it has copied this piece

    def _upload(self) -> None:
        try:
            _guarded(
                self.url,
                "write",
                lambda: _obstore().put(
                    self._store, self._key, self._pieces(), chunk_size=PIECE, max_concurrency=self.parts
                ),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that sends
            self._error = exc
        finally:
            self._taken.set()

    def _check(self) -> None:
        if self._error is not None and not isinstance(self._error, _Cancelled):
            raise self._error
        if not self._thread.alive():
            raise NetworkError(f"the upload to {shown(self.url)!r} stopped; run again")

    def send(self, data: Any) -> None:
        """Hand ``data`` (bytes or a buffer) to the upload; blocks while the client is busy."""
        self._check()
        self._taken.clear()
        self._slot.put(data)
        while not self._taken.wait(0.05):
            self._check()
        self._check()

    def finish(self) -> None:
        """Complete the upload: the object appears whole, or the failure is raised."""
        self._check()
        self._slot.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._finished = True

    def cancel(self) -> None:
        """Abort the upload (its parts are removed); nothing is left at the URL, not even an
        object that :meth:`finish` was completing when a signal stopped it. After
        :meth:`finish` has returned, the object is the output and stays."""
        if self._thread.alive():
            import queue

            try:  # a piece not taken yet (the end too) makes way for the word to stop
                self._slot.get_nowait()
            except queue.Empty:
                pass
            self._slot.put(self._CANCEL)
            self._thread.join(timeout=30)
        if self._all_given and not self._finished and self._error is None and not self._thread.alive():
            self._all_given = False
            remove(self.url)  # completed after all: the run that wrote it failed


class _Cancelled(Exception):
    pass


#: Files a store is opened through: uploaded last, so that a reader never finds metadata
#: whose chunks are not all in place.
_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


def upload_folder(local: str, url: str, *, replace: bool = True) -> None:
    """Put a finished local folder (a Zarr store) under the prefix ``url``: chunks first,
    metadata last, then the objects of an older store there that the new one lacks go. On
    failure every object written goes, and the metadata of an older store went first, so that
    nothing readable is left half-new. With ``replace=False`` the prefix holds chunks written
    straight to it (by dask workers) that stay: only the local files are added."""
    store, key = _located(url)
    obstore = _obstore()
    prefix = key.rstrip("/")
    files = []
    for root, _, names in os.walk(local):
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, local).replace(os.sep, "/"), path))
    files.sort(key=lambda item: (os.path.basename(item[0]) in _METADATA, item[0].count("/") * -1, item[0]))
    from concurrent.futures import ThreadPoolExecutor

    old = set(_keys_under(store, prefix)) if replace else set()
    written: list[str] = []

    def put(item: tuple[str, str]) -> None:
        name, path = item
        with open(path, "rb") as handle:
            obstore.put(store, f"{prefix}/{name}", handle)
        written.append(f"{prefix}/{name}")

    def run() -> None:
        stale_meta = [k for k in old if k.rpartition("/")[2] in _METADATA]
        if stale_meta:
            obstore.delete(store, stale_meta)
        data = [f for f in files if os.path.basename(f[0]) not in _METADATA]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(put, data))
        for item in (f for f in files if os.path.basename(f[0]) in _METADATA):
            put(item)
        stale = sorted(old - {f"{prefix}/{name}" for name, _ in files})
        if stale:
            obstore.delete(store, stale)

    try:
        _guarded(url, "write", run)
    except BaseException:
        try:
            if written:
                obstore.delete(store, written)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise


def put_chunk_files(local: str, url: str, names: set[str]) -> None:
    """Put the files ``names`` (paths relative to the local folder ``local``, with ``/``)
    that exist there under the prefix ``url`` (several in flight), and remove each once it is
    up: the chunks a block of a Zarr output completed, while the next block is read. A chunk
    still being filled stays (put again, it would lose what the first put held), and so does
    the metadata, for the end."""
    store, key = _located(url)
    obstore = _obstore()
    prefix = key.rstrip("/")
    files = [
        path
        for path in (os.path.join(local, *name.split("/")) for name in sorted(names))
        if os.path.basename(path) not in _METADATA and os.path.isfile(path)
    ]
    if not files:
        return

    def put(path: str) -> None:
        name = os.path.relpath(path, local).replace(os.sep, "/")
        with open(path, "rb") as handle:
            obstore.put(store, f"{prefix}/{name}", handle)
        os.remove(path)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(IN_FLIGHT, len(files))) as pool:
        _guarded(url, "write", lambda: list(pool.map(put, files)))


def _keys_under(store: Any, prefix: str) -> list[str]:
    return [item["path"] for batch in _obstore().list(store, prefix=prefix + "/") for item in batch]


def put_object(url: str, data: bytes) -> None:
    """One small object (a chunk) written whole."""
    store, key = _located(url)
    _guarded(url, "write", lambda: _obstore().put(store, key, data))


def remove(url: str) -> None:
    """Delete the object (or every object under the prefix) at ``url``, quietly."""
    try:
        store, key = _located(url)
        keys = _keys_under(store, key.rstrip("/")) or [key]
        _obstore().delete(store, keys)
    except Exception:  # noqa: BLE001 - clean-up after a failure must not mask it
        pass
    finally:
        _forget_small()


# --- local copies of objects that a library reads only as files ------------------------------

_copies: dict[str, str] = {}
_copies_dir: list[str] = []


def local_copy(url: str) -> str:
    """A local file holding the object at ``url``, fetched once per process (formats whose
    library reads only files: model files, HDF5, NetCDF, pictures); removed at exit."""
    import shutil
    import tempfile

    if url in _copies:
        return _copies[url]
    if not _copies_dir:
        _copies_dir.append(_private_folder("pwconv-remote-"))
        import atexit

        atexit.register(shutil.rmtree, _copies_dir[0], True)
    folder = tempfile.mkdtemp(dir=_copies_dir[0])
    path = os.path.join(folder, basename(url) or "object")
    remote = RemoteObject(url)
    try:
        with open(path, "wb") as handle:
            for piece in remote.chunks():
                handle.write(piece)
    except OSError as exc:
        raise NetworkError(
            f"cannot keep a local copy of {shown(url)!r} in {folder!r}: {exc.strerror}; free some space "
            "or set TMPDIR"
        ) from None
    _copies[url] = path
    return path


def staging_folder() -> str:
    """A private local folder where an output for a URL is written before it is uploaded."""
    return _private_folder("pwconv-upload-")


def _private_folder(prefix: str) -> str:
    """A new folder in TMPDIR named after this process (``PREFIX<pid>-...``); the folders of
    the same kind that a killed pwconv left behind (their process gone) are removed first,
    since no exit handler ran for them."""
    import shutil
    import tempfile

    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        pid = name[len(prefix) :].partition("-")[0] if name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not process_running(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def process_running(pid: int) -> bool:
    """Whether a process of this machine runs under ``pid`` (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


# --- GDAL ------------------------------------------------------------------------------------


def gdal_path(url: str) -> str:
    """The path GDAL reads ``url`` by (``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ``/vsicurl/``),
    with the cloud's variables handed on to GDAL's own names."""
    # Retries with backoff on the statuses GDAL calls passing (429, 502, 503, 504), as
    # pwconv's own requests have (GDAL makes none by default); a user's own settings win.
    os.environ.setdefault("GDAL_HTTP_MAX_RETRY", "3")
    os.environ.setdefault("GDAL_HTTP_RETRY_DELAY", "0.1")
    if is_http(url):
        return "/vsicurl/" + url
    where = Location.of(url)
    _gdal_settings()
    if where.scheme == "gs":
        _gdal_gcs_settings()
    elif where.scheme != "s3":
        _gdal_azure_settings(where.account)
    prefix = {"s3": "/vsis3/", "gs": "/vsigs/"}.get(where.scheme, "/vsiaz/")
    return f"{prefix}{where.bucket}/{where.key}"


# GDAL's account of a request that failed: a status, or the network's failure.
_GDAL_REQUEST = re.compile(
    r"HTTP (?:response|error) code: ?(\d{3})|(could not resolve host|connection refused|couldn't connect|timed out)",
    re.IGNORECASE,
)


def gdal_failure(url: str, exc: BaseException) -> Exception | None:
    """GDAL's error about the object at ``url`` as pwconv's where GDAL says a request failed
    (a missing object or no access: exit 2; the server or the network: exit 1), or None
    where it is about the file itself."""
    found = _GDAL_REQUEST.search(str(exc))
    if found is None:
        return None
    return _failure(url, OSError(f"HTTP {found.group(1)}" if found.group(1) else found.group(2)), "read")


def gdal_open_settings(url: str) -> dict[str, str]:
    """GDAL's settings for opening the raster at ``url``: its folder is neither listed nor
    searched for sidecar files, except for ENVI, whose header is one (asked for by name).
    GDAL otherwise listed the folder over HTTP and asked for 38 names beside a GeoTIFF at
    every open (``.aux.xml``, ``.ovr``, ``.msk``, ``_MTL.txt``, ...), each a request. A
    user's own GDAL_DISABLE_READDIR_ON_OPEN wins."""
    if "GDAL_DISABLE_READDIR_ON_OPEN" in os.environ:
        return {}
    envi = url_path(url).lower().endswith((".img", ".dat"))
    return {"GDAL_DISABLE_READDIR_ON_OPEN": "YES" if envi else "EMPTY_DIR"}


def _gdal_gcs_settings() -> None:
    """An emulator (STORAGE_EMULATOR_HOST) is GDAL's CPL_GS_ENDPOINT, unsigned; unsigned
    access (GOOGLE_SKIP_SIGNATURE) is GS_NO_SIGN_REQUEST."""
    emulator = _gcs_emulator()
    if emulator:
        os.environ.setdefault("CPL_GS_ENDPOINT", emulator + "/")
    if emulator or _truthy("GOOGLE_SKIP_SIGNATURE"):
        os.environ.setdefault("GS_NO_SIGN_REQUEST", "YES")


def _gdal_azure_settings(account: str) -> None:
    """GDAL reads a connection string too, but not UseDevelopmentStorage nor obstore's names
    for the account and key: those are handed on spelled out, and unsigned access
    (AZURE_SKIP_SIGNATURE) as AZURE_NO_SIGN_REQUEST."""
    if _truthy("AZURE_SKIP_SIGNATURE"):
        os.environ.setdefault("AZURE_NO_SIGN_REQUEST", "YES")
    fields = azure_connection()
    if not fields and _truthy("AZURE_STORAGE_USE_EMULATOR"):
        fields = _azurite(os.environ.get("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000").rstrip("/"))
    if fields:
        if fields.get("AccountName") and fields.get("BlobEndpoint"):
            text = ";".join(f"{name}={value}" for name, value in fields.items())
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = text
        return
    name = account or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    if name:
        os.environ.setdefault("AZURE_STORAGE_ACCOUNT", name)
    if _azure_key():
        os.environ.setdefault("AZURE_STORAGE_ACCESS_KEY", _azure_key())


def _gdal_settings() -> None:
    """GDAL reads the same variables under other names: an S3 endpoint is host and port plus
    a scheme switch, anonymous access is AWS_NO_SIGN_REQUEST."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        parts = urllib.parse.urlsplit(endpoint)
        os.environ["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        os.environ.setdefault("AWS_HTTPS", "NO" if parts.scheme == "http" else "YES")
        os.environ.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")
    if _truthy("AWS_SKIP_SIGNATURE"):
        os.environ.setdefault("AWS_NO_SIGN_REQUEST", "YES")
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        os.environ.setdefault("AWS_REGION", "us-east-1")


# --- Zarr ------------------------------------------------------------------------------------


def zarr_store(url: str) -> Any:
    """A read-only zarr store over the prefix ``url``."""
    zarr_storage = require_extra("zarr.storage", "zarr", ".zarr stores")
    _obstore()
    if is_http(url):
        from obstore.store import HTTPStore

        base = url_path(url).rstrip("/")  # obstore adds the "/" (with one here: "//key", another key)
        client: Any = {"allow_http": base.lower().startswith("http://")}
        inner = HTTPStore.from_url(base, client_options=client, retry_config=_RETRY)
    else:
        where = Location.of(url)
        inner = _store(where.scheme, where.bucket, where.key.rstrip("/"), where.account)
    return zarr_storage.ObjectStore(inner, read_only=True)
