"""Learning a filter bank from data in one pass: moments merged block by block, then solved.

Blocks of channel vectors are reduced to sums of (shifted) vectors and their outer products,
in float64: the result does not depend on how the data was cut into blocks or files, up to
float64 rounding, and no block is ever held twice.

- :func:`pca` takes the moments of the inputs: components (the eigenvectors of the sample
  covariance, largest first), explained variance, and the bank ``weights = components`` (or
  ``components / sqrt(variance)`` when whitened), ``bias = -weights @ mean``, so that
  applying the bank gives centred projections. Sign rule: the coefficient of largest
  magnitude in each component is positive (the first of equal ones).
- :func:`lstsq` takes the moments of the joined [input, target] vectors and solves the
  normal equations (ridge optional) by a symmetric eigendecomposition, never an explicit
  inverse, with the condition number reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pwconv.core import kernels
from pwconv.errors import ShapeError, UsageError

# Above this condition number the normal equations do not determine the bank.
RANK_DEFICIENT_CONDITION = 1e12


#: The float64 rows converted at a time: small enough that the conversion and the rank-k
#: update meet in the cache (measured: 0.25 s against 0.33 s a 1M x 64 block converted whole).
_PIECE_BYTES = 4 << 20


def _piece_rows(channels: int) -> int:
    return max(1, _PIECE_BYTES // (8 * channels))


@dataclass
class Moments:
    """Count, mean and centred scatter matrix of channel vectors, accumulated block by block.

    Vectors are shifted by a fixed reference (the first block's mean) before their outer
    products are summed, so that the sums stay small and the centred scatter is recovered
    without cancellation. Sums of products do not depend on how the data is cut into blocks
    or files, up to float64 rounding.

    >>> m = Moments(2)
    >>> m.add(np.array([[1.0, 2.0], [3.0, 6.0]])); m.add(np.array([[5.0, 10.0]]))
    >>> m.count, m.mean.tolist(), float(m.covariance()[0, 0])
    (3, [3.0, 6.0], 4.0)
    """

    channels: int
    count: int = 0
    shift: np.ndarray | None = None
    shifted_sum: np.ndarray = field(init=False)
    shifted_products: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.shifted_sum = np.zeros(self.channels)
        self.shifted_products = np.zeros((self.channels, self.channels))

    def add(self, rows: np.ndarray) -> None:
        """Add a (pixels, channels) block, converted to float64 a cache-sized piece at a time."""
        if rows.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = rows.mean(axis=0, dtype=np.float64)
        if kernels.add_scatter(rows, self.shift, self.shifted_products, self.shifted_sum):
            self.count += rows.shape[0]
            return
        step = _piece_rows(self.channels)
        scratch = np.empty((min(step, rows.shape[0]), self.channels))
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            self._add_shifted(np.subtract(part, self.shift, out=scratch[: part.shape[0]]))
        self.count += rows.shape[0]

    def add_differences(
        self,
        first: np.ndarray,
        second: np.ndarray,
        image: np.ndarray | None = None,
        offset: tuple[int, int] | None = None,
    ) -> None:
        """Add ``first - second`` of two (rows, columns, channels) blocks (each pixel and its
        neighbour), differenced in float64 a few rows at a time, never as a whole block.
        With ``image`` (the block both are views of) and ``offset`` (the neighbour's, in rows
        and columns), the C kernel differences them itself where it can."""
        if first.size == 0:
            return
        rows, columns = first.shape[:2]
        if self.shift is None:
            self.shift = (
                np.subtract(first[:1], second[:1], dtype=np.float64).reshape(-1, self.channels).mean(axis=0)
            )
        if image is not None and offset is not None:
            if kernels.add_differences(image, offset, self.shift, self.shifted_products, self.shifted_sum):
                self.count += rows * columns
                return
        step = max(1, _piece_rows(self.channels) // columns)
        scratch = np.empty((min(step, rows), columns, self.channels))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            # dtype: the difference itself in float64 (not float32 rounded, then widened)
            piece = np.subtract(
                first[start:stop], second[start:stop], out=scratch[: stop - start], dtype=np.float64
            )
            flat = piece.reshape(-1, self.channels)
            if not kernels.add_scatter(flat, self.shift, self.shifted_products, self.shifted_sum):
                self._add_shifted(np.subtract(flat, self.shift, out=flat))
        self.count += rows * columns

    def _add_shifted(self, shifted: np.ndarray) -> None:
        self.shifted_products += shifted.T @ shifted  # numpy runs this as a symmetric rank-k update
        self.shifted_sum += shifted.sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        if self.shift is None:
            return np.zeros(self.channels)
        return self.shift + self.shifted_sum / max(self.count, 1)

    @property
    def scatter(self) -> np.ndarray:
        """Sum of the outer products of the centred vectors."""
        return self.shifted_products - np.outer(self.shifted_sum, self.shifted_sum) / max(self.count, 1)

    def covariance(self) -> np.ndarray:
        """The sample covariance (divided by count - 1, as numpy and scikit-learn do)."""
        return self.scatter / max(self.count - 1, 1)

    def second_moment(self) -> np.ndarray:
        """Sum of the outer products of the raw (uncentred) vectors."""
        return self.scatter + self.count * np.outer(self.mean, self.mean)


@dataclass(frozen=True)
class PCA:
    components: np.ndarray  # (K, C), unit rows
    explained_variance: np.ndarray  # (K,)
    explained_variance_ratio: np.ndarray  # (K,)
    mean: np.ndarray  # (C,)
    weights: np.ndarray  # (K, C): the bank
    bias: np.ndarray  # (K,)
    n_pixels: int
    whitened: bool = False


def components_for(k: float, ratios: np.ndarray) -> int:
    """How many components ``k`` asks for: a count, or a fraction of the variance to explain.

    >>> components_for(0.9, np.array([0.6, 0.25, 0.1, 0.05]))
    3
    """
    if not math.isfinite(k) or k <= 0:
        raise UsageError(
            f"expected [[k]] above 0: a number of components or a fraction of the variance, found {k}"
        )
    if k >= 1:
        if k != int(k):
            raise UsageError(
                f"expected [[k]] as a whole number of components or a fraction below 1, found {k}"
            )
        return int(k)
    if k <= 0:
        raise UsageError(f"expected [[k]] above 0, found {k}")
    # As scikit-learn: the fewest components whose cumulative ratio exceeds k.
    return int(min(np.searchsorted(np.cumsum(ratios), k, side="right") + 1, len(ratios)))


def _sign_rule(vectors: np.ndarray) -> np.ndarray:
    """Flip each row so that its entry of largest magnitude is positive."""
    biggest = np.argmax(np.abs(vectors), axis=1)
    signs = np.sign(vectors[np.arange(len(vectors)), biggest])
    signs[signs == 0] = 1
    return vectors * signs[:, None]


def pca(moments: Moments, k: float, whiten: bool = False) -> PCA:
    """The top principal components of the accumulated channel vectors, as a filter bank."""
    c = moments.channels
    if moments.count < 2:
        raise ShapeError(f"expected at least 2 valid pixels to fit, found {moments.count}")
    values, vectors = np.linalg.eigh(moments.covariance())
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order].T
    total = values.sum()
    ratios = values / total if total > 0 else np.zeros_like(values)
    count = components_for(k, ratios)
    if count > c:
        raise UsageError(
            f"expected [[k]] of at most the {c} input channels, found {count}; use [[k={c}]] or fewer"
        )
    components = _sign_rule(vectors[:count])
    variance = values[:count]
    weights = components
    if whiten:
        if np.any(variance <= 0):
            raise ShapeError(
                "expected components with non-zero variance to whiten, found a constant direction; lower [[k]]"
            )
        weights = components / np.sqrt(variance)[:, None]
    return PCA(
        components=components,
        explained_variance=variance,
        explained_variance_ratio=ratios[:count],
        mean=moments.mean.copy(),
        weights=weights,
        bias=-(weights @ moments.mean),
        n_pixels=moments.count,
        whitened=whiten,
    )


def inverse_of(result: PCA) -> tuple[np.ndarray, np.ndarray]:
    """The (C, K) bank and (C,) bias that map a PCA's outputs back to the channels: the
    transpose of the components (times the standard deviations when whitened), plus the mean."""
    inverse = result.components.T
    if result.whitened:
        inverse = inverse * np.sqrt(result.explained_variance)[None, :]
    return inverse, result.mean.copy()


@dataclass(frozen=True)
class MNF:
    """Minimum noise fraction: components ordered by signal-to-noise ratio."""

    weights: np.ndarray  # (K, C): the forward bank, noise-whitened projections
    bias: np.ndarray  # (K,): centres them
    inverse: np.ndarray  # (C, K): back to the channels
    inverse_bias: np.ndarray  # (C,): the mean
    eigenvalues: np.ndarray  # (C,) every one, largest first: 1 + the SNR of each component
    noise: np.ndarray  # (C, C): the noise covariance estimate
    mean: np.ndarray  # (C,)
    n_pixels: int
    n_differences: int


def _symmetric_roots(covariance: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric square root of a covariance and of its inverse."""
    values, vectors = np.linalg.eigh(covariance)
    largest = max(float(values.max()), 0.0)
    if largest == 0 or values.min() <= largest * 1e-12:
        raise ShapeError(
            f"expected a {what} of full rank, found a singular one (smallest eigenvalue {values.min():.3g}): "
            "some channels are constant or combinations of others; drop them first"
        )
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def mnf(signal: Moments, noise: Moments, k: float) -> MNF:
    """The MNF transform from the moments of the pixels and of their neighbour differences.

    The noise covariance is half the covariance of the differences (the two pixels' noise
    adds). The signal covariance is whitened by the noise, ``Ni S Ni`` with ``Ni`` the
    symmetric inverse square root of the noise covariance, and its eigenvectors ``V``, largest
    eigenvalue first, give the forward bank ``V.T Ni`` (centred) and the inverse ``N V``. The
    sign rule of :func:`pca` is applied to the forward bank's rows.
    """
    c = signal.channels
    if signal.count < 2 or noise.count < 2:
        raise ShapeError(
            f"expected at least 2 valid pixels and 2 valid neighbour pairs to fit, found {signal.count} and "
            f"{noise.count}; give a larger image or fewer nodata pixels"
        )
    noise_cov = noise.covariance() / 2
    root, inverse_root = _symmetric_roots(noise_cov, "noise covariance")
    whitened = inverse_root @ signal.covariance() @ inverse_root
    values, vectors = np.linalg.eigh((whitened + whitened.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    count = components_for(k, values / values.sum()) if values.sum() > 0 else int(k)
    if count > c:
        raise UsageError(
            f"expected [[k]] of at most the {c} input channels, found {count}; use [[k={c}]] or fewer"
        )
    forward = vectors[:, :count].T @ inverse_root
    signs = np.sign(forward[np.arange(count), np.argmax(np.abs(forward), axis=1)])
    signs[signs == 0] = 1
    forward = forward * signs[:, None]
    inverse = (root @ vectors[:, :count]) * signs[None, :]
    mean = signal.mean.copy()
    return MNF(
        weights=forward,
        bias=-(forward @ mean),
        inverse=inverse,
        inverse_bias=mean,
        eigenvalues=values,
        noise=noise_cov,
        mean=mean,
        n_pixels=signal.count,
        n_differences=noise.count,
    )


def reconstruction(
    weights: np.ndarray, bias: np.ndarray, inverse: np.ndarray, inverse_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The (C, C) bank and bias of forward then inverse: ``inverse (W x + b) + b_inv``."""
    return inverse @ weights, inverse @ bias + inverse_bias


@dataclass(frozen=True)
class LeastSquares:
    weights: np.ndarray  # (K, C)
    bias: np.ndarray | None  # (K,)
    rms: np.ndarray  # (K,) root mean square residual per output channel
    r2: np.ndarray  # (K,)
    condition: float
    n_pixels: int


def lstsq(joint: Moments, in_channels: int, *, bias: bool = True, ridge: float = 0.0) -> LeastSquares:
    """The K x C bank (and bias) minimising the squared error from the moments of [x, y]."""
    c = in_channels
    if joint.count < 1:
        raise ShapeError("expected valid pixels to fit, found none")
    if not math.isfinite(ridge) or ridge < 0:
        raise UsageError(f"expected [[ridge]] of at least 0 (a finite number), found {ridge}")
    moments = joint.scatter if bias else joint.second_moment()
    sxx, sxy, syy = moments[:c, :c], moments[:c, c:], moments[c:, c:]
    values, vectors = np.linalg.eigh(sxx)
    largest = max(values.max(), 0.0)
    smallest = max(values.min(), 0.0)
    condition = float("inf") if smallest == 0 else float(largest / smallest)
    if ridge == 0 and (largest == 0 or condition > RANK_DEFICIENT_CONDITION):
        raise ShapeError(
            f"expected input channels that determine the fit, found a rank-deficient system (condition number "
            f"{condition:.3g}): some channels are constant or combinations of others; add [[ridge=1e-3]]"
        )
    # W.T = V diag(1 / (lambda + ridge)) V.T Sxy: the eigendecomposition, not an inverse.
    solution = vectors @ ((vectors.T @ sxy) / (values + ridge)[:, None])
    weights = solution.T
    offset = joint.mean[c:] - weights @ joint.mean[:c] if bias else None
    residual = (
        np.diag(syy)
        - 2 * np.einsum("kc,ck->k", weights, sxy)
        + np.einsum("kc,cd,kd->k", weights, sxx, weights)
    )
    residual = np.clip(residual, 0.0, None)
    total = np.diag(joint.scatter[c:, c:])
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.where(residual > 0, 0.0, 1.0))
    return LeastSquares(
        weights=weights,
        bias=offset,
        rms=np.sqrt(residual / joint.count),
        r2=r2,
        condition=condition,
        n_pixels=joint.count,
    )
