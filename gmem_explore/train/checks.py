"""What a Trainer is given, checked before anything is built or changed: training images, their conditions, each
step's loss, and the data of a state it resumes. A mistake here would otherwise train for minutes into NaN weights,
stop deep inside torch, or continue another run.

Images are uint8 pixels (N, H, W, 3), which the pixel autoencoder encodes, or float latents (N, C, h, w) already
in the model's space (autoencoder=None).
"""
from __future__ import annotations

import math

import torch

from ..bank.memory import normalize
from ..bank.checks import check_snippets


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


def training_conditions(conditions, mode: str, model, what: str = "conditions", count: int | None = None):
    """Conditions as the training module takes them, for config.condition `mode`: snippet rows L2-normalised (as the
    pipeline does, so raw and normalised rows give the same images) and finite with a direction (an all-zero row
    would train the unconditional branch under that image's name), labels as long, and for "none" placeholder
    zeros, one per item (`count` training images, else one per condition given). `count` also demands that many."""
    if mode == "none":
        return torch.zeros(count if count is not None else len(conditions), dtype=torch.long)
    if conditions is None:
        raise ValueError(f"condition={mode!r} needs {what}: one bank row (snippet) or label per training image")
    conditions = torch.as_tensor(conditions)
    if count is not None and len(conditions) != count:
        raise ValueError(f"{len(conditions)} {what} for {count} training images; give exactly one per image")
    if mode == "snippet":
        dim = model.config.snippet_dim
        if conditions.ndim != 2 or conditions.shape[1] != dim:
            raise ValueError(f"snippet {what} must be (N, {dim}); got {tuple(conditions.shape)}")
        return normalize(check_snippets(conditions, dim, what))
    if conditions.dtype.is_floating_point or conditions.ndim != 1 or int(conditions.min()) < 0:
        raise ValueError(f"label {what} must be non-negative integers (N,); got {conditions.dtype} {tuple(conditions.shape)}")
    return conditions.long()


def refuse_unknown_labels(labels, num_labels: int, what: str, mode: str) -> None:
    """The label embedding has one row per label seen in training; a larger label would fail deep inside it."""
    if mode == "label" and len(labels) and int(labels.max()) >= num_labels:
        raise ValueError(f"{what} holds label {int(labels.max())} but training saw labels 0 to {num_labels - 1} "
                         f"only; give labels of the training images")


def check_step(loss: float, grad_norm: float, loss_bad: bool, grads_bad: bool, step: int, lr: float,
               at_fault: list[str]) -> None:
    """Refuse a step whose loss or gradients are NaN or infinite (on this process: `loss`, `grad_norm`; on any:
    `loss_bad`, `grads_bad`) before the optimizer applies it, so the weights and EMA stay those of the last good
    step (save_state then still holds a usable model). `at_fault`: parameters whose gradient is not finite here."""
    if not (loss_bad or grads_bad):
        return
    kept = f"the weights were left as they were after step {step}"
    if loss_bad:
        what = f"became {loss}" if not math.isfinite(loss) else "became NaN or infinite on another process"
        raise FloatingPointError(f"the training loss {what} at step {step + 1} (lr {lr:.3g}); {kept}. Lower lr, set "
                                 f"grad_clip, or check the data")
    where = (f" in {', '.join(at_fault[:3])}" + (f" and {len(at_fault) - 3} more" if len(at_fault) > 3 else "")
             if at_fault else " on another process")
    raise FloatingPointError(f"the gradients became NaN or infinite{where} at step {step + 1} (norm {grad_norm}, "
                             f"with a finite loss {loss:.4g}; lr {lr:.3g}); {kept}. grad_clip cannot bound a NaN: "
                             f"lower lr, or look for an operation with an infinite derivative (sqrt or norm of 0, "
                             f"log of 0) in the model, the loss or a hook; p.grad still holds the bad gradients")


def non_finite_gradients(named_parameters) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or infinity (asked only once a step has failed)."""
    return [name for name, p in named_parameters if p.grad is not None and not torch.isfinite(p.grad).all()]


def describe_source(source: dict | None) -> str:
    """A Trainer's data_source as the words that made it ({"--data": "digits", "--split": "train"} -> "--data digits
    --split train"); "" when there is none."""
    return " ".join(f"{key} {value}" for key, value in source.items()) if source else ""


def check_resume_data(path, saved: dict | None, ours: dict) -> None:
    """Refuse to resume a train state on other data: `saved` and `ours` are fingerprints.training_data records (the
    state's, None in states from before the record: not checked, and this trainer's), each with the Trainer's
    data_source as "source" where one was given (gmem train: --data, --split, --init), which the refusal names."""
    if saved is None:
        return
    was, now = describe_source(saved.get("source")), describe_source(ours.get("source"))
    if saved.get("encoder") and ours.get("encoder") and saved["encoder"] != ours["encoder"]:
        named = f"; saved run: {was}; this run: {now}" if was and now else ""
        raise ValueError(f"{path} was trained on snippets from another encoder (fingerprint {saved['encoder']} "
                         f"saved, {ours['encoder']} now{named}): resuming would condition the run on other bank rows. "
                         f"Give the same --init as the saved run (gmem train), or start a new run (a new --out).")
    if (saved.get("images"), saved.get("sha256")) == (ours["images"], ours["sha256"]):
        return
    if was and now:
        changed = " (the same source, whose images have changed since)" if was == now else ""
        raise ValueError(f"{path} was trained on {saved.get('images')} images from {was}, and this run has "
                         f"{ours['images']} images from {now}{changed}: resuming would not continue that run. "
                         f"Resume with {was}, or start a new run with this data (a new --out).")
    other = "other images" if saved.get("images") == ours["images"] else f"{ours['images']} images"
    raise ValueError(f"{path} was trained on {saved.get('images')} images, and this trainer has {other} "
                     f"(fingerprint {saved.get('sha256')} saved, {ours['sha256']} now): resuming would not "
                     f"continue that run. Give the same images (gmem train: the same --data and --split), "
                     f"or start a new run (a new --out).")
