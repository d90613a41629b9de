"""``pwconv batch``: one filter bank, loaded and checked once, over many files."""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pwconv.errors import PwconvError, UsageError, WriteError
from pwconv.io.operands import read_weights
from pwconv.io.registry import data_suffixes, format_of, writable_suffixes
from pwconv.io.spec import parse_spec
from pwconv.io.stores import exists, is_http, is_prefix, is_url, join, list_objects, shown
from pwconv.jobs.apply import apply_file, with_divide_by
from pwconv.jobs.options import ApplyOptions
from pwconv.jobs.report import Report


@dataclass
class FileResult:
    """One input of a batch: its output, and the report or the failure."""

    input: str
    output: str | None
    report: Report | None = None
    failure: PwconvError | None = None
    skipped: bool = False
    why_skipped: str = ""  # "exists" (--skip-existing) or "not started" (after --fail-fast)

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code if self.failure else 0

    def as_dict(self) -> dict[str, Any]:
        """The file's ``--json`` entry: the input as its path, how it ended, its output."""
        doc: dict[str, Any] = {
            "path": self.input,
            "exit_code": self.exit_code,
            "error": None if self.failure is None else self.failure.for_cli(),
            "output": self.output,
        }
        if self.skipped:
            doc["status"] = "skipped"
            doc["reason"] = self.why_skipped
        elif self.failure is not None:
            doc["status"] = "failed"
        else:
            doc["status"] = "ok"
            doc["report"] = self.report.as_dict() if self.report else None
        return doc


def expand_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """(input, output name relative to the output folder) for files and walked folders.

    Folders are walked for files and stores of every format pwconv writes (data, not model
    files), keeping relative paths.
    """
    suffixes = data_suffixes()
    found: list[tuple[str, str]] = []
    for item in _globbed(inputs):
        if isinstance(item, tuple):
            found.append(item)
        elif is_url(item) and format_of(item) is None and is_prefix(item):
            found += _objects_under(item, suffixes)
        elif os.path.isdir(item) and format_of(item) is None:
            for root, dirs, files in os.walk(item):
                stores = sorted(d for d in dirs if format_of(d) is not None)
                dirs[:] = sorted(d for d in dirs if d not in stores)
                for name in sorted(files + stores):
                    if name.lower().endswith(suffixes):
                        path = os.path.join(root, name)
                        found.append((path, os.path.relpath(path, item)))
        else:
            try:
                path = parse_spec(item).path  # drops a ":/dataset" part
            except PwconvError:
                path = item  # a bad name fails as that file's own error, not the whole batch's
            found.append((item, os.path.basename(path.rstrip("/")) or item))
    return found


def _objects_under(prefix: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """A prefix walked like a folder: its data objects, and each store (``a.zarr/...``) once."""
    found: dict[str, str] = {}
    base = prefix.rstrip("/") + "/"
    for url in list_objects(prefix):
        parts = url[len(base) :].split("/")
        for depth, part in enumerate(parts[:-1]):
            row = format_of(part)
            if row is not None and row.folder:
                relative = "/".join(parts[: depth + 1])
                found.setdefault(base + relative, relative)
                break
        else:
            if parts[-1].lower().endswith(suffixes):
                found[url] = "/".join(parts)
    return sorted(found.items())


def _globbed(inputs: list[str]) -> list[str | tuple[str, str]]:
    """Inputs with glob patterns (``'scenes/*/B0?.tif'``, ``**`` for any depth) expanded, for
    shells that do not: each match as (path, its path below the pattern's fixed folder), so
    that ``a/B01.tif`` and ``b/B01.tif`` keep apart in the output folder. A pattern that
    matches nothing (or a name that exists as written) is kept as given."""
    out: list[str | tuple[str, str]] = []
    for item in inputs:
        if is_url(item) or os.path.exists(item) or not glob.has_magic(item):
            out.append(item)
            continue
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            out.append(item)  # fails as that input's own "no file" error
            continue
        parts = item.split(os.sep)
        fixed = os.sep.join(p for p in itertools.takewhile(lambda p: not glob.has_magic(p), parts))
        base = fixed if fixed and os.path.isdir(fixed) else os.path.dirname(fixed) or "."
        out += [(m, os.path.relpath(m, base)) for m in matches]
    return out


def output_name(relative: str, suffix: str, output_format: str | None = None) -> str:
    """``a/x.npy`` -> ``a/x{suffix}.npy`` (or ``.{output_format}``)."""
    stem, ext = os.path.splitext(relative)
    return f"{stem}{suffix}{'.' + output_format.lstrip('.') if output_format else ext}"


def check_output_format(output_format: str | None) -> None:
    if output_format is not None and "." + output_format.lstrip(".").lower() not in data_suffixes():
        raise UsageError(
            f"expected [[format]] as a suffix pwconv writes ({writable_suffixes()}), found {output_format!r}"
        )


def make_out_dir(out_dir: str) -> None:
    """Create the output folder and its parents, like ``mkdir -p`` (a URL prefix needs none,
    but must be one pwconv can write to)."""
    if is_url(out_dir):
        if is_http(out_dir):
            raise UsageError(
                f"expected an [[out_dir]] pwconv can write to, found the HTTP URL {shown(out_dir)!r}, which "
                "is read only; write to s3://, gs://, az:// or a local folder"
            )
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"expected a folder for [[out_dir]], found the file {out_dir!r}; name a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"cannot create the output folder {out_dir!r}: {exc.strerror}; check permissions"
        ) from None


def batch_files(
    weights: str | None,
    inputs: list[str],
    out_dir: str,
    options: ApplyOptions,
    *,
    suffix: str = ".pw",
    output_format: str | None = None,
    jobs: int = 1,
    fail_fast: bool = False,
    skip_existing: bool = False,
    weights_dataset: str | None = None,
    dataset: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Apply one filter bank (loaded and checked once) to every input; a bad file does not stop the rest."""
    if jobs < 1:
        raise UsageError(f"expected [[jobs]] of at least 1, found {jobs}")
    if skip_existing and options.overwrite:
        raise UsageError("expected [[skip_existing!]] or [[overwrite!]], found both; choose one")
    check_output_format(output_format)
    if (weights is None) == (options.index is None):
        raise UsageError("expected WEIGHTS or [[index]] for batch, found both or neither; give one")
    # an index is bound to each input's own bands, so its banks are made per file
    loaded = None if weights is None else read_weights(weights, options.bias, member=weights_dataset)
    if loaded is not None:  # the denominator too is read once, for every file
        loaded = with_divide_by(loaded, options)
        options = dataclasses.replace(options, divide_by=None, divide_by_bias=None)
    planned = expand_inputs(inputs)
    if not planned:
        raise UsageError(
            f"expected at least one input ({', '.join(data_suffixes())}), found none; check the paths"
        )
    make_out_dir(out_dir)
    claimed: dict[str, str] = {}
    tasks: list[tuple[str, str, PwconvError | None]] = []  # (input, output, why it cannot run)
    for path, relative in planned:
        name = output_name(relative, suffix, output_format)
        target = join(out_dir, name) if is_url(out_dir) else os.path.join(out_dir, name)
        key = target if is_url(target) else os.path.abspath(target)
        if key in claimed:
            problem = UsageError(
                f"output {target!r} would also be written for {claimed[key]!r}; rename one input"
            )
            tasks.append((path, target, problem))
        else:
            claimed[key] = path
            tasks.append((path, target, None))
    stop = False

    def one(task: tuple[str, str, PwconvError | None]) -> FileResult:
        nonlocal stop
        path, target, problem = task
        if stop:  # a file failed under --fail-fast: no new one is started, in any thread
            return FileResult(path, target, skipped=True, why_skipped="not started")
        if problem is not None:
            result = FileResult(path, target, failure=problem)
        elif skip_existing and (exists(target) if is_url(target) else os.path.exists(target)):
            # outputs appear whole or not at all
            return FileResult(path, target, skipped=True, why_skipped="exists")
        else:
            result = _run_one(path, target)
        if fail_fast and result.exit_code:
            stop = True
        return result

    def _run_one(path: str, target: str) -> FileResult:
        try:
            if not is_url(target):
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            report = apply_file(path, loaded, target, options, dataset=dataset)
            return FileResult(path, target, report=report)
        except PwconvError as exc:
            return FileResult(path, target, failure=exc)
        except OSError as exc:
            return FileResult(path, target, failure=WriteError(f"I/O failure: {exc.strerror or exc}"))

    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    if jobs == 1:
        for task in tasks:
            record(one(task))
    else:
        with ThreadPoolExecutor(jobs, thread_name_prefix="pwconv-batch") as pool:
            for result in pool.map(one, tasks):
                record(result)
    return results


def exit_code(codes: list[int]) -> int:
    """1 if any runtime failure, else 2 if any bad input, else 0."""
    return 1 if 1 in codes else 2 if 2 in codes else 0
