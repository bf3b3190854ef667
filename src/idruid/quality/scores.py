"""The formulas of the image-quality metrics, as pure functions on features and probabilities:
the Frechet distance of FID, the Inception Score and the CLIP-style score (the package docstring
gives them); models.py computes their inputs.
"""

from __future__ import annotations

import numpy as np

from ..errors import QualityError

# ----------------------------------------------------------------------------- FID math


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64, as FID fits them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise QualityError(f"features must be (N, D), got shape {features.shape}")
    if len(features) < 2:
        raise QualityError(f"need at least 2 feature vectors for a covariance, got {len(features)}")
    if not np.isfinite(features).all():
        raise QualityError("features contain NaN or inf")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _check_covariance(sigma: np.ndarray, name: str, dim: int) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (dim, dim):
        raise QualityError(f"{name} must be ({dim}, {dim}) to match the mean, got {sigma.shape}")
    if not np.isfinite(sigma).all():
        raise QualityError(f"{name} contains NaN or inf")
    scale = max(1.0, float(np.abs(sigma).max()))
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise QualityError(f"{name} is not symmetric, so it is no covariance")
    return (sigma + sigma.T) / 2


def _psd_eigvals(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at rounding level set to exactly 0.

    A zero eigenvalue comes out of eigh as +-1e-16 * the largest, and its square root as 1e-8,
    which would add 1e-8 per null direction to Tr sqrt (thousands of them for 2048-d features
    of a few hundred images). Below the rank tolerance of numpy.linalg.matrix_rank
    (size * float eps * largest) an eigenvalue is indistinguishable from 0, so it is 0.
    """
    tolerance = len(eigvals) * np.finfo(np.float64).eps * max(float(np.abs(eigvals).max()), 1e-300)
    return np.where(eigvals > tolerance, eigvals, 0.0)


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a PSD matrix (rounding-level eigenvalues set to 0)."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    if eigvals.min() < -1e-6 * max(1.0, float(np.abs(eigvals).max())):
        raise QualityError(f"{name} has eigenvalue {eigvals.min():.3g} < 0, so it is no covariance")
    return (eigvecs * np.sqrt(_psd_eigvals(eigvals))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) for symmetric PSD S1, S2.

    Why eigendecompositions and not scipy.linalg.sqrtm(S1 @ S2): with R = S1^(1/2) (symmetric),
    S1 S2 = R (R S2) and R S2 R = (R S2) R; AB and BA share their eigenvalues, so S1 S2 has the
    eigenvalues of R S2 R, which is symmetric PSD: real and >= 0. The principal root (S1 S2)^(1/2)
    has their square roots as eigenvalues, so its trace is sum sqrt(eig(R S2 R)), the
    Dowson-Landau form of the distance. Two symmetric eigendecompositions give it with no complex
    parts to discard and no epsilon, also when S1 S2 is singular (fewer images than feature
    dimensions), where sqrtm of the non-symmetric product is inaccurate and FID code retries it
    with eps * I added to both covariances, which changes the result.
    """
    root1 = _psd_sqrt(sigma1, "sigma1")
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    if eigvals.min() < -1e-6 * max(1.0, float(np.abs(eigvals).max())):
        raise QualityError(f"sigma2 is not PSD (S1^1/2 S2 S1^1/2 has eigenvalue {eigvals.min():.3g})")
    return float(np.sqrt(_psd_eigvals(eigvals)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mu1, sigma1) and N(mu2, sigma2): the FID."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise QualityError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    dim = len(mu1)
    sigma1 = _check_covariance(np.atleast_2d(sigma1), "sigma1", dim)
    sigma2 = _check_covariance(np.atleast_2d(sigma2), "sigma2", dim)
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # A squared distance: a negative value can only be rounding (identical statistics give ~ -1e-13).
    return max(float(distance), 0.0)


# ----------------------------------------------------------------------------- IS and CLIP math


def split_bounds(count: int, splits: int) -> list[tuple[int, int]]:
    """Chunks [k N / splits, (k + 1) N / splits) as in the original Inception Score code."""
    return [(k * count // splits, (k + 1) * count // splits) for k in range(splits)]


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` chunks of exp(mean_x KL(p(y|x) || p(y))), p(y) the chunk's mean.

    probs (N, C) rows are class distributions. The score lies in [1, C]: 1 when every image gets
    the same prediction, C when the predictions are one-hot and spread evenly over the classes.
    """
    from scipy.special import rel_entr

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise QualityError(f"probs must be (N, num_classes), got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise QualityError("probs must be finite and non-negative")
    row_sums = probs.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > 1e-6:
        row = int(np.abs(row_sums - 1.0).argmax())
        raise QualityError(f"probs row {row} sums to {row_sums[row]:.6g}, not 1")
    if not 1 <= splits <= len(probs):
        raise QualityError(f"splits must be in [1, number of images = {len(probs)}], got {splits}")
    scores = []
    for start, end in split_bounds(len(probs), splits):
        chunk = probs[start:end]  # (n, C)
        marginal = chunk.mean(axis=0, keepdims=True)  # (1, C) p(y); > 0 wherever chunk > 0
        kl = rel_entr(chunk, marginal).sum(axis=1)  # (n,) with 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clip_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """100 * max(cos(image_b, text_b), 0) for each pair b: image_embeds, text_embeds (B, D) -> (B,)."""
    image_embeds = np.asarray(image_embeds, dtype=np.float64)
    text_embeds = np.asarray(text_embeds, dtype=np.float64)
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise QualityError(
            f"image and text embeddings must both be (B, D), got {image_embeds.shape} and {text_embeds.shape}"
        )
    norms = np.linalg.norm(image_embeds, axis=1) * np.linalg.norm(text_embeds, axis=1)
    if (norms == 0).any():
        raise QualityError(f"pair {int(np.argmax(norms == 0))} has a zero embedding: no cosine")
    cosine = (image_embeds * text_embeds).sum(axis=1) / norms
    return 100.0 * np.maximum(cosine, 0.0)
