"""pwconv: 1x1 (pointwise) convolutions on tensors stored in files.

>>> import numpy as np, pwconv
>>> pwconv.pointwise_conv(np.ones((4, 4, 3)), np.ones((2, 3))).shape
(4, 4, 2)
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.conv import pointwise_conv
from pwconv.errors import PwconvError

__version__ = "0.1.0"

__all__ = ["PwconvError", "__version__", "explain", "fit", "load_array", "load_weights", "pointwise_conv"]

if TYPE_CHECKING:
    from pwconv.jobs.figures import Explanation, FitReport


def load_weights(source: str, dataset: str | None = None) -> np.ndarray:
    """Load a filter bank from a file of any readable format or an inline literal such as ``"2,3"``.

    >>> load_weights("1,0,0;0,1,0").shape
    (2, 3)
    """
    from pwconv.io.operands import read_operand

    return read_operand(source, dataset).array


def load_array(source: str, dataset: str | None = None) -> np.ndarray:
    """Read a whole array from a file of any format pwconv reads, as pwconv reads it (a
    raster or a picture as rows, cols, channels; a container's ``dataset``).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.arange(6).reshape(2, 3))
    >>> load_array(path).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    from pwconv.io.registry import open_source
    from pwconv.io.spec import parse_spec

    opened = open_source(parse_spec(source, dataset))
    try:
        return np.array(opened.read(tuple(slice(0, n) for n in opened.shape)))
    finally:
        opened.close()


def _as_file(value: Any, folder: str, name: str) -> str:
    """A path or literal as given; an array saved as an ``.npy`` in ``folder``."""
    if isinstance(value, str):
        return value
    path = os.path.join(folder, name)
    np.save(path, np.asarray(value))
    return path


def explain(
    input: Any, weights: Any, *, at: tuple[int, ...] | None = None, filters: list[int] | None = None,
    max_terms: int = 8, **options: Any,
) -> Explanation:  # fmt: skip
    """The calculation of one output pixel (as ``pwconv explain``), shown as a picture in a
    notebook. ``input`` and ``weights`` are arrays, file names or literals (``"2,3"``);
    ``options`` are ``apply``'s (``layout="CHW"``, ``bias=...``). Needs ``pwconv[report]``
    for the picture.

    >>> m = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    >>> [r["sum"] for r in explain(m, [2, 3], at=(1, 0), layout="CHW").doc["results"]]
    [27]
    """
    import dataclasses

    from pwconv.jobs.explain import ExplainRequest, explain_with_neighbourhood
    from pwconv.jobs.figures import Explanation
    from pwconv.jobs.options import ApplyOptions

    with tempfile.TemporaryDirectory(prefix="pwconv-explain-") as folder:
        bias = options.pop("bias", None)
        request = ExplainRequest(
            _as_file(input, folder, "input.npy"),
            _as_file(weights, folder, "weights.npy"),
            ApplyOptions(bias=None if bias is None else _as_file(bias, folder, "bias.npy"), **options),
            at=None if at is None else ",".join(map(str, at)),
            filters=None if filters is None else ",".join(map(str, filters)),
            max_terms=max_terms,
        )
        doc, hood = explain_with_neighbourhood(dataclasses.replace(request, pictures=True))
    assert hood is not None
    if not isinstance(input, str):
        doc["input"]["path"] = "array"  # not the temporary file it was read from
    if not isinstance(weights, str):
        doc["weights"]["source"] = "array"
    return Explanation(doc, hood, max_terms)


def fit(method: str, inputs: Any, output: str, *, target: Any = None, **options: Any) -> FitReport:
    """Fit a bank (as ``pwconv fit pca|mnf|lstsq``) and write it to ``output``; the result
    shows the fit report in a notebook. ``inputs`` is an array, a file name or a list of
    them; ``options`` are the command's (``k=3``, ``whiten=True``, ``layout=...``, for
    lstsq ``bias=False``). Needs ``pwconv[report]``."""
    import dataclasses

    from pwconv.jobs import fit as jobs
    from pwconv.jobs.figures import FitReport

    if method not in ("pca", "mnf", "lstsq"):
        raise PwconvError(f"expected the method pca, mnf or lstsq, found {method!r}")
    items = inputs if isinstance(inputs, list) else [inputs]
    named = {f.name for f in dataclasses.fields(jobs.FitOptions) if f.init}
    settings = {k: options.pop(k) for k in list(options) if k in named}
    with tempfile.TemporaryDirectory(prefix="pwconv-fit-") as folder:
        paths = [_as_file(x, folder, f"input{i}.npy") for i, x in enumerate(items)]
        report = os.path.join(folder, "report.html")
        fit_options = jobs.FitOptions(report=report, **settings)
        if method == "lstsq":
            if target is None:
                raise PwconvError("expected a target for lstsq, found none; pass target=...")
            doc = jobs.fit_lstsq(
                paths[0], _as_file(target, folder, "target.npy"), output, fit_options, **options
            )
        elif method == "pca":
            doc = jobs.fit_pca(paths, output, options.pop("k", None), fit_options, **options)
        else:
            doc = jobs.fit_mnf(paths, output, options.pop("k", None), fit_options, **options)
        with open(report, encoding="utf-8") as handle:
            page = handle.read()
        for path, item in zip(paths, items):  # arrays are named as such, not by their temporary files
            if not isinstance(item, str):
                page = page.replace(path, "array")
                doc["inputs"] = ["array" if p == path else p for p in doc.get("inputs", [])]
                doc["apply"] = doc["apply"].replace(path, "ARRAY")
    doc.pop("report", None)
    return FitReport(doc, page)
