"""What a Trainer is given, checked once before anything is built: training images, their conditions, and each
step's loss. A mistake here would otherwise train for minutes into NaN weights or stop deep inside torch.

Images are uint8 pixels (N, H, W, 3), which the pixel autoencoder encodes, or float latents (N, C, h, w) already
in the model's space (autoencoder=None).
"""
from __future__ import annotations

import math

import torch

from .bank_checks import check_snippets


def as_training_images(images) -> torch.Tensor:
    """One tensor of at least one image: a tensor or array as it is, a list of equal-shaped images stacked."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no training images (an empty list): give at least one image")
        try:
            images = torch.stack([torch.as_tensor(x) for x in images])
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"training images given as a list must be tensors or arrays of one shape, uint8 "
                             f"(H, W, 3) each ({e}); for a folder use gmem_explore.data.load_folder") from None
    try:
        images = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"training images must be a tensor or array: uint8 (N, H, W, 3) pixels or float (N, C, h, w) "
                        f"latents; got {type(images).__name__}") from None
    if images.ndim != 4 or not len(images):
        raise ValueError(f"training images must be a non-empty batch: uint8 (N, H, W, 3) pixels or float (N, C, h, w) "
                         f"latents; got shape {tuple(images.shape)}")
    if images.is_floating_point() and not torch.isfinite(images).all():
        bad = (~torch.isfinite(images.flatten(1))).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"training items {bad[:10]} hold NaN or infinite values: every step that drew them would "
                         f"make the weights NaN; remove or re-encode them")
    return images


def data_shape_message(data: torch.Tensor, want: tuple[int, int, int]) -> str:
    """Why the encoded data does not fit the model, with the likely fix."""
    got = tuple(data.shape[1:])
    message = f"training data has shape {got} per item; the model expects {want}"
    if data.is_floating_point() and got[-1] == 3 and got[0] == got[1]:  # float pixels, channels last
        message += (". Float data is taken as latents (N, C, h, w); give pixel images as uint8 (N, H, W, 3), e.g. "
                    "(x * 255).round().to(torch.uint8) for values in [0, 1]")
    elif got == (want[1], want[2], want[0]):
        message += ": channels last; use x.permute(0, 3, 1, 2)"
    elif len(got) == 3 and got[-1] == 3:
        message += f": images of {got[0]}x{got[1]} px; resize them to the model's size or build a model for theirs"
    return message


def check_snippet_conditions(conditions: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """Snippet rows the network can be conditioned on: (N, dim), finite and with a direction (an all-zero row
    would train the unconditional branch under that image's name)."""
    if conditions.ndim != 2 or conditions.shape[1] != dim:
        raise ValueError(f"snippet {what} must be (N, {dim}); got {tuple(conditions.shape)}")
    return check_snippets(conditions, dim, what)


def check_loss(loss: torch.Tensor, step: int, lr: float) -> None:
    """Refuse a non-finite loss before the optimizer applies it, so the weights and EMA stay those of the last good
    step (save_state then still holds a usable model)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss became {value} at step {step + 1} (lr {lr:.3g}); the weights were "
                                 f"left as they were after step {step}. Lower lr, set grad_clip, or check the data")
