"""``pwconv batch``: one filter bank, loaded and checked once, over many files."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pwconv.errors import PwconvError, UsageError, WriteError
from pwconv.io.operands import read_weights
from pwconv.io.registry import data_suffixes, format_of, writable_suffixes
from pwconv.io.spec import parse_spec
from pwconv.jobs.apply import apply_file
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

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code if self.failure else 0

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"input": self.input, "output": self.output, "exit_code": self.exit_code}
        if self.skipped:
            doc["status"] = "skipped"
        elif self.failure is not None:
            doc["status"] = "failed"
            doc["error"] = self.failure.for_cli()
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
    for item in inputs:
        if os.path.isdir(item) and format_of(item) is None:
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
    """Create the output folder and its parents, like ``mkdir -p``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"expected a folder for [[out_dir]], found the file {out_dir!r}; name a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"cannot create the output folder {out_dir!r}: {exc.strerror}; check permissions"
        ) from None


def batch_files(
    weights: str,
    inputs: list[str],
    out_dir: str,
    options: ApplyOptions,
    *,
    suffix: str = ".pw",
    output_format: str | None = None,
    jobs: int = 1,
    fail_fast: bool = False,
    weights_dataset: str | None = None,
    dataset: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Apply one filter bank (loaded and checked once) to every input; a bad file does not stop the rest."""
    if jobs < 1:
        raise UsageError(f"expected [[jobs]] of at least 1, found {jobs}")
    check_output_format(output_format)
    loaded = read_weights(weights, options.bias, member=weights_dataset)
    planned = expand_inputs(inputs)
    if not planned:
        raise UsageError(
            f"expected at least one input ({', '.join(data_suffixes())}), found none; check the paths"
        )
    make_out_dir(out_dir)
    claimed: dict[str, str] = {}
    tasks: list[tuple[str, str, PwconvError | None]] = []  # (input, output, why it cannot run)
    for path, relative in planned:
        target = os.path.join(out_dir, output_name(relative, suffix, output_format))
        key = os.path.abspath(target)
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
        path, target, problem = task
        if stop:
            return FileResult(path, target, skipped=True)
        if problem is not None:
            return FileResult(path, target, failure=problem)
        try:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            report = apply_file(path, loaded, target, options, dataset=dataset)
            return FileResult(path, target, report=report)
        except PwconvError as exc:
            return FileResult(path, target, failure=exc)
        except OSError as exc:
            return FileResult(path, target, failure=WriteError(f"I/O failure: {exc.strerror or exc}"))

    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        nonlocal stop
        results.append(result)
        if on_result:
            on_result(result)
        if fail_fast and result.exit_code:
            stop = True

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
