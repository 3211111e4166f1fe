"""How good are generated images? Measured against real ones in a snippet encoder's feature space (`gmem evaluate`).

    from gmem_explore.evaluation.compare import compare
    report = compare(encoder.encode(samples), encoder.encode(real_images))
    report["fd"], report["fd_floor"], report["precision"], report["recall"], report["near_copies"]

The measures (see metrics.py for the formulas):
- fd: Frechet distance between all samples and all references, FID's formula in this encoder's space (gmem-v1-xl's
  is DINOv2-B/14; Stein et al. 2023's FD_DINOv2 uses ViT-L/14, so the figures differ). FD is biased upwards by
  small sets, on both sides (roughly in proportion to 1/samples + 1/references), so a reference figure means
  something only at the same set sizes. Hence
- fd_copies: the FD of as many reference images as samples, drawn at random (with repeats), against all of the
  references, the sizes of fd: what a generator that only returns the references unchanged would score. A GMem
  model conditioned on its own training images' bank rows is meant to come close to those images, so its FD sits
  near fd_copies.
- fd_floor and fd_split: the references are split at random into m = min(samples, references // 2) images and
  the other references - m; fd_floor is the FD of those m real images against the others (what new real images
  score), fd_split the FD of m samples (all of them when m = samples) against the same others. The two share
  their sizes and their reference set, so they compare directly; fd does not (for emoji-32's 1,000 samples, 848
  against 849 images beside 1,000 against 1,697: about 1.5x the bias).
  Images from unseen snippets or a held-out --split compare with fd_floor.
  Each of the three is the mean over DRAWS random draws (splits), with its standard deviation across them
  (*_std): at a few hundred images one draw moves by a quarter or more.
- precision / recall (k = 3): the share of samples that look real, the share of the real set the samples cover.
- nearest_cosine_median, near_copies: how close each sample is to its nearest real image (cosine); near_copies is
  the share at cosine >= NEAR_COPY_COSINE, a check for memorised training images.
Precision / recall compare every sample with every reference, so both sets are subsampled (seeded) to
PR_MAX_ROWS each (5,000 x 5,000 distances in float64: 0.2 GB per matrix; 50,000 x 50,000 would need 20 GB), and
nearest neighbours are found a chunk of samples at a time.
"""
from __future__ import annotations


import torch

from .metrics import features_of, frechet_distance, nearest_training, precision_recall, same_dim
from ..values import is_whole
from ..images import as_uint8_batch

# emoji-32's encoder: samples from training rows lie at median cosine 0.996 to a training emoji, samples from
# unseen emojis' snippets at 0.86 on average to their source (quality.md); 0.95 separates the two
NEAR_COPY_COSINE = 0.95
PR_MAX_ROWS = 5_000
NEAREST_CHUNK = 4096  # samples per similarity block: 4096 x 50,000 float32 = 0.8 GB
PR_K = 3
DRAWS = 5  # random draws averaged for fd_copies, fd_floor and fd_split


def nearest_real(sample_features, reference_features) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, index) of each sample's nearest reference, a chunk of samples at a time."""
    found = [nearest_training(chunk, reference_features, k=1) for chunk in torch.as_tensor(sample_features).split(NEAREST_CHUNK)]
    return torch.cat([c[:, 0] for c, _ in found]), torch.cat([i[:, 0] for _, i in found])


def _random_rows(count: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(count, generator=generator)[:keep]


def _mean(values) -> float:
    return float(sum(values) / len(values))


def _std(values) -> float:
    return float(torch.tensor(values, dtype=torch.float64).std(unbiased=True)) if len(values) > 1 else 0.0


def check_features(features, what: str) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"{what} must be float features (N, D); got {tuple(features.shape)} {features.dtype}")
    if len(features) <= PR_K:
        raise ValueError(f"{what}: {len(features)} images are too few to compare; give at least {PR_K + 1} "
                         f"(FD and precision / recall need a few hundred to mean much)")
    if not torch.isfinite(features).all():
        raise ValueError(f"{what} hold NaN or infinite features: the images or the encoder are broken")
    return features.float()


def compare(sample_features, reference_features, seed: int = 0) -> dict:
    """The measures above for two feature sets (N, D) of the same encoder; plain floats and counts, for JSON."""
    samples = check_features(sample_features, "the samples")
    reals = check_features(reference_features, "the reference images")
    if samples.shape[1] != reals.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} features and references {reals.shape[1]}: encode both "
                         f"with the same encoder")
    if not is_whole(seed):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    g = torch.Generator().manual_seed(int(seed))
    floor_size = min(len(samples), len(reals) // 2)  # >= 2: check_features asks for 4 references or more
    copies, floor, split = [], [], []
    for _ in range(DRAWS):
        copies.append(frechet_distance(reals[torch.randint(len(reals), (len(samples),), generator=g)], reals))
        perm = torch.randperm(len(reals), generator=g)
        held, rest = reals[perm[:floor_size]], reals[perm[floor_size:]]
        floor.append(frechet_distance(held, rest))
        split.append(frechet_distance(samples[_random_rows(len(samples), floor_size, g)], rest))
    pr_samples = samples[_random_rows(len(samples), PR_MAX_ROWS, g)]
    pr_reals = reals[_random_rows(len(reals), PR_MAX_ROWS, g)]
    precision, recall = precision_recall(pr_reals, pr_samples, k=PR_K)
    cosine, _ = nearest_real(samples, reals)
    return {"samples": len(samples), "references": len(reals), "feature_dim": samples.shape[1],
            "fd": frechet_distance(samples, reals), "fd_copies": _mean(copies), "fd_copies_std": _std(copies),
            "fd_split": _mean(split), "fd_split_std": _std(split), "fd_floor": _mean(floor), "fd_floor_std": _std(floor),
            "fd_floor_size": floor_size, "fd_split_references": len(reals) - floor_size, "fd_draws": DRAWS,
            "precision": precision, "recall": recall, "pr_k": PR_K, "pr_rows": [len(pr_samples), len(pr_reals)],
            "nearest_cosine_median": cosine.median().item(), "near_copies": (cosine >= NEAR_COPY_COSINE).float().mean().item(),
            "near_copy_cosine": NEAR_COPY_COSINE}


def nearest_pairs(sample_images, reference_images, sample_features, reference_features, count: int = 16,
                  seed: int = 0) -> torch.Tensor:
    """uint8 (min(count, samples), H, 2W + 2, 3): `count` samples picked at random (seeded), each beside its nearest
    reference image (a 2-pixel white gap between them; references of another size resized to the samples'), ordered
    from the closest pair down: what the samples look like and how near the real images they come."""
    if not is_whole(count, 1):
        raise ValueError(f"count (how many pairs) must be a whole number >= 1; got {count!r}")
    if not is_whole(seed):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    sample_features = features_of(sample_features, "the sample features")
    reference_features = features_of(reference_features, "the reference features")
    same_dim(sample_features, reference_features, "samples", "references")
    for images, features, what in ((sample_images, sample_features, "sample"),
                                   (reference_images, reference_features, "reference")):
        shape = tuple(getattr(images, "shape", ()))
        if len(shape) != 4 or shape[-1] != 3 or str(getattr(images, "dtype", "")).split(".")[-1] != "uint8":
            kind = getattr(images, "dtype", type(images).__name__)
            raise ValueError(f"the {what} images must be uint8 (N, H, W, 3); got {shape} {kind}")
        if shape[0] != len(features):
            raise ValueError(f"{shape[0]} {what} images but {len(features)} {what} feature rows: give the features of "
                             f"exactly these images, in the same order")
    cosine, nearest = nearest_real(sample_features, reference_features)
    picks = _random_rows(len(cosine), int(count), torch.Generator().manual_seed(int(seed)))
    picks = picks[cosine[picks].argsort(descending=True)]
    samples = torch.as_tensor(sample_images)[picks]
    reals = torch.as_tensor(reference_images)[nearest[picks]]
    if reals.shape[1:3] != samples.shape[1:3]:
        reals = as_uint8_batch([r.numpy() for r in reals], samples.shape[1])
    gap = torch.full((len(picks), samples.shape[1], 2, 3), 255, dtype=torch.uint8)
    return torch.cat([samples, gap, reals], dim=2)


def summary(report: dict) -> str:
    """The report as the lines a terminal shows."""
    few = min(report["fd_floor_size"], report["fd_split_references"])
    note = [f"(FD with {few} images a set and {report['feature_dim']} features is mostly estimation bias: compare it "
            f"only with figures of the same sizes)"] if few < report["feature_dim"] else []
    return "\n".join([
        f"samples {report['samples']}, reference images {report['references']} ({report['feature_dim']} features each)",
        f"FD                  {report['fd']:.4f}   (all samples vs all references; the references copied: "
        f"{report['fd_copies']:.4f} +- {report['fd_copies_std']:.4f})",
        f"FD at split sizes   {report['fd_split']:.4f} +- {report['fd_split_std']:.4f}   (new real images: "
        f"{report['fd_floor']:.4f} +- {report['fd_floor_std']:.4f}; {report['fd_floor_size']} images vs the other "
        f"{report['fd_split_references']} references, sd over {report['fd_draws']} draws)",
        f"precision / recall  {report['precision']:.3f} / {report['recall']:.3f}   (k = {report['pr_k']})",
        f"nearest real image  median cosine {report['nearest_cosine_median']:.3f}; near copies (>= "
        f"{report['near_copy_cosine']}): {100 * report['near_copies']:.1f}%",
        *note,
    ])
