"""Measures in a feature space: k-NN label accuracy, Frechet distance, k-NN precision / recall, nearest neighbours.

All functions take float feature matrices (N, D) (an encoder's output) and run on the CPU in float64 where it
matters (the Frechet distance's matrix square root).
"""
from __future__ import annotations


import numpy as np
import torch

from ..bank.memory import normalize
from ..values import is_whole


def features_of(x, what: str, at_least: int = 1) -> torch.Tensor:
    """A finite real (N, D) feature matrix with N >= at_least, or a ValueError naming `what` and the problem."""
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} must be an (N, D) matrix of numbers; got {type(x).__name__} ({e})") from None
    if x.ndim != 2 or x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or x.dtype.is_signed
                                                                        or x.dtype == torch.uint8):
        raise ValueError(f"{what} must be an (N, D) matrix of real numbers (one row per image); got shape "
                         f"{tuple(x.shape)} {x.dtype}" + (" (one row: use x[None])" if x.ndim == 1 else ""))
    if len(x) < at_least:
        raise ValueError(f"{what}: {len(x)} row(s) given, at least {at_least} needed (one row per image)")
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{what}: rows {bad[:10]} ({len(bad)} in all) hold NaN or infinite values: the images or the "
                         f"encoder are broken; drop those rows or encode the images again")
    return x


def same_dim(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{what_a} have {a.shape[1]} features and {what_b} {b.shape[1]}: encode both with the same "
                         f"encoder")


def check_k(k, most: int, what: str) -> int:
    """k as an int in [1, most], or a ValueError saying the range and what bounds it."""
    if not is_whole(k, 1, most):
        raise ValueError(f"k must lie in [1, {most}] ({what}) and be a whole number; got {k!r}")
    return int(k)


def labels_of(labels, n: int, what: str) -> torch.Tensor:
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be integer class numbers (a list or 1-D tensor); got {labels!r:.80}") from None
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{what} must hold one label per feature row ({n}); got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        fraction = float(labels[labels != labels.round()][0])
        raise ValueError(f"{what} must be whole class numbers; got fractions such as {fraction:g}")
    return labels.long()


def knn_accuracy(train_features, train_labels, query_features, query_labels, k: int = 5) -> float:
    """Share of queries whose k nearest training rows (cosine) vote for the right label (majority; ties go to
    the label of the nearest among the tied ones)."""
    train = features_of(train_features, "the training features")
    query = features_of(query_features, "the query features")
    same_dim(train, query, "training rows", "queries")
    k = check_k(k, len(train), "the number of training rows")
    train, query = normalize(train), normalize(query)
    train_labels = labels_of(train_labels, len(train), "train_labels")
    query_labels = labels_of(query_labels, len(query), "query_labels")
    nearest = (query @ train.T).topk(k, dim=1).indices  # (Q, k), nearest first
    votes = train_labels[nearest]
    correct = 0
    for row, truth in zip(votes.tolist(), query_labels.tolist()):
        counts = {}
        for label in row:
            counts[label] = counts.get(label, 0) + 1
        best = max(counts.values())
        winner = next(label for label in row if counts[label] == best)  # first in distance order among the tied
        correct += winner == truth
    return correct / len(query)


def _sqrtm_trace(a: np.ndarray, b: np.ndarray) -> float:
    """trace(sqrt(a b)) for symmetric PSD a, b, via sqrt(a) b sqrt(a) (symmetric, so eigh is stable)."""
    w, v = np.linalg.eigh(a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ b @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(features_a, features_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets (FID's
    formula, here in whatever feature space the features come from)."""
    a = torch.as_tensor(features_a)
    b = torch.as_tensor(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets of the same D; got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    a = features_of(a, "the first feature set").double().numpy()
    b = features_of(b, "the second feature set").double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    # atleast_2d: with one feature np.cov returns a number, and the trace below needs a matrix
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * _sqrtm_trace(cov_a, cov_b))
    return max(value, 0.0)


def _radii(features: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(features, features)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the union of
    k-NN balls around real points; recall = share of reals inside the balls around fakes."""
    real = features_of(real, "the real features").double()
    fake = features_of(fake, "the generated features").double()
    same_dim(fake, real, "generated images", "real ones")
    if not is_whole(k, 1):
        raise ValueError(f"k (the neighbourhood size) must be a whole number >= 1; got {k!r}")
    k = int(k)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    r_real, r_fake = _radii(real, k), _radii(fake, k)
    d = torch.cdist(fake, real)  # (F, R)
    precision = (d <= r_real[None]).any(dim=1).double().mean().item()
    recall = (d.T <= r_fake[None]).any(dim=1).double().mean().item()
    return precision, recall


def nearest_training(query, train, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities, indices) of the k nearest training rows to each query row: memorisation checks."""
    query, train = features_of(query, "the query features"), features_of(train, "the training features")
    same_dim(query, train, "queries", "training rows")
    k = check_k(k, len(train), "the number of training rows")
    sims = normalize(query) @ normalize(train).T
    return sims.topk(k, dim=1)
