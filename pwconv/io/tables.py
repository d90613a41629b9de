"""Named coefficient tables shipped with pwconv: ``tasseled-cap:landsat8``, ``colour:rgb-to-ycbcr``.

Each table is a bank written against band names: its columns are bands (each known by a
common name and the sensor's band ids), its rows outputs. The data files live in
``pwconv/data/banks``, one JSON file per family, each table with the processing level it
was published for and where.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from pwconv.errors import UsageError
from pwconv.io.digests import sha256_hex
from pwconv.io.names import could_name_a_table


@dataclass(frozen=True)
class Table:
    """One named bank: ``weights`` is (outputs, bands)."""

    name: str  # family:member
    title: str
    level: str  # the processing level (or the range of values) the coefficients expect
    source: str  # where they were published
    bands: tuple[tuple[str, ...], ...]  # per column: the names it is known by, first the common one
    outputs: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray | None
    sha256: str  # of the family's data file

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(names[0] for names in self.bands)


@functools.cache
def tables() -> dict[str, Table]:
    """Every shipped table by name, aliases included (``tasseled-cap:landsat9``)."""
    import json
    from importlib import resources

    folder = resources.files("pwconv") / "data" / "banks"
    found: dict[str, Table] = {}
    for file_name in sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".json")):
        data = (folder / file_name).read_bytes()
        family = json.loads(data)
        digest = sha256_hex(data)
        for member, entry in family["banks"].items():
            weights = np.asarray(entry["weights"], dtype=np.float64)
            bias = entry.get("bias")
            table = Table(
                f"{family['family']}:{member}",
                entry["title"],
                entry["level"],
                entry["source"],
                tuple(tuple(names) for names in entry["bands"]),
                tuple(entry["outputs"]),
                weights,
                None if bias is None else np.asarray(bias, dtype=np.float64),
                digest,
            )
            assert weights.shape == (len(table.outputs), len(table.bands)), table.name
            for name in (member, *entry.get("aliases", ())):
                found[f"{family['family']}:{name}"] = table
    return found


def families() -> set[str]:
    return {name.partition(":")[0] for name in tables()}


def table_named(text: str) -> Table | None:
    """The table ``text`` names, None where it names none (a file, a literal).

    A path that exists is always a file; a known family with an unknown member is an error
    that lists the family's tables.

    >>> table_named("tasseled-cap:landsat8").outputs[:3]
    ('brightness', 'greenness', 'wetness')
    >>> table_named("weights.npy") is None
    True
    """
    if not could_name_a_table(text):
        return None
    family = text.partition(":")[0]
    if family not in families() or os.path.exists(family) or os.path.exists(text):
        return None
    known = tables()
    if text in known:
        return known[text]
    members = sorted(name for name in known if name.startswith(family + ":"))
    raise UsageError(
        f"expected a named bank of {family!r} ({', '.join(members)}), found {text!r}; "
        "the banks command lists them all"
    )
