"""Reading filter banks of every common shape, layouts, and literal parsing."""

from __future__ import annotations

import numpy as np
import pytest

from pwconv import PwconvError, pointwise_conv
from pwconv.core.filters import literal_dtype, normalise_bias, normalise_filters, parse_literal
from pwconv.core.layout import parse_layout
from pwconv.errors import ShapeError, UsageError

from .conftest import assert_clean_error, run_cli

RNG = np.random.default_rng(7)
KC = RNG.standard_normal((4, 3))


@pytest.mark.parametrize(
    ("stored", "reading"),
    [
        (KC, "kc"),
        (KC.T.copy(), "ck"),
        (KC.reshape(4, 3, 1, 1), "oihw"),
        (KC.reshape(4, 3, 1), "oihw"),
        (KC.reshape(4, 3, 1, 1, 1), "oihw"),
        (KC.T.reshape(1, 1, 3, 4), "hwio"),
        (KC.T.reshape(1, 3, 4), "hwio"),
    ],
)
def test_every_filter_shape_reads_to_the_same_matrix(stored, reading):
    bank = normalise_filters(stored, 3)
    assert bank.reading == reading
    np.testing.assert_array_equal(bank.matrix, KC)


@pytest.mark.parametrize("stored", [np.arange(3.0).reshape(3, 1, 1), np.arange(3.0).reshape(1, 1, 3)])
def test_single_filter_shapes(stored):
    bank = normalise_filters(stored, 3)
    np.testing.assert_array_equal(bank.matrix, [[0.0, 1.0, 2.0]])


def test_square_matrix_is_read_rows_as_filters():
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(normalise_filters(w, 2).matrix, w)
    np.testing.assert_array_equal(normalise_filters(w, 2, "ck").matrix, w.T)


@pytest.mark.parametrize(
    ("shape", "in_channels", "reading"),
    [
        ((1, 2, 1), 2, "oihw"),  # oihw and hwio agree: (K=1, C=2)
        ((2, 2, 1), 2, "oihw"),
        ((1, 2, 2), 2, "hwio"),
        ((1, 1, 2, 2), 2, "hwio"),
        ((2, 2, 1, 1), 2, "oihw"),
        ((5, 1, 1), 1, "oihw"),  # five filters on a one-channel input
        ((5, 1, 1), 5, "chw"),  # one filter on five channels
    ],
)
def test_auto_reading_uses_the_input_channels(shape, in_channels, reading):
    w = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    assert normalise_filters(w, in_channels).reading == reading


def test_square_bank_reports_how_it_was_read():
    bank = normalise_filters(np.eye(3), 3)
    assert bank.square and "square: rows taken as filters" in bank.description
    assert not normalise_filters(np.ones((2, 3)), 3).square


def test_forced_reading_that_does_not_fit_is_a_mismatch():
    with pytest.raises(ShapeError, match="channel mismatch"):
        normalise_filters(np.zeros((4, 3)), 3, "ck")


def test_hwio_and_oihw_disagree_on_a_square_bank():
    # (2, 2, 1, 1) is oihw; (1, 1, 2, 2) is hwio. A (2, 2, 2) bank could be neither 1x1: kernel error.
    with pytest.raises(ShapeError, match="pwconv applies 1x1 kernels; got 3x3"):
        normalise_filters(np.zeros((8, 4, 3, 3)), 4)
    with pytest.raises(ShapeError, match="got 3x3"):
        normalise_filters(np.zeros((3, 3, 4, 8)), 4)


def test_channel_mismatch_suggests_channels_first():
    x = np.zeros((192, 28, 28), np.float32)
    with pytest.raises(ShapeError, match="use layout='channels-first'") as info:
        pointwise_conv(x, np.zeros((64, 192), np.float32))
    assert "axis 2" in str(info.value) and "28" in str(info.value)


def test_groups_must_divide_channels_and_filters():
    x = np.zeros((2, 2, 6))
    with pytest.raises(ShapeError, match="groups=4 must divide the 6 input channels"):
        pointwise_conv(x, np.zeros((4, 1)), groups=4)
    with pytest.raises(ShapeError, match="groups=2 must divide the 3 filters"):
        pointwise_conv(x, np.zeros((3, 3)), groups=2)


def test_bias_length_is_checked():
    assert normalise_bias(np.arange(3).reshape(3, 1, 1), 3).shape == (3,)
    with pytest.raises(ShapeError, match="one value per filter"):
        normalise_bias(np.arange(2), 3)


@pytest.mark.parametrize(
    ("spec", "ndim", "axis", "batch"),
    [
        ("channels-last", 3, 2, ()),
        ("channels-last", 4, 3, (0,)),
        ("channels-first", 3, 0, ()),
        ("channels-first", 4, 1, (0,)),
        ("NCDHW", 5, 1, (0,)),
        ("HWC", 3, 2, ()),
        ("nc", 2, 1, (0,)),
        (-1, 2, 1, ()),
        ("1", 3, 1, ()),
    ],
)
def test_layouts(spec, ndim, axis, batch):
    layout = parse_layout(spec, ndim)
    assert layout.channel_axis == axis
    assert layout.batch_axes == batch


@pytest.mark.parametrize("spec", ["NHW", "NCHWC", "NCHW", "sideways", 5])
def test_bad_layouts_are_usage_errors(spec):
    with pytest.raises(UsageError):
        parse_layout(spec, 3)


def test_literals():
    assert parse_literal("2,3").tolist() == [2, 3]
    assert parse_literal("0.299, 0.587, 0.114").dtype == np.float64
    assert parse_literal("1,0,0;0,1,0").shape == (2, 3)
    for bad in ["1,,2", "1,2;3", "a,b", ""]:
        with pytest.raises(UsageError):
            parse_literal(bad)


def test_literal_dtype_follows_float_inputs():
    assert literal_dtype(np.dtype(np.float32), parse_literal("0.5,1")) == np.float32
    assert literal_dtype(np.dtype(np.uint8), parse_literal("1,2")) == np.int64
    assert literal_dtype(np.dtype(np.uint8), parse_literal("0.5,2")) == np.float64


def test_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        pointwise_conv(np.zeros((2, 3)), np.zeros((1, 4)))
    assert issubclass(ShapeError, PwconvError)


def test_a_channel_mismatch_lists_the_counts_as_a_reader_says_them(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 4, 3), np.float32))
    np.save(tmp_path / "t.npy", np.zeros((24, 16, 1, 1), np.float32))
    proc = run_cli("apply", "x.npy", "t.npy", "-o", "o.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "take 1, 16 or 24 input channels, found 3")
