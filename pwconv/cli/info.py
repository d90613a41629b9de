"""``pwconv info FILE...``: shape, dtype, size and storage, without reading the data."""

from __future__ import annotations

from typing import Annotated

import typer

from pwconv.cli.app import DatasetOpt, JsonOpt, app, guarded
from pwconv.cli.output import emit_json, print_rows, shape_text


def _size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
@guarded
def info(
    files: Annotated[list[str], typer.Argument(help="Files to describe (.npy, .h5[:/dataset], .zarr).")],
    dataset: DatasetOpt = None,
    json_report: JsonOpt = False,
) -> None:
    """Describe tensors in files: shape, dtype, size, storage and a layout guess."""
    from pwconv.jobs import tensor_info

    infos = [tensor_info(path, dataset) for path in files]
    if json_report:
        emit_json(infos if len(infos) > 1 else infos[0])
        return
    for item in infos:
        storage = item["storage"]
        details = ", ".join(f"{k} {v}" for k, v in storage.items() if k not in ("format", "data_bytes"))
        print_rows(
            [
                ("file", item["path"]),
                ("shape", f"{shape_text(item['shape'])}  {item['dtype']}  {_size_text(item['bytes'])}"),
                ("layout", f"probably {item['layout_guess']}"),
                ("storage", f"{storage['format']}" + (f" ({details})" if details else "")),
            ]
        )
