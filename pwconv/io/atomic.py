"""Outputs that appear whole or not at all: a hidden temp file (or folder) beside the target,
renamed over it when complete, removed on failure.

:class:`TempTarget` is that lifecycle once; :class:`FileSink` is a sink built on it, so a
format's writer only says how to finish and how to close after a failure.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pwconv.errors import OutputExistsError, PwconvError, UsageError, WriteError
from pwconv.io.checks import first_line
from pwconv.io.digests import sha1_hex
from pwconv.io.interface import Sink
from pwconv.io.stores import (
    basename,
    check_writable_url,
    exists,
    is_url,
    process_running,
    remove,
    shown,
    staging_folder,
    upload_file,
    upload_folder,
)

_FOLDER_SUFFIXES = (".zarr",)
# The outputs this process has renamed into place, in order (an interrupted batch run says
# which are complete).
_published: list[str] = []


def published() -> list[str]:
    """The outputs published so far by this process."""
    return list(_published)


def mark_published(target: str) -> None:
    """Record an output that its sink put in place itself (a streamed upload, completed), so
    that a signal that stops the run after it says it was written."""
    _published.append(target)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait while files are renamed into place, so that a set of renames
    (a bank and its bias, a raster and its header) is never cut in half; a signal that came
    meanwhile is raised again when the renames are done. (Python runs signal handlers in the
    main thread whichever thread the system delivered to, so the handlers are swapped, not
    the thread's signal mask.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler not in (signal.SIG_IGN, None):
            previous[number] = handler
            signal.signal(number, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if came:
            signal.raise_signal(came[0])


def check_output_path(path: str, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite`` and a missing output directory (for a
    URL: an HTTP output, and an object or prefix that is there without ``overwrite``)."""
    if is_url(path):
        check_writable_url(path, overwrite)
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(
            f"expected an existing directory for the output, found none at {parent!r}; create it first"
        )
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"output {path!r} exists; pass [[overwrite!]] to replace it, or choose another name"
        )
    if os.path.isdir(path) and not path.rstrip("/").endswith(_FOLDER_SUFFIXES):
        raise UsageError(f"expected a file name for the output, found the directory {path!r}")


_SUFFIX = ".pwconv-part"


def _host_tag() -> str:
    """A short tag of this machine, so that a temp file is only ever judged stale by the machine
    whose process made it (folders on network file systems are shared)."""
    return sha1_hex(platform.node().encode())[:6]


# A temp file or folder, the old store moved aside when a store is overwritten, and the
# sidecars GDAL writes beside a temp raster (its .aux.xml, an ENVI header).
_STALE_ENDINGS = (_SUFFIX, _SUFFIX + ".old", _SUFFIX + ".aux.xml", ".hdr")


def sweep_stale(directory: str, name: str) -> list[str]:
    """Remove the temp files and folders a killed run (SIGKILL, power loss) left for the output
    ``name`` in ``directory``: those made on this machine by a process that is gone."""
    prefix = f".{name}.{_host_tag()}."
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix) or not entry.endswith(_STALE_ENDINGS):
            continue
        pid = entry[len(prefix) :].split(".", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or process_running(int(pid)):
            continue
        stale = os.path.join(directory, entry)
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            remove_quietly(stale)
        removed.append(entry)
    return removed


def _beside(path: str, make: Callable[..., Any]) -> Any:
    directory, name = os.path.split(os.path.abspath(path.rstrip("/")))
    sweep_stale(directory, name)
    try:
        return make(prefix=f".{name}.{_host_tag()}.{os.getpid()}.", suffix=_SUFFIX, dir=directory)
    except OSError as exc:
        raise WriteError(
            f"cannot create the output in {directory!r}: {exc.strerror}; check permissions and free space"
        ) from exc


def temp_path_beside(path: str) -> tuple[int, str]:
    """Create a hidden temporary file in the target's directory (same filesystem: atomic rename)."""
    return _beside(path, tempfile.mkstemp)  # type: ignore[no-any-return]


# Truncating a file, even an empty one, makes ext4 write all of it back to the disk when it is
# next closed (its auto_da_alloc heuristic for programs that rewrite a file in place): 0.07-0.12
# s of the closing thread per 256 MiB here. A temp file is new and empty, so its writers need
# no truncation.


def open_empty(path: str) -> Any:
    """The new, empty temp file at ``path`` (made where there is none) open for writing
    (binary), without truncating it.

    >>> import tempfile
    >>> fd, path = tempfile.mkstemp(); os.close(fd)
    >>> with open_empty(path) as handle: _ = handle.write(b"abc")
    >>> open(path, "rb").read(); os.unlink(path)
    b'abc'
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
    handle = open(path, "r+b")  # noqa: SIM115 - the caller closes it; a name, as writers expect
    if os.fstat(handle.fileno()).st_size:  # not what a temp file is: written from its start
        handle.truncate()
    return handle


def made_anew(path: str) -> str:
    """``path`` with the empty temp file there removed, for a library that creates its file
    itself with exclusive creation (h5py's mode ``x``) instead of truncating it; returns
    ``path``."""
    remove_quietly(path)
    return path


def remove_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _normal_mode(path: str, full: int) -> None:
    """The permissions a file or folder created the usual way would have (temp files and
    folders are created private to the user)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, full & ~umask)


def _publish_file(temp: str, final: str, keep_mode: bool = False) -> None:
    """Give the finished temp file normal permissions (or leave the ones it was given: a
    container edited in place keeps its own) and rename it over ``final``."""
    if not keep_mode:
        _normal_mode(temp, 0o666)
    os.replace(temp, final)
    _published.append(final)


def _publish_folder(temp: str, final: str) -> None:
    """Move a finished store into place; an old store (overwritten) is removed only after."""
    final = final.rstrip("/")
    _normal_mode(temp, 0o777)
    old = None
    if os.path.exists(final):
        old = temp + ".old"
        os.rename(final, old)
    os.rename(temp, final)
    _published.append(final)
    if old and os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    elif old:  # a file or a link had the store's name: it goes too, not its target
        remove_quietly(old)


def place_companion(made: str, final: str) -> None:
    """Publish a sidecar a library wrote beside a temp file (an ENVI header) as ``final``;
    where none was made, an old one at ``final`` goes."""
    remote = is_url(final)
    if os.path.exists(made):
        upload_file(made, final) if remote else os.replace(made, final)
    elif remote:
        if exists(final):
            remove(final)
    elif os.path.exists(final):
        os.unlink(final)


class TempTarget:
    """A hidden temp file (or folder) beside ``target``, on the same file system.

    :meth:`publish` renames it over the target; :meth:`discard` removes it. Either is done
    once; after that both do nothing.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> temp = TempTarget(os.path.join(folder, "out.npy"))
    >>> os.path.basename(temp.path).startswith(".out.npy.")
    True
    >>> temp.discard(); os.listdir(folder)
    []
    """

    def __init__(self, target: str, *, folder: bool = False, keep_mode: bool = False) -> None:
        self.target, self.folder, self.keep_mode = target, folder, keep_mode
        #: Files a library writes beside the temp file (GDAL's sidecars), removed with it.
        self.extras: list[str] = []
        #: For a URL target: the private local folder the output is written in, then uploaded.
        self.staging = ""
        #: A folder target at a URL whose chunks are written straight under it (by workers that
        #: share no disk with this process): the staging folder holds the metadata only.
        self.direct = False
        self.path = ""
        with signals_held():  # made and registered together: a signal never leaves it unknown
            if is_url(target):
                self.staging = staging_folder()
                self.path = os.path.join(self.staging, basename(target) or "output")
                if folder:
                    os.mkdir(self.path)
                else:
                    open(self.path, "wb").close()
            elif folder:
                self.path = _beside(target, tempfile.mkdtemp)
            else:
                fd, self.path = temp_path_beside(target)
                os.close(fd)
            _unpublished[id(self)] = self

    def publish(self) -> None:
        if self.path and self.staging:
            # The object appears only when its upload is complete; the local copy goes after.
            if self.folder:
                upload_folder(self.path, self.target, replace=not self.direct)
            else:
                upload_file(self.path, self.target)
            _published.append(self.target)
            shutil.rmtree(self.staging, ignore_errors=True)
            self.path = self.staging = ""
        elif self.path:
            if self.folder:
                _publish_folder(self.path, self.target)
            else:
                _publish_file(self.path, self.target, self.keep_mode)
            self.path = ""
        _unpublished.pop(id(self), None)

    def write_directly(self) -> None:
        """Chunks will go straight under the URL target: whatever is there goes first (an
        overwritten store), so that no old metadata describes new chunks."""
        self.direct = True
        remove(self.target)

    def discard(self) -> None:
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = ""
            if self.direct:
                remove(self.target)
        elif self.path and self.folder:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            remove_quietly(self.path)
        for extra in self.extras:
            remove_quietly(extra)
        self.path, self.extras = "", []
        _unpublished.pop(id(self), None)


# Every temp file or folder not yet published nor discarded: when a run ends early (a signal
# that came between a sink's creation and the code that would abort it), all go.
_unpublished: dict[int, TempTarget] = {}


def discard_unpublished() -> None:
    """Remove every temp file and folder of this process that was not published."""
    for temp in list(_unpublished.values()):
        temp.discard()


_SYSTEM_MESSAGE = re.compile(r"(?:error message = '|I/O error: )([^'(]+?)(?:'| \(os error|$)")


def write_failure(target: str, exc: BaseException) -> WriteError:
    """The one-line error for an output the file system refused."""
    reason = first_line(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.splitlines()[0][:160]
    system = _SYSTEM_MESSAGE.search(str(exc))  # HDF5 and safetensors name the system's error inside
    if system:
        reason = system.group(1)
    return WriteError(
        f"cannot write {shown(target)!r}: {reason}; free some space, check permissions or write elsewhere"
    )


@contextlib.contextmanager
def setting_up(sink: Sink, target: str) -> Iterator[None]:
    """Around a writer's set-up: on any failure the sink is aborted (nothing is left behind),
    and a library's or the file system's refusal becomes the one-line write error."""
    try:
        yield
    except PwconvError:
        sink.abort()
        raise
    except Exception as exc:  # noqa: BLE001 - libraries raise their own types for a full disk
        sink.abort()
        raise write_failure(target, exc) from None
    except BaseException:
        sink.abort()
        raise


class FileSink(Sink):
    """A sink written into a :class:`TempTarget` and published over ``target`` on commit.

    A format says how to finish (:meth:`finish`: close its library's handle, write what is
    held in memory) and how to let go after a failure (:meth:`close_quietly`); opening the
    temp file, the rename, the clean-up and the one-line error are done here.
    """

    def __init__(self, target: str, *, folder: bool = False, keep_mode: bool = False) -> None:
        self.target = target
        self.temp = TempTarget(target, folder=folder, keep_mode=keep_mode)

    def finish(self) -> None:
        """Everything the format must do before the temp file is complete."""

    def publish_companions(self) -> None:
        """Rename the files published with this one (sidecars) into place, just before it."""

    def close_quietly(self) -> None:
        """Close what the format holds after a failure (errors here are ignored)."""

    def commit(self) -> None:
        try:
            self.finish()
            with signals_held():
                self.publish_companions()
                self.temp.publish()
        except PwconvError:
            self.abort()
            raise
        except Exception as exc:  # noqa: BLE001 - libraries raise their own types for a full disk
            self.abort()
            raise write_failure(self.target, exc) from None

    def abort(self) -> None:
        try:
            self.close_quietly()
        except Exception:  # noqa: BLE001 - cleanup must not mask the first error
            pass
        self.temp.discard()


def write_atomically(path: str, overwrite: bool, write: Callable[[str], None]) -> None:
    """Run ``write(temp)`` on a temp file beside ``path``, then rename it into place."""
    write_together({path: write}, overwrite)


def _bytes_writer(data: bytes) -> Callable[[str], None]:
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)

    return write


def write_bytes_atomically(path: str, data: bytes, overwrite: bool) -> None:
    """Write ``data`` as the file ``path``, whole or not at all."""
    write_atomically(path, overwrite, _bytes_writer(data))


def write_files_together(files: dict[str, bytes], overwrite: bool) -> None:
    """Write each ``{path: data}`` file, all of them or none (see :func:`write_together`)."""
    write_together({path: _bytes_writer(data) for path, data in files.items()}, overwrite)


# Files that join the next set written together in this thread (see published_with).
_joining = threading.local()


@contextlib.contextmanager
def published_with(files: dict[str, bytes]) -> Iterator[None]:
    """The first set of files written together inside the block (a bank, by its format's
    writer) also holds ``files`` (a fit's report): all of them appear, or none."""
    _joining.files = dict(files)
    try:
        yield
    finally:
        _joining.files = None


def write_together(writes: dict[str, Callable[[str], None]], overwrite: bool) -> None:
    """Write a set of files (a bank and its bias file) together or not at all: every target
    is checked first, every file is written to its temp file, and only then are they renamed
    into place; any failure removes every temp file and leaves the targets as they were."""
    joining, _joining.files = getattr(_joining, "files", None), None
    if joining:
        writes = {**writes, **{path: _bytes_writer(data) for path, data in joining.items()}}
    for path in writes:
        check_output_path(path, overwrite)
    temps: dict[str, TempTarget] = {}
    failing = next(iter(writes))  # the file being written when a failure comes
    try:
        for failing, write in writes.items():
            temps[failing] = TempTarget(failing)
            write(temps[failing].path)
        with signals_held():
            for failing, temp in temps.items():  # noqa: B007 - named in the error below
                temp.publish()
    except BaseException as exc:
        for temp in temps.values():
            temp.discard()
        if isinstance(exc, Exception) and not isinstance(exc, PwconvError):
            raise write_failure(failing, exc) from None  # a library's full disk, say
        raise
