"""ONNX models: initializers by name, and a Conv node's name for its weights and bias.

The graph is parsed without loading external data; only the selected initializer's data is
read (from the model file or its external data file, which must lie beside the model).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, require_extra
from pwconv.io.arrays import ArraySource, named
from pwconv.io.checks import check_readable, first_line, numeric_dtype
from pwconv.io.interface import Backend
from pwconv.io.names import json_labels, pick_name

if TYPE_CHECKING:
    from pwconv.io.spec import Spec


def _onnx() -> Any:
    return require_extra("onnx", "onnx", "ONNX models")


def _model(path: str) -> Any:
    check_readable(path)
    status = os.stat(path)
    return _model_cached(os.path.abspath(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=2)
def _model_cached(path: str, mtime_ns: int, size: int) -> Any:
    # Listing, pairing a bias and reading all parse the same graph: once is enough.
    onnx = _onnx()
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for damaged data
        detail = first_line(exc)
        raise FormatError(
            f"expected an ONNX model at {path!r}, found one that does not parse ({detail}); check that it is complete"
        ) from None


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def _conv_nodes(model: Any) -> dict[str, Any]:
    return {n.name: n for n in model.graph.node if n.op_type == "Conv" and n.name}


def _conv_role(model: Any, name: str) -> dict[str, Any]:
    """The Conv node whose weights (or bias) ``name`` is, and its group count: the node's
    name selects the tensor as ``model.onnx:NODE``."""
    for node in model.graph.node:
        if node.op_type == "Conv" and name in list(node.input)[1:3]:
            group = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
            role = "weights" if node.input[1] == name else "bias"
            return {"conv_node": node.name or None, "conv_input": role, "conv_group": group}
    return {}


def _external_file(path: str, tensor: Any) -> None:
    """Refuse external data outside the model's folder."""
    for entry in tensor.external_data:
        if entry.key == "location":
            folder = os.path.dirname(os.path.abspath(path))
            target = os.path.abspath(os.path.join(folder, entry.value))
            if os.path.dirname(target) != folder and not target.startswith(folder + os.sep):
                raise FormatError(
                    f"expected the external data of {tensor.name!r} beside {path!r}, found {entry.value!r}; "
                    "keep external data files in the model's folder"
                )


def _read(path: str, tensor: Any) -> np.ndarray:
    onnx = _onnx()
    from onnx import numpy_helper

    try:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _external_file(path, tensor)
        array = numpy_helper.to_array(tensor, base_dir=os.path.dirname(os.path.abspath(path)))
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for missing or damaged data
        detail = first_line(exc)
        raise FormatError(
            f"cannot read tensor {tensor.name!r} of {path!r} ({detail}); check the model's data"
        ) from None
    if array.dtype.kind not in "biufc":  # bfloat16 and other extended types
        array = array.astype(np.float32)
    return np.asarray(array)


class OnnxFormat(Backend):
    """ONNX models: initializers by name, a Conv node's weights and bias."""

    def list_arrays(self, path: str) -> list[str]:
        return list(_initializers(_model(path)))

    def array_name(self, name: str) -> str:
        return name

    def read_labels(self, path: str, name: str) -> tuple[str, ...] | None:
        """A bank's names kept in the model's metadata (``names``, ``channel_names``: JSON
        lists of strings, as ``pwconv export`` writes them)."""
        props = {p.key: p.value for p in _model(path).metadata_props}
        return json_labels(props.get(name), f"{path}:{name}")

    def companion_bias(self, path: str, name: str) -> str | None:
        """The B input of the Conv node whose W is ``name``."""
        for node in _model(path).graph.node:
            if node.op_type == "Conv" and len(node.input) > 2 and node.input[1] == name and node.input[2]:
                return str(node.input[2])
        return None

    def open_source(self, spec: Spec) -> ArraySource:
        onnx = _onnx()
        model = _model(spec.path)
        initializers = _initializers(model)
        wanted = spec.member
        nodes = _conv_nodes(model)
        if (
            wanted is not None
            and wanted not in initializers
            and wanted in nodes
            and len(nodes[wanted].input) > 1
        ):
            wanted = str(nodes[wanted].input[1])  # a Conv node's name selects its weights
        name = pick_name(spec.path, wanted, list(initializers), "initializer")
        tensor = initializers[name]
        try:
            stored = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except Exception:  # noqa: BLE001 - an unknown or undefined element type
            raise FormatError(
                f"expected a numeric tensor at {spec.path}:{name}, found ONNX type {tensor.data_type}"
            ) from None
        dtype = stored if stored.kind in "biufc" else np.dtype(np.float32)
        dtype = numeric_dtype(dtype, f"{spec.path}:{name}")
        storage = {
            "format": "onnx",
            "initializer": name,
            "external": tensor.data_location == onnx.TensorProto.EXTERNAL,
            **_conv_role(model, name),
        }
        shape = tuple(int(n) for n in tensor.dims)
        return ArraySource(shape, dtype, lambda: _read(spec.path, tensor), storage, named(name, "onnx"))
