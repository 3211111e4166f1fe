"""Measures in a feature space: k-NN label accuracy, Frechet distance, k-NN precision / recall, nearest neighbours.

All functions take float feature matrices (N, D) (an encoder's output) and run on the CPU in float64 where it
matters (the Frechet distance's matrix square root).
"""
from __future__ import annotations

import numpy as np
import torch

from .bank import normalize


def knn_accuracy(train_features, train_labels, query_features, query_labels, k: int = 5) -> float:
    """Share of queries whose k nearest training rows (cosine) vote for the right label (majority; ties go to
    the label of the nearest among the tied ones)."""
    train = normalize(torch.as_tensor(train_features))
    query = normalize(torch.as_tensor(query_features))
    train_labels = torch.as_tensor(train_labels).long()
    query_labels = torch.as_tensor(query_labels).long()
    if not 1 <= k <= len(train):
        raise ValueError(f"k must lie in [1, {len(train)}] (the number of training rows); got {k}")
    if len(train) != len(train_labels) or len(query) != len(query_labels):
        raise ValueError("each feature row needs exactly one label")
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
    a = torch.as_tensor(features_a).double().numpy()
    b = torch.as_tensor(features_b).double().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets of the same D; got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * _sqrtm_trace(cov_a, cov_b))
    return max(value, 0.0)


def _radii(features: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(features, features)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the union of
    k-NN balls around real points; recall = share of reals inside the balls around fakes."""
    real = torch.as_tensor(real).double()
    fake = torch.as_tensor(fake).double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    r_real, r_fake = _radii(real, k), _radii(fake, k)
    d = torch.cdist(fake, real)  # (F, R)
    precision = (d <= r_real[None]).any(dim=1).double().mean().item()
    recall = (d.T <= r_fake[None]).any(dim=1).double().mean().item()
    return precision, recall


def nearest_training(query, train, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities, indices) of the k nearest training rows to each query row: memorisation checks."""
    sims = normalize(torch.as_tensor(query)) @ normalize(torch.as_tensor(train)).T
    return sims.topk(k, dim=1)
