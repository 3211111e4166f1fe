"""A snippet encoder that keeps an emoji's content and drops its style, trained on pairs of renderings.

    encoder, log = train_pair_encoder(pairs.twemoji, pairs.noto, pairs.labels, len(pairs.label_names))
    cross_style_retrieval(encoder.encode(held.twemoji), encoder.encode(held.noto))   # 1.0: every pair finds itself

The network is the ConvEncoder (conv.py), so checkpoint folders load it as before. Three terms:
- contrastive (InfoNCE, both directions): the code of one style's rendering must pick the other style's rendering
  of the same emoji out of the batch. This is what puts the two renderings of an emoji together in the bank's
  space, and other emojis (skin tones included: they are other content) apart.
- group: a linear head classifies the emoji's group (the semantics, so neighbours in the bank share a group).
- reconstruction: a linear decoder predicts the MEAN of the two renderings at 16 px from either code; a target
  that both styles share, so it asks for layout and colours and nothing a single style alone has.
Both renderings get the same random shift and flip, so the pair stays aligned.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvEncoder, LinearDecoder, augment, encoder_optimizer, to_model_input

RECON_SIZE = 16


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised codes: row i of a belongs with row i of b."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_pair_encoder(style_a: torch.Tensor, style_b: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       steps: int = 1500, batch_size: int = 128, lr: float = 2e-3, image_size: int = 32,
                       dim: int = 768, contrast_weight: float = 1.0, recon_weight: float = 1.0,
                       temperature: float = 0.1, seed: int = 0, progress: bool = True,
                       log_every: int = 100, device: str = "cpu") -> tuple[ConvEncoder, list[dict]]:
    """Train a ConvEncoder (input image_size px) on paired uint8 renderings (N, S, S, 3) of the same N emojis;
    returns (frozen encoder on the CPU, log). batch_size counts pairs. AdamW, warm-up then cosine to zero."""
    if style_a.shape != style_b.shape or len(style_a) != len(labels):
        raise ValueError(f"the two styles must be paired row by row: got {tuple(style_a.shape)}, "
                         f"{tuple(style_b.shape)} and {len(labels)} labels")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xa, xb = to_model_input(style_a, image_size), to_model_input(style_b, image_size)
    labels = torch.as_tensor(labels).long()
    encoder = ConvEncoder(dim=dim, image_size=image_size).to(device)
    decoder = LinearDecoder(dim=dim, image_size=RECON_SIZE).to(device)
    classifier = nn.Linear(dim, num_classes).to(device)
    params = [*encoder.parameters(), *decoder.parameters(), *classifier.parameters()]
    opt, sched = encoder_optimizer(params, steps, lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="training pair encoder", unit="step")
    log = []
    n = min(batch_size, len(xa))
    for step in range(steps):
        idx = torch.randperm(len(xa), generator=g)[:n]  # no emoji twice in a batch: it would be its own negative
        both = augment(torch.cat([xa[idx], xb[idx]], dim=1), g)  # one shift and flip for the pair
        a, b = both[:, :3].to(device), both[:, 3:].to(device)
        z = encoder(torch.cat([a, b]))
        za, zb = z[:n], z[n:]
        contrast = info_nce(za, zb, temperature)
        ce = F.cross_entropy(classifier(z), labels[idx].repeat(2).to(device))
        target = F.adaptive_avg_pool2d(0.5 * (a + b), RECON_SIZE).repeat(2, 1, 1, 1)
        recon = F.mse_loss(decoder(z), target)
        loss = contrast_weight * contrast + ce + recon_weight * recon
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nce=f"{contrast.item():.3f}", ce=f"{ce.item():.3f}", recon=f"{recon.item():.4f}")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.append({"step": step + 1, "contrast": contrast.item(), "ce": ce.item(), "recon": recon.item()})
    if bar is not None:
        bar.close()
    return encoder.cpu().eval().requires_grad_(False), log


def cross_style_retrieval(feats_a: torch.Tensor, feats_b: torch.Tensor) -> dict:
    """How often each emoji's rendering in one style has its own rendering in the other style as nearest neighbour
    (cosine) among all renderings of the other style; both directions and their mean. Chance is 1 / N."""
    a, b = F.normalize(feats_a.float(), dim=1), F.normalize(feats_b.float(), dim=1)
    sim = a @ b.T
    own = torch.arange(len(a))
    a_to_b = (sim.argmax(1) == own).float().mean().item()
    b_to_a = (sim.argmax(0) == own).float().mean().item()
    return {"a_to_b": a_to_b, "b_to_a": b_to_a, "mean": 0.5 * (a_to_b + b_to_a), "chance": 1 / len(a), "n": len(a)}
