"""Pictures of the calculation: ``explain --html/--png/--svg`` (extra ``pwconv[report]``).

One matplotlib figure shows the input around the pixel as a stack of channel planes with
the pixel's channel vector as a column through it, the filters beside that column with
every product and the sum, the output planes with the pixel's value, and the run as one
matrix product. Every number drawn is the text explanation's, formatted the same way. The
figure is saved as SVG (text kept as text) or PNG; the HTML page holds the SVG inline and
the text explanation, and loads nothing (its content security policy forbids it).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.errors import PwconvError, UsageError, require_extra
from pwconv.io.atomic import check_output_path, write_files_together
from pwconv.io.registry import check_distinct
from pwconv.io.spec import Spec, parse_spec
from pwconv.jobs.explain import Neighbourhood, elided, format_value, json_number, render_text

#: The figure's size in inches and the PNG's resolution: a 1400 x 900 picture.
FIGURE_INCHES = (14.0, 9.0)
PNG_DPI = 100
_PLANES_SHOWN = 4  # channel planes drawn in the stack (the first ones and the last)
_TABLE_FILTERS = 2  # filters whose weights and products the table lists (the rest: their sums in the text)
_VALUES_IN_CELLS = 64  # output planes of at most this many pixels show every value
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1460px;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}figure{margin:0}svg{max-width:100%;height:auto}"
)
# A page that can load nothing: no scripts, no fetches; images only from data: URIs.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class PictureTargets:
    """Where ``explain`` writes its pictures (None: not asked for)."""

    html: str | None = None
    png: str | None = None
    svg: str | None = None
    overwrite: bool = False

    @property
    def any(self) -> bool:
        return bool(self.html or self.png or self.svg)

    def paths(self) -> list[tuple[str, str]]:
        return [
            (kind, path) for kind, path in (("html", self.html), ("png", self.png), ("svg", self.svg)) if path
        ]

    def check(self, inputs: list[Spec]) -> None:
        """Refuse, before any work, a target of the wrong suffix (so no two targets are one
        file), one that exists (without overwrite), and one that is a file read."""
        for kind, path in self.paths():
            suffix = "." + kind
            if not path.lower().endswith(suffix):
                raise UsageError(f"expected a {suffix} file for --{kind}, found {path!r}; name it *{suffix}")
            check_distinct(Spec(kind, path), *inputs)
            check_output_path(path, self.overwrite)


def _matplotlib() -> Any:
    matplotlib = require_extra("matplotlib", "report", "explain and fit pictures")
    from matplotlib.figure import Figure

    return matplotlib, Figure


def _plane_image(plane: np.ndarray) -> np.ndarray:
    """A plane scaled to 0-1 for a colour map (complex: its magnitude; NaN stays NaN)."""
    values = np.abs(plane) if np.iscomplexobj(plane) else plane.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, np.nan)
    low, high = float(values[finite].min()), float(values[finite].max())
    return np.where(finite, (values - low) / (high - low) if high > low else 0.5, np.nan)


def _shown_channels(count: int) -> list[int]:
    if count <= _PLANES_SHOWN:
        return list(range(count))
    return [*range(_PLANES_SHOWN - 1), count - 1]


def _draw_stack(
    ax: Any, planes: np.ndarray, shown: list[int], pixel: tuple[int, int], labels: list[str], cmap: str,
    marks: np.ndarray | None = None, values: list[str] | None = None,
) -> None:  # fmt: skip
    """Planes drawn as a stack, the first in front; the pixel marked on each and joined by a
    column through them."""
    rows, cols = planes.shape[:2]
    width = 0.56
    height = width * min(1.6, max(0.25, rows / max(cols, 1)))
    step_x, step_y = 0.09, 0.1
    centres = []
    for depth in reversed(range(len(shown))):
        x0, y0 = 0.04 + depth * step_x, 0.08 + depth * step_y
        image = _plane_image(planes[..., shown[depth]])
        ax.imshow(
            image, extent=(x0, x0 + width, y0, y0 + height), cmap=cmap, vmin=0, vmax=1,
            interpolation="nearest", zorder=10 - depth, aspect="auto",
        )  # fmt: skip
        if marks is not None and marks.any():
            grey = np.where(marks, 1.0, np.nan)
            ax.imshow(
                grey, extent=(x0, x0 + width, y0, y0 + height), cmap="Greys", vmin=0, vmax=1.4,
                interpolation="nearest", zorder=10 - depth, aspect="auto",
            )  # fmt: skip
        cw, ch = width / cols, height / rows
        px, py = x0 + (pixel[1] + 0.5) * cw, y0 + height - (pixel[0] + 0.5) * ch
        centres.append((px, py))
        ax.add_patch(_rectangle(px - cw / 2, py - ch / 2, cw, ch, 10.5 - depth))
        ax.text(x0 + width + 0.01, y0 + 0.005, labels[depth], fontsize=8, va="bottom", zorder=20)
        if values is not None and depth == 0 and rows * cols <= _VALUES_IN_CELLS:
            for r in range(rows):
                for c in range(cols):
                    ax.text(
                        x0 + (c + 0.5) * cw, y0 + height - (r + 0.5) * ch, values[r * cols + c],
                        ha="center", va="center", fontsize=10, color="white", zorder=21,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.55, "linewidth": 0},
                    )  # fmt: skip
    xs, ys = zip(*centres)
    ax.plot(xs, ys, color="red", linewidth=2, zorder=30)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")


def _rectangle(x: float, y: float, w: float, h: float, z: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=2, zorder=z)


def _table_rows(doc: dict[str, Any], max_terms: int) -> tuple[list[str], list[list[str]]]:
    """The products of the shown filters, one row per channel (elided as the text does),
    then the bias and the sum."""
    results = doc["results"][:_TABLE_FILTERS]
    channels = doc["pixel"]["channels"]
    header = ["c", "x[c]"] + [
        h for item in results for h in (f"w{item['filter']}[c]", f"x*w{item['filter']}")
    ]
    indices = list(range(len(channels)))
    kept = elided([str(i) for i in indices], max_terms, "channels")
    rows: list[list[str]] = []
    for label in kept:
        if not label.isdigit():
            rows.append([label.strip(". ").replace(" more channels", " more")] + [""] * (len(header) - 1))
            continue
        c = int(label)
        row = [label, format_value(channels[c])]
        for item in results:
            lo = item["channels"][0]
            term = item["terms"][c - lo] if lo <= c < lo + len(item["terms"]) else None
            row += ["", ""] if term is None else [format_value(term[1]), format_value(term[2])]
        rows.append(row)
    if any(item["bias"] is not None for item in results):
        rows.append(["bias", ""] + [v for item in results for v in ("", format_value(item["bias"]))])
    rows.append(["sum", ""] + [v for item in results for v in ("", format_value(item["sum"]))])
    if any(item.get("written") is not None for item in results):
        rows.append(["written", ""] + [v for item in results for v in ("", format_value(item["written"]))])
    return header, rows


def _draw_table(ax: Any, doc: dict[str, Any], max_terms: int) -> None:
    header, rows = _table_rows(doc, max_terms)
    ax.axis("off")
    where = ", ".join(f"{n}={v}" for n, v in doc["pixel"]["output_index"].items())
    ax.set_title(f"pixel ({where}): each filter times the pixel's channel vector", fontsize=11)
    lengths = [
        max([len(header[i])] + [len(r[i]) for r in rows if r[0][:1].isalnum()]) + 2
        for i in range(len(header))
    ]
    widths = [n / sum(lengths) for n in lengths]
    height = min(1.0, 0.065 * (len(rows) + 1))
    table = ax.table(
        cellText=rows, colLabels=header, cellLoc="right", colLoc="right", colWidths=widths,
        bbox=(0.0, 1.0 - height, 1.0, height),
    )  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(9 if sum(lengths) < 70 else 8)
    for (row, column), cell in table.get_celld().items():
        cell.set_linewidth(0.3)
        cell.get_text().set_fontfamily("monospace")
        label = rows[row - 1][0] if row else ""
        if row == 0 or label in ("sum", "written"):
            cell.get_text().set_fontweight("bold")
        if column == 1 and row and label.isdigit():
            cell.set_edgecolor("red")  # the pixel's channel vector: the column through the stack
            cell.set_linewidth(1.5)


def _draw_matrix(ax: Any, doc: dict[str, Any], lines: list[str]) -> None:
    from matplotlib.patches import Rectangle

    matrix = doc["matrix"]
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("the whole run as one matrix product", fontsize=11)
    c, k = max(matrix["channels"], 1), max(matrix["filters"], 1)
    scale = 0.22 / max(c, k)
    cw, kw = max(0.02, c * scale), max(0.02, k * scale)
    for x, w, h, label in (
        (0.02, cw, 0.62, "pixels x C"),
        (0.36, kw, cw * 2.8, "C x K"),
        (0.66, kw, 0.62, "pixels x K"),
    ):
        ax.add_patch(Rectangle((x, 0.22), w, h, facecolor="#dde8f5", edgecolor="#335", linewidth=1))
        ax.text(x, 0.16, label, fontsize=8)
    row = 0.22 + 0.62 * (1 - (doc["pixel"]["flat_index"] + 0.5) / max(matrix["pixels"], 1)) - 0.012
    column = max(0.006, kw / k)
    ax.add_patch(Rectangle((0.02, row), cw, 0.024, facecolor="red", alpha=0.6))
    ax.add_patch(Rectangle((0.36, 0.22), column, cw * 2.8, facecolor="blue", alpha=0.4))
    ax.add_patch(Rectangle((0.66, row), column, 0.024, facecolor="purple", alpha=0.8))
    ax.text(0.02 + cw + 0.03, 0.5, "@", fontsize=16)
    ax.text(0.36 + kw + 0.05, 0.5, "=", fontsize=16)
    for i, line in enumerate(lines[:2]):
        ax.text(0.02, 0.06 - i * 0.07, line, fontsize=8.5, family="monospace", va="top")


def _channel_labels(hood: Neighbourhood, shown: list[int], what: str) -> list[str]:
    names = hood.channel_names if what == "channel" else hood.filter_names
    return [f"{what} {c}" + (f": {names[c]}" if names and c < len(names) else "") for c in shown]


def explain_figure(doc: dict[str, Any], hood: Neighbourhood, max_terms: int) -> Any:
    """The matplotlib figure of one explanation."""
    _, figure_class = _matplotlib()
    sections = dict(render_text(doc, max_terms))
    fig = figure_class(figsize=FIGURE_INCHES, layout="constrained")
    bias = f" + bias {doc['bias']}" if doc["bias"] else ""
    fig.suptitle(f"{doc['input']['path']}  with filters {doc['weights']['source']}{bias}", fontsize=12)
    grid = fig.add_gridspec(2, 3, height_ratios=[3.2, 1.3], width_ratios=[1.0, 1.9, 1.0])
    inp, out = doc["input"], doc["output"]
    shown = _shown_channels(hood.inputs.shape[-1])
    ax = fig.add_subplot(grid[0, 0])
    _draw_stack(
        ax, hood.inputs, shown, hood.pixel, _channel_labels(hood, shown, "channel"), "viridis", hood.nodata
    )
    ax.set_title(f"input {'x'.join(map(str, inp['shape']))} ({', '.join(inp['axes'])})", fontsize=11)
    _draw_table(fig.add_subplot(grid[0, 1]), doc, max_terms)
    filters = [item["filter"] for item in doc["results"]]
    ax = fig.add_subplot(grid[0, 2])
    first = hood.outputs[..., filters[0]].reshape(-1)
    values = [format_value(json_number(v.item())) for v in first]
    _draw_stack(
        ax, hood.outputs, filters, hood.pixel, _channel_labels(hood, filters, "filter"), "magma", hood.nodata,
        values,
    )  # fmt: skip
    result = doc["results"][0]
    value = result["written"] if result.get("written") is not None else result["sum"]
    ax.set_title(
        f"output {'x'.join(map(str, out['shape']))}: filter {filters[0]} gives {format_value(value)}",
        fontsize=11,
    )
    ax = fig.add_subplot(grid[1, 0:2])
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(sections["shapes"]), fontsize=9, family="monospace", va="top")
    _draw_matrix(fig.add_subplot(grid[1, 2]), doc, sections["matrix view"])
    return fig


def _save(fig: Any, kind: str) -> bytes:
    matplotlib, _ = _matplotlib()
    buffer = io.BytesIO()
    # Text stays text in the SVG (numbers a browser and a search can find); fixed ids.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pwconv"}):
        fig.savefig(buffer, format=kind, dpi=PNG_DPI, metadata={"Date": None} if kind == "svg" else None)
    return buffer.getvalue()


def _inline_svg(svg: bytes) -> str:
    text = svg.decode("utf-8")
    return text[text.index("<svg") :]


def explain_page(doc: dict[str, Any], svg: bytes, max_terms: int) -> str:
    """The self-contained HTML page: the figure inline, then the text explanation."""
    title = f"pwconv explain: {doc['input']['path']} with {doc['weights']['source']}"
    text = "\n\n".join(
        f"<h2>{html.escape(name)}</h2>\n<pre>{html.escape(chr(10).join(lines))}</pre>"
        for name, lines in render_text(doc, max_terms)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<figure id="calculation">\n{_inline_svg(svg)}\n</figure>\n'
        f'<section id="explanation">\n{text}\n</section>\n</body>\n</html>\n'
    )


def write_pictures(
    doc: dict[str, Any], hood: Neighbourhood, targets: PictureTargets, max_terms: int
) -> list[dict[str, Any]]:
    """Draw the figure once and write each asked-for file atomically; returns what was
    written (path, format, bytes, and the PNG's pixel size)."""
    fig = explain_figure(doc, hood, max_terms)
    files: dict[str, bytes] = {}
    written = []
    for kind, path in targets.paths():
        if kind == "html":
            data = explain_page(doc, _save(fig, "svg"), max_terms).encode("utf-8")
        else:
            data = _save(fig, kind)
        files[path] = data
        entry: dict[str, Any] = {"path": path, "format": kind, "bytes": len(data)}
        if kind == "png":
            entry["width"], entry["height"] = (round(n * PNG_DPI) for n in FIGURE_INCHES)
        written.append(entry)
    write_files_together(files, targets.overwrite)  # all of them, or none
    return written


def _files_read(request: Any) -> list[Spec]:
    """The files an explanation reads (the input, and the weights where they are a file)."""
    specs = [parse_spec(request.input, request.dataset)]
    try:
        specs.append(parse_spec(request.weights, what="weights"))
    except PwconvError:  # a literal or a named bank: no file
        pass
    return specs


def explain_with_pictures(request: Any, targets: PictureTargets) -> dict[str, Any]:
    """``explain`` with its figure written to ``targets``: the document gains ``pictures``."""
    import dataclasses

    from pwconv.jobs.explain import explain_with_neighbourhood

    targets.check(_files_read(request))
    _matplotlib()  # a missing extra is found before any data is read
    doc, hood = explain_with_neighbourhood(dataclasses.replace(request, pictures=True))
    assert hood is not None
    doc["pictures"] = write_pictures(doc, hood, targets, request.max_terms)
    return doc


@dataclass(frozen=True)
class FitPicture:
    """What a fit report shows: the spectrum that chose k, the bank, and the input's look."""

    method: str  # as the bank records it: "pca", "mnf (noise from ...)", "lstsq"
    inputs: str
    weights: np.ndarray  # (K, C)
    bias: np.ndarray | None
    filter_names: tuple[str, ...]
    channel_names: tuple[str, ...] | None
    pixels: int  # the pixels the fit used
    spectrum: np.ndarray | None = None  # pca: every variance; mnf: every eigenvalue (1 + SNR)
    sample: np.ndarray | None = None  # (rows, columns, C): the first input on a coarse grid
    target: np.ndarray | None = None  # lstsq: the target on the same grid, (rows, columns, K)
    r2: np.ndarray | None = None  # lstsq: per output channel

    @property
    def kept(self) -> int:
        return int(self.weights.shape[0])


def _number_text(value: float) -> str:
    return format(float(value), ".9g")


def _draw_spectrum(ax: Any, picture: FitPicture) -> None:
    assert picture.spectrum is not None
    values = np.asarray(picture.spectrum, dtype=np.float64)
    positions = np.arange(1, len(values) + 1)
    mnf = picture.method.startswith("mnf")
    colours = ["#2b6cb0" if i < picture.kept else "#b7c7dd" for i in range(len(values))]
    if mnf:
        ax.bar(positions, values, color=colours)
        ax.set_yscale("log")
        ax.set_ylabel("eigenvalue (1 + signal-to-noise ratio)")
        share = np.cumsum(values) / values.sum()
    else:
        share = np.cumsum(values) / values.sum()
        ax.bar(positions, values / values.sum(), color=colours)
        ax.set_ylabel("explained variance ratio")
    ax.set_xlabel("component")
    twin = ax.twinx()
    twin.plot(positions, share, color="#c05621", marker="o", markersize=3)
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative share", color="#c05621")
    ax.axvline(picture.kept + 0.5, color="black", linestyle="--", linewidth=1)
    ax.set_title(f"k = {picture.kept}: {100 * share[picture.kept - 1]:.4g} % of the total", fontsize=11)


def _draw_bank(ax: Any, picture: FitPicture) -> None:
    weights = picture.weights
    limit = float(np.abs(weights).max()) or 1.0
    image = ax.imshow(weights, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    channels = picture.channel_names or tuple(str(c) for c in range(weights.shape[1]))
    every = max(1, len(channels) // 24)
    ax.set_xticks(
        range(0, len(channels), every),
        [channels[c] for c in range(0, len(channels), every)],
        rotation=90,
        fontsize=7,
    )
    ax.set_yticks(range(weights.shape[0]), picture.filter_names, fontsize=8)
    ax.set_xlabel("input channel")
    ax.set_title(f"the bank: {weights.shape[0]} x {weights.shape[1]} weights", fontsize=11)


def _applied(picture: FitPicture) -> np.ndarray:
    assert picture.sample is not None
    out = picture.sample.astype(np.float64) @ picture.weights.T
    return out + picture.bias if picture.bias is not None else out


def fit_figure(picture: FitPicture) -> Any:
    """The matplotlib figure of a fit: spectrum and bank, then what the bank gives."""
    _, figure_class = _matplotlib()
    fig = figure_class(figsize=FIGURE_INCHES, layout="constrained")
    fig.suptitle(f"{picture.method} of {picture.inputs}, from {picture.pixels:,} pixels", fontsize=12)
    grid = fig.add_gridspec(2, 4, height_ratios=[1.2, 1])
    lstsq = picture.target is not None
    if not lstsq:
        _draw_spectrum(fig.add_subplot(grid[0, 0:2]), picture)
    _draw_bank(fig.add_subplot(grid[0, 2:4] if not lstsq else grid[0, :]), picture)
    if picture.sample is None:
        return fig
    outputs = _applied(picture)
    for i in range(min(4, picture.kept)):
        ax = fig.add_subplot(grid[1, i])
        if lstsq:
            assert picture.target is not None and picture.r2 is not None
            truth = picture.target[..., i].reshape(-1)
            guess = outputs[..., i].reshape(-1)
            ax.scatter(truth, guess, s=4, alpha=0.5, rasterized=True)  # an image inside the SVG: small
            low, high = float(min(truth.min(), guess.min())), float(max(truth.max(), guess.max()))
            ax.plot([low, high], [low, high], color="black", linewidth=1)
            ax.set_xlabel("target")
            ax.set_ylabel("predicted")
            ax.set_title(
                f"{picture.filter_names[i]}: R\N{SUPERSCRIPT TWO} = {picture.r2[i]:.6g}", fontsize=10
            )
        else:
            ax.imshow(outputs[..., i], cmap="gray", interpolation="nearest")
            ax.set_title(f"{picture.filter_names[i]} applied to the input", fontsize=10)
            ax.axis("off")
    return fig


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def fit_page(picture: FitPicture, svg: bytes) -> str:
    """The fit report: the figure inline, then its numbers (the spectrum, R², the bank)."""
    title = f"pwconv fit {picture.method}: {picture.inputs}"
    sections = []
    if picture.spectrum is not None:
        values = np.asarray(picture.spectrum, dtype=np.float64)
        share = values / values.sum()
        rows = [
            [
                str(i + 1),
                _number_text(v),
                _number_text(s),
                _number_text(c),
                "kept" if i < picture.kept else "",
            ]
            for i, (v, s, c) in enumerate(zip(values, share, np.cumsum(share)))
        ]
        what = "eigenvalue" if picture.method.startswith("mnf") else "variance"
        sections.append(
            "<h2>spectrum</h2>\n" + _table(["component", what, "share", "cumulative", ""], rows, "spectrum")
        )
    if picture.r2 is not None:
        rows = [[name, _number_text(r)] for name, r in zip(picture.filter_names, picture.r2)]
        sections.append("<h2>fit per output channel</h2>\n" + _table(["output", "R\u00b2"], rows, "r2"))
    channels = list(picture.channel_names or [str(c) for c in range(picture.weights.shape[1])])
    header = ["filter", *channels] + (["bias"] if picture.bias is not None else [])
    rows = [
        [name, *(_number_text(w) for w in picture.weights[k])]
        + ([_number_text(picture.bias[k])] if picture.bias is not None else [])
        for k, name in enumerate(picture.filter_names)
    ]
    sections.append("<h2>the bank</h2>\n" + _table(header, rows, "bank"))
    style = (
        _STYLE
        + "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<figure id="fit">\n{_inline_svg(svg)}\n</figure>\n'
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def fit_report(picture: FitPicture) -> bytes:
    """The fit report's page, drawn before anything is written (a drawing that fails leaves
    no bank behind either)."""
    return fit_page(picture, _save(fit_figure(picture), "svg")).encode("utf-8")


def check_report_target(path: str, overwrite: bool) -> None:
    """Refuse a report path that is not ``.html`` or that exists (without overwrite), and a
    missing extra, before any work."""
    if not path.lower().endswith(".html"):
        raise UsageError(f"expected a .html file for --report, found {path!r}; name it *.html")
    check_output_path(path, overwrite)
    _matplotlib()


class Explanation:
    """One pixel's calculation, as the Python API returns it: ``doc`` (the ``--json``
    document), ``text``, and the figure, which a notebook displays (``_repr_html_``)."""

    def __init__(self, doc: dict[str, Any], hood: Neighbourhood, max_terms: int) -> None:
        self.doc, self._hood, self._max_terms = doc, hood, max_terms

    @property
    def text(self) -> str:
        """The text explanation, as ``pwconv explain`` prints it."""
        return "\n".join(
            f"{name}\n" + "\n".join("  " + line for line in lines)
            for name, lines in render_text(self.doc, self._max_terms)
        )

    def figure(self) -> Any:
        """The matplotlib figure."""
        return explain_figure(self.doc, self._hood, self._max_terms)

    def save(self, path: str, overwrite: bool = False) -> dict[str, Any]:
        """Write the figure as ``.html``, ``.png`` or ``.svg`` (by the name's suffix)."""
        kind = path.lower().rpartition(".")[2]
        if kind not in ("html", "png", "svg"):
            raise UsageError(f"expected a .html, .png or .svg name, found {path!r}")
        targets = PictureTargets(**{kind: path}, overwrite=overwrite)
        targets.check([])
        (entry,) = write_pictures(self.doc, self._hood, targets, self._max_terms)
        return entry

    def _repr_html_(self) -> str:
        svg = _inline_svg(_save(self.figure(), "svg"))
        return f'<div class="pwconv-explain">{svg}<pre>{html.escape(self.text)}</pre></div>'

    def __repr__(self) -> str:
        return self.text


class FitReport:
    """A fit as the Python API returns it: ``doc`` (the ``--json`` document) and the report
    page, which a notebook displays (``_repr_html_``)."""

    def __init__(self, doc: dict[str, Any], page: str) -> None:
        self.doc, self.page = doc, page

    def _repr_html_(self) -> str:
        body = self.page[self.page.index("<body>") + len("<body>") : self.page.index("</body>")]
        return f'<div class="pwconv-fit">{body}</div>'

    def __repr__(self) -> str:
        return f"FitReport({self.doc['method']}, bank {', '.join(self.doc['output'])})"
