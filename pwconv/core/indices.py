"""Spectral indices as ratios of two affine mixes of named bands.

Each index is ``(n . bands + n0) / (d . bands + d0)``, with its constants overridable. Band
names are the common names of STAC's ``eo:bands`` (``blue``, ``green``, ``red``, ``nir``,
``swir16``, ``swir22``); pwconv binds them to the input's channels by its band descriptions
or by ``--bands red=3,nir=4`` (1-based band numbers, as GDAL counts them, or band names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pwconv.errors import UsageError

Mix = dict[str, float]  # band -> coefficient, "1" -> the constant term


@dataclass(frozen=True)
class Index:
    name: str
    formula: str
    source: str  # where the formula was published
    constants: dict[str, float]
    #: (numerator, denominator) for the given constants
    mixes: Callable[[dict[str, float]], tuple[Mix, Mix]]


def _normalised_difference(a: str, b: str) -> Callable[[dict[str, float]], tuple[Mix, Mix]]:
    return lambda _: ({a: 1.0, b: -1.0}, {a: 1.0, b: 1.0})


INDICES: dict[str, Index] = {
    i.name: i
    for i in (
        Index("ndvi", "(nir - red) / (nir + red)", "Rouse et al. 1974, NASA SP-351", {}, _normalised_difference("nir", "red")),
        Index("ndwi", "(green - nir) / (green + nir)", "McFeeters 1996, Int. J. Remote Sens. 17(7)", {}, _normalised_difference("green", "nir")),
        Index("mndwi", "(green - swir16) / (green + swir16)", "Xu 2006, Int. J. Remote Sens. 27(14)", {}, _normalised_difference("green", "swir16")),
        Index("ndmi", "(nir - swir16) / (nir + swir16)", "Gao 1996, Remote Sens. Environ. 58(3)", {}, _normalised_difference("nir", "swir16")),
        Index("nbr", "(nir - swir22) / (nir + swir22)", "Key and Benson 2006, USDA RMRS-GTR-164-CD", {}, _normalised_difference("nir", "swir22")),
        Index("ndbi", "(swir16 - nir) / (swir16 + nir)", "Zha et al. 2003, Int. J. Remote Sens. 24(3)", {}, _normalised_difference("swir16", "nir")),
        Index(
            "savi", "(1 + L) (nir - red) / (nir + red + L)", "Huete 1988, Remote Sens. Environ. 25(3)", {"L": 0.5},
            lambda k: ({"nir": 1 + k["L"], "red": -(1 + k["L"])}, {"nir": 1.0, "red": 1.0, "1": k["L"]}),
        ),
        Index(
            "evi", "G (nir - red) / (nir + C1 red - C2 blue + L)", "Huete et al. 2002, Remote Sens. Environ. 83(1-2)",
            {"G": 2.5, "C1": 6.0, "C2": 7.5, "L": 1.0},
            lambda k: ({"nir": k["G"], "red": -k["G"]}, {"nir": 1.0, "red": k["C1"], "blue": -k["C2"], "1": k["L"]}),
        ),
    )
}  # fmt: skip


def parse_bindings(text: str | None) -> dict[str, str]:
    """``red=3,nir=B08`` -> {"red": "3", "nir": "B08"}."""
    if not text:
        return {}
    bindings = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"expected [[bands]] as NAME=BAND pairs such as red=3,nir=4, found {text!r}")
        bindings[name.strip().lower()] = value.strip()
    return bindings


def parse_constants(text: str | None) -> dict[str, float]:
    """``L=0.25,G=2`` -> {"L": 0.25, "G": 2.0}."""
    if not text:
        return {}
    values = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise UsageError(
                f"expected [[constants]] as NAME=NUMBER pairs such as L=0.5, found {text!r}"
            ) from None
        if not sep:
            raise UsageError(f"expected [[constants]] as NAME=NUMBER pairs such as L=0.5, found {text!r}")
    return values


#: The STAC common names that serve a formula's band where the sensor has no band of that
#: exact name (Landsat OLI's NIR is ``nir08``; older items say ``swir1``, ``swir2``).
COMMON_ALIASES: dict[str, tuple[str, ...]] = {
    "nir": ("nir", "nir08"),
    "swir16": ("swir16", "swir1"),
    "swir22": ("swir22", "swir2"),
}


def _names_band(label: str, alias: str) -> bool:
    """Whether ``label`` (``lc09_..._sr_b5``, ``t33uup_..._b04_10m``) holds ``alias`` as
    whole words joined by underscores.

    >>> _names_band("lc09_l2sp_sr_b5", "b5"), _names_band("lc09_l2sp_sr_b5", "sr_b5"), _names_band("b50", "b5")
    (True, True, False)
    """
    return f"_{alias}_" in f"_{label}_"


def band_of(
    names: tuple[str, ...], channels: int, labels: tuple[str, ...] | None, bindings: dict[str, str]
) -> int:
    """The channel (0-based) that holds the band known by any of ``names`` (the first is the
    one said in messages): bound by ``--bands``, else found among the input's band names."""
    name = names[0]
    named = [label.lower() for label in labels] if labels else []
    wanted = next((bindings[n.lower()] for n in names if n.lower() in bindings), None)
    if wanted is not None:
        if wanted.isdigit():
            band = int(wanted)
            if not 1 <= band <= channels:
                raise UsageError(
                    f"expected [[bands]] {name}= a band number from 1 to {channels}, found {band}"
                )
            return band - 1
        if wanted.lower() in named:
            return named.index(wanted.lower())
        raise UsageError(
            f"expected band {wanted!r} (for {name}) among the input's bands, found "
            f"{', '.join(labels) if labels else 'no band names'}; give its number, e.g. [[bands={name}=4]]"
        )
    for alias in names:
        if alias.lower() in named:
            return named.index(alias.lower())
    for alias in names:  # a file name as the label (a stack's part): the band id as one of its words
        hits = [i for i, label in enumerate(named) if _names_band(label, alias.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            assert labels is not None  # hits come from the labels
            found = ", ".join(labels[i] for i in hits)
            raise UsageError(
                f"expected one band named like {alias!r} (for {name}), found {found}; "
                f"bind it with [[bands={name}=N]] (N from 1)"
            )
    have = ", ".join(labels) if labels else f"{channels} unnamed bands"
    known = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise UsageError(
        f"expected a band named {name!r}{known} in the input, found {have}; bind it with [[bands={name}=N]] (N from 1)"
    )


def index_banks(
    names: list[str],
    channels: int,
    labels: tuple[str, ...] | None,
    bindings: dict[str, str],
    constants: dict[str, float],
) -> tuple[list[list[float]], list[float], list[list[float]], list[float]]:
    """(numerator weights, numerator bias, denominator weights, denominator bias): one row
    per index, one column per input channel."""
    unknown = [n for n in names if n not in INDICES]
    if unknown or not names:
        raise UsageError(
            f"expected [[index]] names among {', '.join(INDICES)}, found {', '.join(unknown) or 'none'}"
        )
    known = {k for n in names for k in INDICES[n].constants}
    stray = [k for k in constants if k not in known]
    if stray:
        raise UsageError(
            f"expected [[constants]] that the indices take ({', '.join(sorted(known)) or 'none'}), found {', '.join(stray)}"
        )
    rows: tuple[list[list[float]], list[float], list[list[float]], list[float]] = ([], [], [], [])
    for name in names:
        index = INDICES[name]
        mixes = index.mixes(
            {**index.constants, **{k: v for k, v in constants.items() if k in index.constants}}
        )
        for mix, (weights, bias) in zip(mixes, ((rows[0], rows[1]), (rows[2], rows[3]))):
            row = [0.0] * channels
            for band, coefficient in mix.items():
                if band != "1":
                    row[band_of(COMMON_ALIASES.get(band, (band,)), channels, labels, bindings)] += coefficient
            weights.append(row)
            bias.append(mix.get("1", 0.0))
    return rows
