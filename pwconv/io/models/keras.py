"""Keras weights: ``.keras`` archives, ``.weights.h5`` files and legacy Keras ``.h5`` models.

Read with zipfile and h5py only (no TensorFlow, no Keras, no deserialised code). A layer's
name selects its kernel: ``model.keras:conv2d_1`` is ``conv2d_1/kernel``, and its bias is
``conv2d_1/bias``. Variables that are not a kernel and a bias are named ``LAYER/vars/N``.
An HDF5 path (``/layers/conv2d/vars/0``) works too.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError
from pwconv.io.arrays import ArraySource, named
from pwconv.io.checks import check_readable, first_line, numeric_dtype
from pwconv.io.interface import Backend
from pwconv.io.names import pick_name
from pwconv.io.zips import zip_member_guard

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_WEIGHTS_MEMBER = "model.weights.h5"


def _h5py() -> Any:
    import h5py

    return h5py


@contextlib.contextmanager
def _weights_file(path: str) -> Iterator[Any]:
    """The HDF5 file holding the weights (inside the archive for ``.keras``)."""
    check_readable(path)
    h5py = _h5py()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                try:
                    info = archive.getinfo(_WEIGHTS_MEMBER)
                except KeyError:
                    raise FormatError(
                        f"expected a Keras archive with {_WEIGHTS_MEMBER} at {path!r}, found none; "
                        "save the model with model.save('name.keras')"
                    ) from None
                zip_member_guard(path, info)
                with archive.open(info) as member, h5py.File(member, "r") as handle:
                    yield handle
        else:
            with h5py.File(path, "r") as handle:
                yield handle
    except FormatError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, RuntimeError, EOFError) as exc:
        detail = first_line(exc)
        raise FormatError(
            f"expected a Keras weights file at {path!r}, found one that cannot be read ({detail}); "
            "check that it is complete"
        ) from None


def _text(value: Any) -> str:
    return value.decode("utf8", "replace") if isinstance(value, bytes) else str(value)


def _keras3_names(handle: Any) -> dict[str, str]:
    """{name: HDF5 path} for the ``layers/<key>/vars/<i>`` layout of Keras 3."""
    h5py = _h5py()
    names: dict[str, str] = {}
    groups: list[str] = []
    handle.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group) else None)
    for group in groups:
        parts = group.split("/")
        if parts[-1] != "vars" or len(parts) < 3 or parts[-3] != "layers":
            continue
        layer_names = []
        for i in range(len(parts) - 2):
            if parts[i] == "layers":
                level = "/".join(parts[: i + 2])
                layer_names.append(_text(handle[level + "/vars"].attrs.get("name", parts[i + 1])))
        layer = "/".join(layer_names)
        variables = sorted((k for k in handle[group] if k.isascii() and k.isdigit()), key=int)
        shapes = [handle[f"{group}/{k}"].shape for k in variables]
        kernel_and_bias = (
            1 <= len(variables) <= 2
            and len(shapes[0]) >= 2
            and (len(shapes) == 1 or shapes[1] == (shapes[0][-1],))
        )
        for key in variables:
            label = ("kernel" if key == "0" else "bias") if kernel_and_bias else f"vars/{key}"
            names[f"{layer}/{label}"] = f"/{group}/{key}"
    return names


def _legacy_names(handle: Any) -> dict[str, str]:
    """{name: HDF5 path} for Keras 2 models (``model_weights``) and weights files."""
    root = handle["model_weights"] if "model_weights" in handle else handle
    names: dict[str, str] = {}
    for layer in map(_text, root.attrs.get("layer_names", [])):
        if layer not in root:
            continue
        group = root[layer]
        for weight in map(_text, group.attrs.get("weight_names", [])):
            if weight in group:
                short = weight.rsplit("/", 1)[-1].split(":")[0]
                names[f"{layer}/{short}"] = group[weight].name
    return names


def _names(handle: Any) -> dict[str, str]:
    return _keras3_names(handle) if "layers" in handle else _legacy_names(handle)


def _resolve(path: str, handle: Any, wanted: str | None) -> tuple[str, str]:
    """(name, HDF5 path) of the selected variable; a layer name selects its kernel."""
    names = _names(handle)
    if wanted is not None and wanted.startswith("/") and isinstance(handle.get(wanted), _h5py().Dataset):
        return wanted, wanted
    name = pick_name(path, wanted, list(names), "Keras variable")
    return name, names[name]


def _read(path: str, dataset: str) -> np.ndarray:
    with _weights_file(path) as handle:
        return np.asarray(handle[dataset][()])


class KerasFormat(Backend):
    """Keras models (``.keras``, ``.weights.h5``, legacy ``.h5``), by layer name."""

    def claims(self, path: str) -> bool:
        """Whether a plain ``.h5`` file is a legacy Keras model or weights file."""
        try:
            with _h5py().File(path, "r") as handle:
                return (
                    "model_weights" in handle
                    or "layer_names" in handle.attrs
                    or "keras_version" in handle.attrs
                )
        except Exception:  # noqa: BLE001 - not HDF5, or unreadable: not ours to claim
            return False

    def list_arrays(self, path: str) -> list[str]:
        with _weights_file(path) as handle:
            return list(_names(handle))

    def array_name(self, name: str) -> str:
        return name

    def companion_bias(self, path: str, name: str) -> str | None:
        """A kernel's bias: ``LAYER/bias`` beside ``LAYER/kernel``."""
        if not name.endswith("/kernel"):
            return None
        bias = name[: -len("kernel")] + "bias"
        return bias if bias in self.list_arrays(path) else None

    def open_source(self, spec: Spec) -> ArraySource:
        with _weights_file(spec.path) as handle:
            name, dataset = _resolve(spec.path, handle, spec.member)
            shape = tuple(int(n) for n in handle[dataset].shape)
            dtype = numeric_dtype(handle[dataset].dtype, f"{spec.path}:{name}")
        storage = {"format": "keras", "variable": name, "hdf5_path": dataset}
        return ArraySource(shape, dtype, lambda: _read(spec.path, dataset), storage, named(name, "h5py"))
