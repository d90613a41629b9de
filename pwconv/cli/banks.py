"""``pwconv banks [NAME]``: list the named banks (tasseled cap, colour matrices) and indices."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pwconv.cli import options as o
from pwconv.cli.output import check_stdout_open, emit_json, entry, examples, guarded, print_rows, print_table


def _detail_rows(name: str, doc: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("name", name + (f" (same as {doc['alias_of']})" if doc.get("alias_of") else "")),
        ("title", doc["title"]),
    ]
    if doc["kind"] == "index":
        rows.append(("bands", ", ".join(b[0] for b in doc["bands"])))
        constants = ", ".join(f"{k}={v:g}" for k, v in doc["constants"].items())
        rows.append(("constants", constants or "none"))
    else:
        rows.append(("level", doc["level"]))
        bands = [
            f"{names[0]} ({', '.join(names[1:])})" if len(names) > 1 else names[0] for names in doc["bands"]
        ]
        rows.append(("bands", "; ".join(bands)))
        for output, weights, bias in zip(
            doc["outputs"], doc["weights"], doc["bias"] or [None] * len(doc["outputs"])
        ):
            terms = " ".join(f"{w:+g} {names[0]}" for w, names in zip(weights, doc["bands"]) if w)
            rows.append((output, terms + (f" {bias:+g}" if bias else "")))
    rows += [("source", doc["source"]), ("use", doc["use"])]
    return rows


EXAMPLES = examples(["python -m pwconv banks", "python -m pwconv banks tasseled-cap:landsat8"])


@guarded
def banks(
    name: Annotated[
        Optional[str], typer.Argument(help="A bank (tasseled-cap:landsat8) or index (ndvi) to show in full.")
    ] = None,
    json_report: o.JsonOpt = False,
) -> None:
    """List the named coefficient banks and spectral indices, usable as WEIGHTS and with --index.

    Each bank is written against band names and says the processing level its coefficients
    were published for; apply binds its bands to the input's by name (or --bands).
    """
    from pwconv.jobs.banks import list_banks

    check_stdout_open(json_report)
    found = list_banks(name)
    if json_report:
        emit_json([entry(n, doc) for n, doc in found])
        return
    if name is not None:
        print_rows(_detail_rows(*found[0]))
        return
    rows = [
        [n, ", ".join(doc["outputs"][:4]) + (" ..." if len(doc["outputs"]) > 4 else ""),
         ", ".join(b[0] for b in doc["bands"][:6]) + (" ..." if len(doc["bands"]) > 6 else ""),
         doc.get("level", doc["title"])]
        for n, doc in found
    ]  # fmt: skip
    print_table("named banks (WEIGHTS) and indices (--index)", ["name", "outputs", "bands", "for"], rows)
