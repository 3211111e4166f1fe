"""Trainer: the GMem objective with EMA, callbacks, atomic checkpoints, exact resume and Accelerate.

    from gmem_explore.train.trainer import Trainer, TrainConfig
    trainer = Trainer(model, images, conditions=bank_rows, config=TrainConfig(steps=2000, batch_size=64))
    trainer.on("on_step", lambda tr, ev: losses.append(ev["loss"]))          # every step
    trainer.on("on_eval", lambda tr, ev: show(ev["images"]))                   # every config.eval_every steps
    trainer.on("on_checkpoint", lambda tr, ev: print(ev["path"]))              # after each state save
    trainer.fit()                        # runs to config.steps (or trainer.fit(steps=N) for N more steps)
    trainer.save_state("run/state.safetensors"); trainer.load_state("run/state.safetensors")  # exact resume
    trainer.export("my-model", bank, encoder)   # EMA weights as a checkpoint folder GMemPipeline loads
    Trainer(..., data_source={"--data": "pics/"})  # named in the state, and when load_state refuses other images
    Trainer(..., augment=ImageAugment(shift=0.06))   # train/augment.py: each target varied, its condition kept

Inputs: `images` uint8 (N, H, W, 3) (or already-encoded latents, float (N, C, h, w), with autoencoder=None);
`conditions` what each image is conditioned on: config.condition "snippet" -> float (N, D) rows (the image's
own bank row; normalised here), "label" -> long (N,) labels (a learned embedding of the labels fills the snippet
slot: SiT-style class conditioning, for comparison), "none" -> ignored (zeros). "label" and "none" are baselines to
compare GMem with: sample them with trainer.sample(...); export() refuses them, since a checkpoint folder's user
conditions the network on bank rows.

Objective (GMem v1): x_t = (1 - t) x + t eps, target v = eps - x, loss = MSE(model(x_t, t, s), v); the snippet s is
zeroed with probability snippet_dropout (that also trains the unconditional branch for classifier-free guidance).
Optional REPA-style alignment: repa_weight x (1 - cosine) between the model's projector output (after block
encoder_depth) and the encoder's feature of the clean image (per token when the encoder has
`patch_features(images, grid)`, else its global feature broadcast to every token).

Event payloads (dicts): on_step {step, loss, mse, repa, lr, grad_norm (before clipping), images_per_s}; on_eval
{step, images (uint8), seeds, loss}; on_checkpoint {step, path}; on_end {step, steps (done in this fit call), error
(None, or the exception that stopped it: StopRequested (Ctrl-C), another KeyboardInterrupt, FloatingPointError
for a NaN or infinite loss or gradient)}, after every fit call. Callbacks get (trainer, event).

A step whose loss or gradients are NaN or infinite on any process stops the run on every process before the
optimizer applies it (FloatingPointError): the weights, EMA and optimizer stay those of the last good step.
Ctrl-C during fit stops after the step under way (StopRequested, a KeyboardInterrupt; interrupt.py), so
save_state then resumes exactly and fit() goes on from there; a second Ctrl-C stops at once.

Files: config.py (TrainConfig), checks.py (input and per-step checks), module.py (what the
optimizer trains, the Accelerator), state.py (save_state / load_state / export), interrupt.py
(Ctrl-C between steps); this file the loop.

Determinism: batches, t and noise come from the trainer's own torch.Generator; the whole global batch is drawn
and each process takes its slice, so results do not depend on the number of processes. A saved state holds the
weights, EMA, optimizer moments, step and the trainer's RNG state (dropout is seeded from it every step):
resuming gives the same weights as never stopping.

Many GPUs: `accelerate launch scripts/train_default.py ...`, `torchrun ...`, or `notebook_launcher(fn, num_processes=8)`
with fn building a Trainer; on one CPU process nothing needs a launcher (`torchrun --nproc_per_node 2` also runs
several CPU processes over gloo: tests/test_train.py checks that two train exactly like one). bf16 autocast on CUDA.
"""
from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..autoencoders import PixelSpace
from .checks import (as_training_images, check_step, data_shape_message, non_finite_gradients,
                           refuse_unknown_labels, training_conditions)
from .config import TrainConfig
from .interrupt import StopRequested, deferred_interrupt
from .module import TrainingModule, make_accelerator
from .state import TrainerState, baseline_refusal
from ..sampling import initial_noise, make_generators, sample

__all__ = ["EVENTS", "StopRequested", "TrainConfig", "Trainer", "TrainingModule", "baseline_refusal"]

EVENTS = ("on_step", "on_eval", "on_checkpoint", "on_end")


class Trainer(TrainerState):
    state_name = "state.safetensors"  # config.checkpoint_every's file in config.out_dir (gmem train's differs)

    def __init__(self, model, images, conditions=None, config: TrainConfig | None = None, autoencoder="auto",
                 encoder=None, eval_conditions=None, use_accelerate: bool | None = None, data_source: dict | None = None,
                 augment=None):
        self.config = cfg = config or TrainConfig()
        self.augment = augment  # train.augment.ImageAugment or None: varies each training target, not its condition
        self.callbacks = defaultdict(list)
        self.accelerator = make_accelerator(use_accelerate)
        self.device = self.accelerator.device if self.accelerator else torch.device("cpu")
        self.is_main = self.accelerator.is_main_process if self.accelerator else True
        self.world = self.accelerator.num_processes if self.accelerator else 1
        self.rank = self.accelerator.process_index if self.accelerator else 0
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")

        self.images = as_training_images(images)
        if autoencoder == "auto":
            autoencoder = PixelSpace(model.config.input_size) if self.images.dtype == torch.uint8 else None
        self.autoencoder = autoencoder
        if augment is not None and not isinstance(autoencoder, PixelSpace):
            raise ValueError("augment works on pixels in [-1, 1] (uint8 training images in pixel space); these are "
                             "latents: augment the images before encoding them, or leave augment out")
        self.data = autoencoder.encode(self.images).float() if autoencoder is not None else self.images.float()
        want = (model.config.in_channels, model.config.input_size, model.config.input_size)
        if tuple(self.data.shape[1:]) != want:
            raise ValueError(data_shape_message(self.data, want))
        self.conditions = training_conditions(conditions, cfg.condition, model, count=len(self.data))
        self.eval_conditions = None if eval_conditions is None else training_conditions(eval_conditions, cfg.condition, model, "eval_conditions")

        num_labels = int(self.conditions.max()) + 1 if cfg.condition == "label" else 0
        if self.eval_conditions is not None:
            refuse_unknown_labels(self.eval_conditions, num_labels, "eval_conditions", cfg.condition)
        torch.manual_seed(cfg.seed)  # the label embedding's initial values
        self.module = TrainingModule(model, num_labels)
        if cfg.repa_weight <= 0:  # unused parameters would stall DDP; they keep their values in the checkpoint
            self.module.model.projectors.requires_grad_(False)
        self.repa_targets = self._repa_targets(encoder) if cfg.repa_weight > 0 else None
        self.encoder = encoder  # its weights are part of data_fingerprint: they make the snippet conditions
        self.data_source = data_source  # where the images came from ({"--data": ..., ...}): named if a resume is refused
        self.ema = copy.deepcopy(self.module).requires_grad_(False).eval()
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema.to(self.device)
        if self.accelerator:
            self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        else:
            self.module.to(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.history: list[dict] = []
        self._interrupt, self._stop_after_step = None, False  # fit's Ctrl-C flag; set when the processes agreed

    # ---- set-up helpers ------------------------------------------------------------------------------------
    def _repa_targets(self, encoder):
        if encoder is None or self.images.dtype != torch.uint8:
            raise ValueError("repa_weight > 0 needs the snippet encoder and uint8 training images")
        grid = self.module.model.config.input_size // self.module.model.config.patch_size
        if hasattr(encoder, "patch_features"):
            return encoder.patch_features(self.images, grid).float()  # (N, tokens, D)
        return encoder.encode(self.images).float()[:, None]  # (N, 1, D), broadcast over tokens

    # ---- events ----------------------------------------------------------------------------------------------
    def on(self, event: str, fn) -> None:
        if event not in EVENTS:
            raise ValueError(f"Unknown event {event!r}; events are {EVENTS}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str, payload: dict) -> None:
        if self.is_main:
            for fn in self.callbacks[event]:
                fn(self, payload)

    # ---- the objective ------------------------------------------------------------------------------------
    @property
    def network(self):
        """The training (non-EMA) GMem network, unwrapped."""
        return self._unwrapped().model

    @property
    def ema_model(self):
        return self.ema.model

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then a half cosine to lr_final over the last `decay` steps of config.steps.
        Beyond config.steps (fit(steps=N) may go there) the rate stays at lr_final: the cosine must not climb
        back up its next period. Where warm-up and decay overlap (decay=steps: a cosine over the whole run) the
        warm-up scales the cosine: it replaced it, so such a run started at the full rate, with no warm-up."""
        cfg = self.config
        level = cfg.lr
        if cfg.decay and step >= cfg.steps - cfg.decay:
            frac = min(1.0, (step - (cfg.steps - cfg.decay)) / cfg.decay)
            level = cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
        return level * min(1.0, (step + 1) / max(cfg.warmup, 1))

    def _draw_batch(self):
        """The global batch (indices, t, noise, keep mask), then this process's slice."""
        cfg, g, n = self.config, self.generator, self.config.batch_size
        idx = torch.randint(0, len(self.data), (n,), generator=g)
        if cfg.time_sampling == "logit-normal":
            t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=g))
        else:
            t = torch.rand(n, generator=g)
        noise = torch.randn((n, *self.data.shape[1:]), generator=g)
        keep = (torch.rand(n, generator=g) >= cfg.snippet_dropout).float()
        part = self._my_part(n)
        if self.augment is None:
            return idx[part], t[part], noise[part], keep[part]
        return idx[part], t[part], noise[part], keep[part], self.augment.draw(n, g)[part]

    def _my_part(self, n: int) -> slice:
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def _condition_dropout_mask(self, projection):
        """The condition dropout's mask (v1: after the snippet projection, v2: on the snippet before it; the width is
        the projection's mask_features), drawn for the global batch on this process's device (what nn.Dropout draws
        for the whole batch, bit for bit on the CPU), this process's rows; None without dropout."""
        p, n = projection.dropout.p, self.config.batch_size
        if not p:
            return None
        mask = torch.empty(n, projection.mask_features, device=self.device).bernoulli_(1 - p).div_(1 - p)
        return mask[self._my_part(n)]

    def loss_on(self, idx, t, noise, keep, augment_params=None):
        cfg = self.config
        x = self.data[idx].to(self.device)
        if augment_params is not None:
            x = self.augment(x, augment_params.to(self.device))
        noise, t, keep = noise.to(self.device), t.to(self.device), keep.to(self.device)
        cond = self.conditions[idx].to(self.device)
        t4 = t[:, None, None, None]
        x_t = (1 - t4) * x + t4 * noise
        v, proj = self.module(x_t, t, cond, cfg.condition, keep, want_projection=cfg.repa_weight > 0)
        mse = F.mse_loss(v.float(), noise - x)
        repa = torch.zeros((), device=self.device)
        if proj is not None:
            target = self.repa_targets[idx].to(self.device)
            repa = 1 - F.cosine_similarity(proj.float(), target.expand(-1, proj.shape[1], -1), dim=-1).mean()
        return mse + cfg.repa_weight * repa, mse, repa

    @torch.no_grad()
    def _update_ema(self):
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        source = dict(self._unwrapped().named_parameters())
        for name, p in self.ema.named_parameters():
            p.lerp_(source[name].detach().to(p.dtype), 1 - decay)

    def train_step(self) -> dict:
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.module.train()
        batch = self._draw_batch()
        # The condition dropout's mask comes from torch's global RNG, seeded from our generator inside a fork: a step
        # depends only on the trainer's state (exact resume), the caller's RNG is left untouched, and every process
        # draws the same global mask and takes its rows (any number of processes trains like one).
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(dropout_seed)
            projection = self.network.condition_projection
            projection.mask = self._condition_dropout_mask(projection)
            try:
                loss, mse, repa = self.loss_on(*batch)
            finally:
                projection.mask = None
            self.optimizer.zero_grad(set_to_none=True)
            if self.accelerator:
                self.accelerator.backward(loss)
            else:
                loss.backward()
            grad_norm = self._gradient_norm()
        self._agree_on_step(loss, grad_norm, lr)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return {"step": self.step, "loss": loss.item(), "mse": mse.item(), "repa": repa.item(), "lr": lr,
                "grad_norm": float(grad_norm)}

    def _gradient_norm(self) -> torch.Tensor:
        """The gradients' total L2 norm, then clipping to config.grad_clip when set: torch's clip_grad_norm_ written
        out (same formula, coefficient min(1, clip / (norm + 1e-6))) so that a non-finite norm is seen before the
        clip multiplies every gradient by NaN, and the parameters at fault can still be named. Under Accelerate the
        gradients are already averaged over processes, and no loss scaler is used (bf16 or fp32), so there is
        nothing to unscale."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
        clip = self.config.grad_clip
        if clip:  # a non-finite norm leaves the gradients as they are (no host sync here): the step stops below
            coefficient = torch.where(torch.isfinite(norm), torch.clamp(clip / (norm + 1e-6), max=1.0), 1.0)
            for g in grads:
                g.detach().mul_(coefficient.to(g.device))
        return norm

    def _agree_on_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Every process stops when any process's loss or gradient norm is NaN or infinite, before the optimizer
        applies the step (a finite loss can still give NaN gradients: sqrt or norm at 0, an overflow in backward),
        and every process stops after this step when Ctrl-C reached any (interrupt.py). One stopping alone would
        leave the others waiting in the next gradient all-reduce for ever, so the three flags are reduced across
        processes in one call per step (the step's loss.item() synchronises anyway)."""
        asked = self._interrupt is not None and self._interrupt.requested
        flags = torch.stack([~torch.isfinite(loss.detach()), ~torch.isfinite(grad_norm.to(loss.device)),
                             torch.tensor(asked, device=loss.device)]).float()
        if self.world > 1:
            flags = self.accelerator.reduce(flags, reduction="max")
        loss_bad, grads_bad, self._stop_after_step = (bool(f) for f in flags.tolist())
        if loss_bad or grads_bad:  # the gradients stay in place (p.grad) for a closer look
            named = ((name.removeprefix("model."), p) for name, p in self._unwrapped().named_parameters())
            check_step(float(loss.detach()), float(grad_norm), loss_bad, grads_bad, self.step, lr,
                       non_finite_gradients(named))

    def fit(self, steps: int | None = None) -> list[dict]:
        """Train until config.steps (or for `steps` more steps); returns the per-step history of this call."""
        cfg = self.config
        stop = cfg.steps if steps is None else self.step + steps
        bar = None
        if cfg.progress and self.is_main and stop > self.step:
            from tqdm.auto import tqdm
            bar = tqdm(total=stop, initial=self.step, desc="training", unit="step")
        done, start, error = [], time.perf_counter(), None
        try:
            with deferred_interrupt(announce=self.is_main) as self._interrupt:
                self._run_until(stop, bar, done)
        except BaseException as e:  # KeyboardInterrupt too: on_end says the run stopped, then it propagates
            error = e
            raise
        finally:
            self._interrupt, self._stop_after_step = None, False
            if bar is not None:
                bar.close()
            if self.is_main and done:
                self.elapsed = time.perf_counter() - start
            self._fire("on_end", {"step": self.step, "steps": len(done), "error": error})
        return done

    def _run_until(self, stop: int, bar, done: list) -> None:
        cfg = self.config
        while self.step < stop:
            tick = time.perf_counter()
            event = self.train_step()
            event["images_per_s"] = cfg.batch_size / max(time.perf_counter() - tick, 1e-9)
            self.history.append(event)
            done.append(event)
            if bar is not None:  # the loss rides on the update, which redraws at tqdm's own rate (mininterval 0.1 s):
                # set_postfix's default refresh redrew every step (a notebook widget message per step)
                bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
                bar.update(1)
            self._fire("on_step", event)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.checkpoint_every and cfg.out_dir and self.step % cfg.checkpoint_every == 0:
                self.save_state(Path(cfg.out_dir) / self.state_name)  # on every process: it waits for all
            if self._stop_after_step:  # Ctrl-C, agreed by every process in this step's flags
                raise StopRequested(f"stopped by Ctrl-C after step {self.step}")

    # ---- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int | None = None, seeds=None, conditions=None, steps: int | None = None, method="euler",
               use_ema: bool = True):
        """uint8 images (pixel space) or latents from the EMA model, one per condition given (snippet rows, which
        are L2-normalised here as in training, or labels), else conditioned on the first n eval conditions (or
        training conditions); n defaults to the number of conditions or seeds given, else config.eval_images.
        Fixed seeds (0 to n - 1 unless given) so successive evaluations are comparable."""

        cfg = self.config
        module = self.ema if use_ema else self._unwrapped()
        if conditions is not None:
            conditions = training_conditions(conditions, cfg.condition, module.model, "conditions given to sample")
            num_labels = module.label_embedding.num_embeddings if module.label_embedding is not None else 0
            refuse_unknown_labels(conditions, num_labels, "conditions given to sample", cfg.condition)
        seeds = None if seeds is None else list(seeds)  # a range or generator is read once
        n = self._sample_count(n, seeds, conditions)
        seeds = list(range(n)) if seeds is None else seeds
        if conditions is None:
            source = self.eval_conditions if self.eval_conditions is not None else self.conditions
            conditions = source[torch.arange(n) % len(source)]
        module.eval()
        snippets = module.snippets_for(conditions.to(self.device), cfg.condition)
        gens = make_generators(seeds, self.device)
        noise = initial_noise(gens, tuple(self.data.shape[1:]), self.device)
        out = sample(module.model, noise, snippets.float(), method=method, steps=steps or cfg.eval_steps, generators=gens)
        return self.autoencoder.decode(out) if self.autoencoder is not None else out

    def _sample_count(self, n, seeds, conditions) -> int:
        """How many images sample() makes: n, else one per condition or seed given, else config.eval_images; the
        counts given must agree (each image needs one seed and one condition)."""
        if n is not None and n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        given = {"n": n, "seeds": None if seeds is None else len(seeds),
                 "conditions": None if conditions is None else len(conditions)}
        counts = {what: k for what, k in given.items() if k is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"sample() got different numbers of images: {counts}; give matching counts, or leave "
                             f"n out (it defaults to the number of conditions or seeds)")
        return next(iter(counts.values()), self.config.eval_images)

    def evaluate(self) -> dict:
        event = {"step": self.step, "images": self.sample(), "seeds": list(range(self.config.eval_images)),
                 "loss": self.history[-1]["loss"] if self.history else None}
        self._fire("on_eval", event)
        return event
