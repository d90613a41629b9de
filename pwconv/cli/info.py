"""``pwconv info FILE...``: shape, dtype, size and storage, without reading the data."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from pwconv.cli import options as o
from pwconv.cli.output import (
    check_stdout_open,
    emit_json,
    entry,
    error,
    examples,
    guarded,
    print_rows,
    print_table,
    shape_text,
)
from pwconv.core.blocks import size_text
from pwconv.core.words import counted


def _layout_text(array: dict[str, Any]) -> str:
    band = array["channel_dimension"]
    if band is None:
        return f"probably {array['layout_guess']}"
    return f"channels on {band!r} (axis {array['dimensions'].index(band)}), by the dimension's name"


def _label_rows(array: dict[str, Any]) -> list[tuple[str, str]]:
    """The names of each labelled axis (band descriptions, a NetCDF coordinate), and the
    dimension names where the format has them."""
    rows = [("dimensions", ", ".join(array["dimensions"]))] if array["dimensions"] else []
    for axis, names in array["labels"].items():
        rows.append((f"axis {axis}", _listed(names)))
    return rows


def _listed(names: list[str]) -> str:
    """The first 12 names, and how many more there are."""
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _bank_row(array: dict[str, Any], channels: int | None) -> list[tuple[str, str]]:
    if channels is None:
        return []
    bank = array["filter_bank"]
    if bank is None:
        return [("1x1 bank", f"no (not 1x1 filters for {counted(channels, 'channel')})")]
    bias = f", bias {bank['bias']}" if bank["bias"] else ", no bias"
    return [
        (
            "1x1 bank",
            f"yes: {counted(bank['filters'], 'filter')} x {counted(channels, 'channel')}, "
            f"read as {bank['read_as']}{bias}",
        )
    ]


def _bank_cell(array: dict[str, Any]) -> str:
    bank = array["filter_bank"]
    if bank is None:
        return "-"
    groups = f", --groups {bank['groups']}" if bank["groups"] > 1 else ""
    bias = f", bias {bank['bias']}" if bank["bias"] else ""
    kind = "grouped 1x1" if groups else "1x1"
    return f"{kind}: {counted(bank['filters'], 'filter')} as {bank['read_as']}{groups}{bias}"


def _node_cell(storage: dict[str, Any]) -> str:
    node = storage.get("conv_node")
    if "conv_input" not in storage:
        return ""
    group = f", group {storage['conv_group']}" if storage.get("conv_group", 1) > 1 else ""
    return f"{node or '(unnamed)'} {storage['conv_input']}{group}"


def _fit_rows(fit: dict[str, Any]) -> list[tuple[str, str]]:
    """What ``fit`` stored with a bank: method, components and their share, names."""
    names = fit["filter_names"]
    if "snr" in fit:
        kept = fit["components"]
        snr = ", ".join(f"{v:.4g}" for v in fit["snr"][:8]) + (" ..." if len(fit["snr"]) > 8 else "")
        made = f"{counted(kept, 'component')} kept of {len(fit['snr'])}; signal-to-noise {snr}"
    elif "explained_total" in fit:
        shares = ", ".join(
            f"{name} {100 * r:.1f} %"
            for name, r in zip(names or range(1, 99), fit["explained_variance_ratio"][:8])
        )
        made = (
            f"{counted(len(fit['explained_variance_ratio']), 'component')} holding "
            f"{100 * fit['explained_total']:.1f} % of the variance ({shares})"
        )
    else:
        made = "; ".join(
            f"{label} " + ", ".join(f"{v:.4g}" for v in fit[key][:8])
            for key, label in (("r2", "R²"), ("rms", "RMS"))
            if key in fit
        )
        if "condition" in fit:
            made += f"; condition number {fit['condition']:.3g}"
    pixels = f", from {counted(fit['pixels'], 'pixel')}" if "pixels" in fit else ""
    rows = [("fit", f"{fit['method']}: {made}{pixels}")]
    if names:
        rows.append(("filters", _listed(names)))
    if fit["channel_names"]:
        rows.append(("fitted on", _listed(fit["channel_names"])))
    return rows


def _print_tensors(item: Any, channels: int | None) -> None:
    """A model file or bank: a title line, then one line per tensor."""
    arrays = item.arrays
    first = arrays[0]
    total = size_text(sum(a["bytes"] for a in arrays))
    title = f"{item.path}  {item.title}, {counted(len(arrays), 'tensor')}, {total}, read by {first['reader']}"
    columns = ["tensor", "shape", "dtype", "size"]
    with_nodes = any("conv_input" in a["storage"] for a in arrays)
    if with_nodes:
        columns.append("conv node")
    if channels is not None:
        columns.append(f"for {counted(channels, 'channel')}")
    rows = []
    for array in arrays:
        name = (
            array["path"][len(item.path) + 1 :]
            if array["path"].startswith(item.path + ":")
            else array["path"]
        )
        row = [name, shape_text(array["shape"]), array["dtype"], size_text(array["bytes"])]
        if with_nodes:
            row.append(_node_cell(array["storage"]))
        if channels is not None:
            row.append(_bank_cell(array))
        rows.append(row)
    print_table(title, columns, rows)
    fitted = next((a["fit"] for a in arrays if "fit" in a), None)
    if fitted is not None:
        print_rows(_fit_rows(fitted))


def _entries(described: list[Any]) -> list[dict[str, Any]]:
    """One ``--json`` entry per array, and one per file that could not be described."""
    entries = []
    for item in described:
        if item.failure is not None:
            entries.append(entry(item.path, exit_code=item.exit_code, error=item.failure.for_cli()))
        entries.extend(entry(array["path"], array) for array in item.arrays)
    return entries


EXAMPLES = examples(
    [
        "python -m pwconv info input.npy",
        "python -m pwconv info model.pt --channels 192",
        "python -m pwconv info --system",
        "python -m pwconv info --system --calibrate",
    ]
)


def _calibrate(json_report: bool) -> None:
    from pwconv.core import calibration, kernels
    from pwconv.errors import UsageError

    if not kernels.enabled or kernels.instruction_set() == "unavailable":
        raise UsageError(
            "expected the few-filter C kernels to calibrate, found them off (PWCONV_KERNEL=blas) or not built; "
            "everything runs through BLAS, so there is nothing to choose"
        )
    cells, found = calibration.calibrate()
    if json_report:
        emit_json([entry(None, {"calibration": calibration.cache_path(), "regions": found,
                               "cells": [cell._asdict() | {"ratio": cell.ratio} for cell in cells]})])  # fmt: skip
        return
    rows = [
        (
            f"{cell.layout} C={cell.channels} K={cell.filters}",
            f"BLAS {cell.blas_ms:.2f} ms, kernel {cell.kernel_ms:.2f} ms ({cell.ratio:.2f}x)",
        )  # fmt: skip
        for cell in cells
    ]
    rows += [(("kernel" if won else "BLAS"), name) for name, won in found.items()]
    print_rows(rows + [("kept in", calibration.cache_path())])


def _print_system(json_report: bool) -> None:
    from pwconv.jobs.info import system_doc

    doc = system_doc()
    if json_report:
        emit_json([entry(None, doc)])
        return
    blas = doc["blas"]
    blas_text = " ".join(str(v) for v in (blas.get("name"), blas.get("version")) if v) or "unknown"
    if blas.get("kernel"):
        blas_text += f", kernel {blas['kernel']}, {blas.get('threads')} threads"
    off = "" if doc["kernels_enabled"] else " (off: PWCONV_KERNEL=blas)"
    print_rows(
        [
            ("pwconv", f"{doc['pwconv']} on Python {doc['python']}, numpy {doc['numpy']}"),
            ("cpu", f"{doc['cpu']}, {doc['cores']} cores"),
            (
                "apply",
                f"few-filter C kernels (channels-last and channels-first): {doc['few_filter_kernel']}{off};"
                " otherwise BLAS",
            ),
            ("choice", f"kernel or BLAS: {doc['kernel_rule']}"),
            ("fit", f"scatter C kernel: {doc['scatter_kernel']}{off}; otherwise BLAS"),
            ("blas", blas_text),
            ("gzip", f"HDF5 gzip chunks decoded and encoded on every core by {doc['deflate']}"),
        ]
    )


@guarded
def info(
    files: Annotated[
        Optional[list[str]], typer.Argument(help=f"Files to describe: {o.READS}, {o.MODELS}.")
    ] = None,
    dataset: o.DatasetOpt = None,
    channels: Annotated[
        Optional[int],
        typer.Option(
            "--channels", help="Mark the tensors that are 1x1 filter banks for this many input channels."
        ),
    ] = None,
    channel_dim: o.ChannelDimOpt = None,
    system: Annotated[
        bool, typer.Option("--system", help="Describe the machine instead: CPU, cores, the C kernels, BLAS.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="With --system: time the C kernels against BLAS where CPUs differ (a few seconds) and keep "
            "the choice for this machine.",
        ),
    ] = False,
    json_report: o.JsonOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Describe the arrays in files: shape, dtype, size, storage and a layout guess.

    A container (HDF5 file, Zarr group) named without a dataset lists every array in it.
    """
    from pwconv.errors import UsageError
    from pwconv.jobs.batch import exit_code
    from pwconv.jobs.info import describe_files

    check_stdout_open(json_report)
    if system:
        if files:
            raise UsageError("expected FILE... or --system, found both; describe files and the machine apart")
        if calibrate:
            _calibrate(json_report)
            return
        _print_system(json_report)
        return
    if calibrate:
        raise UsageError(
            "expected --calibrate with --system, found it alone; run pwconv info --system --calibrate"
        )
    if not files:
        raise UsageError("expected FILE... to describe (or --system), found none")
    described = describe_files(files, dataset, channels, channel_dim)
    if json_report:
        emit_json(_entries(described))
    for item in described:
        if item.failure is not None:
            error(f"{item.path}: {item.failure.for_cli()}")
        if item.tensors and not json_report:
            _print_tensors(item, channels)
            continue
        for array in [] if json_report else item.arrays:
            storage = array["storage"]
            details = ", ".join(f"{k} {v}" for k, v in storage.items() if k not in ("format", "data_bytes"))
            print_rows(
                [
                    ("file", array["path"]),
                    (
                        "shape",
                        f"{shape_text(array['shape'])}  {array['dtype']}  {size_text(array['bytes'])}",
                    ),
                    ("layout", _layout_text(array)),
                    ("storage", f"{storage['format']}" + (f" ({details})" if details else "")),
                    ("read by", array["reader"]),
                    *_label_rows(array),
                    *_bank_row(array, channels),
                ]
            )
    code = exit_code([item.exit_code for item in described])
    if code:
        sys.exit(code)
