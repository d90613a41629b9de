"""pwconv: 1x1 (pointwise) convolutions on tensors stored in files.

>>> import numpy as np, pwconv
>>> pwconv.pointwise_conv(np.ones((4, 4, 3)), np.ones((2, 3))).shape
(4, 4, 2)
"""

from __future__ import annotations

import numpy as np

from pwconv.core.conv import pointwise_conv
from pwconv.errors import PwconvError

__version__ = "0.1.0"

__all__ = ["PwconvError", "__version__", "load_array", "load_weights", "pointwise_conv"]


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
