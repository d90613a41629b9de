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

__all__ = ["PwconvError", "__version__", "load_weights", "pointwise_conv"]


def load_weights(source: str, dataset: str | None = None) -> np.ndarray:
    """Load a filter bank from a file of any readable format or an inline literal such as ``"2,3"``.

    >>> load_weights("1,0,0;0,1,0").shape
    (2, 3)
    """
    from pwconv.io.operands import read_operand

    return read_operand(source, dataset).array
