"""Sources whose data is loaded whole at the first read: a model's tensor, a bank's array, a
picture (formats that cannot be read by block)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pwconv.errors import FormatError
from pwconv.io.interface import Description, Source


class ArraySource(Source):
    """Shape and dtype from the file's header, data loaded at the first read (only this
    array's bytes) and sliced from memory after."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        load: Callable[[], np.ndarray],
        storage: dict[str, Any],
        description: Description = Description(),
    ) -> None:
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.description = description
        self._load, self._storage = load, storage
        self._data: np.ndarray | None = None

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._data is None:
            data = np.asarray(self._load())
            if data.shape != self.shape:
                raise FormatError(
                    f"expected {self.description.name or 'the data'!r} of shape {self.shape}, found "
                    f"{data.shape} in the file; it is damaged, write it again"
                )
            self._data = data
        return self._data[index]

    def storage(self) -> dict[str, Any]:
        return self._storage

    def decoded_piece(self) -> tuple[int, str] | None:
        return math.prod(
            self.shape
        ) * self.dtype.itemsize, "the whole array (this format is not read by block)"

    def close(self) -> None:
        self._data = None


def named(name: str, reader: str) -> Description:
    """The description of a model's or bank's tensor: its full name, and the code that reads it."""
    return Description(name=name, reader=reader)
