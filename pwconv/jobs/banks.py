"""``pwconv banks``: the named coefficient tables and spectral indices pwconv ships."""

from __future__ import annotations

from typing import Any

from pwconv.core.indices import INDICES
from pwconv.errors import UsageError
from pwconv.io.tables import Table, table_named, tables


def _table_doc(name: str, table: Table) -> dict[str, Any]:
    return {
        "kind": "bank",
        "title": table.title,
        "alias_of": None if name == table.name else table.name,
        "outputs": list(table.outputs),
        "bands": [list(names) for names in table.bands],
        "level": table.level,
        "source": table.source,
        "weights": table.weights.tolist(),
        "bias": None if table.bias is None else table.bias.tolist(),
        "use": f"pwconv apply INPUT {name} -o OUT",
    }


def _index_doc(name: str) -> dict[str, Any]:
    index = INDICES[name]
    numerator, denominator = index.mixes(index.constants)
    bands = sorted({b for mix in (numerator, denominator) for b in mix if b != "1"})
    return {
        "kind": "index",
        "title": index.formula,
        "outputs": [name],
        "bands": [[b] for b in bands],
        "constants": index.constants,
        "source": index.source,
        "use": f"pwconv apply INPUT --index {name} -o OUT",
    }


def list_banks(name: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, description) of every shipped table and index, or of the one named."""
    if name is not None:
        if name.lower() in INDICES:
            return [(name.lower(), _index_doc(name.lower()))]
        table = table_named(name)
        if table is None:
            raise UsageError(
                f"expected a named bank or index ({', '.join(sorted(tables()))}, {', '.join(INDICES)}), "
                f"found {name!r}; run the banks command without a name to list them"
            )
        return [(name, _table_doc(name, table))]
    return [(n, _table_doc(n, t)) for n, t in sorted(tables().items())] + [
        (n, _index_doc(n)) for n in INDICES
    ]
