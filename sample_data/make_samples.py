"""Regenerate every file in sample_data/ deterministically: python sample_data/make_samples.py"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    # The worked example: channels-first M (C=2, H=W=2) and the filter [2, 3] -> [[17, 22], [27, 32]].
    m = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], dtype=np.int64)
    f = np.array([2, 3], dtype=np.int64)
    np.save(HERE / "example_M.npy", m)
    np.save(HERE / "example_filter.npy", f)
    np.save(HERE / "example_filter_2x1x1.npy", f.reshape(2, 1, 1))

    # The 28x28x192 input with a bank of 64 filters, as .npy files and as one .h5 file.
    rng = np.random.default_rng(20261126)
    x = rng.standard_normal((28, 28, 192), dtype=np.float32)
    w = (rng.standard_normal((64, 192), dtype=np.float32) / np.sqrt(192)).astype(np.float32)
    np.save(HERE / "input_28x28x192.npy", x)
    np.save(HERE / "filters_64x192.npy", w)
    with h5py.File(HERE / "sample.h5", "w", track_order=True) as handle:
        # Fixed timestamps off: the file is byte-for-byte the same on every run.
        handle.create_dataset("input", data=x, track_times=False)
        handle.create_dataset("filters", data=w, track_times=False)


if __name__ == "__main__":
    main()
