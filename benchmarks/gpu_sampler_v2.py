"""GMem v2's sampler as upstream released it against our fast path, on one GPU (issue 20, deliverable 6):
LightningDiT-XL/1 with random weights at 256 px (latents 32x16x16), the 99-evaluation stochastic Heun recipe.

    python benchmarks/gpu_sampler_v2.py --out benchmarks/results   # about 3-4 minutes on one H100, compiles included
    python benchmarks/gpu_sampler_v2.py --smoke --out /tmp/x       # a tiny LightningDiT on the CPU, seconds

In one run, on the same random weights (a network's speed does not depend on its values) and the same seeds:
(a) upstream's sampler as released, written here from its algorithm (transport/ sample_sde: stochastic Heun, linear
    diffusion, the "Mean" last step of 0.004; LightningDiT.forward_with_cfg), in upstream's time (0 noise) on
    LightningDiT.forward_upstream: eager fp32 with TF32 matmuls, float32 state, two network calls per evaluation
    (the drift's and the score's, on the same input), and with guidance the doubled batch on every call (combined
    only where upstream's t >= 0.89). Timed over --baseline-heun-steps Heun steps at --batch and scaled to the 99
    evaluations (its cost per evaluation is constant: same network, same batch). Upstream's module also decorates its
    block forward with @torch.compile; the issue's baseline is the eager one.
(b) the fast path (sample(fast=True): bf16, compiled blocks, modulation precomputed, float32 state, the guidance's
    unconditional half only on guided steps) at --batch, warm (compiled by a short run first): images/s unguided
    (target >= 20) and with guidance 7.75 on t <= 0.11 (target >= 18);
(c) 4 images end to end (seeds -> noise -> 99 evaluations, CUDA graphs), cold and warm (target <= 0.6 s warm).
Checks: bf16 against the fast path in fp32 (TF32 off, eager) on seeds 0..3, unguided and guided (target <= 2%
relative L2 of the final latents; on random weights, so likely below a trained model's: FP8 measured 0.92% on random
weights and 7.9% on a trained one, benchmarks/README.md); that fp32 run against upstream's algorithm in strict fp32
(1e-4: the samplers are the same); seeds 0..3 alone against the same seeds inside the --batch run (batch independence;
cuBLAS picks kernels by shape); host synchronisations in a warm live run (10 and 20 steps: equal counts mean none
inside the loop).
Results: <out>/gpu_sampler_v2_<card>.json and .md, rewritten after every section (a timeout keeps what was done).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "inductor"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_sampler import Sections, card_name, randomize, relative_l2, tf32  # noqa: E402
from gmem_explore.models import build_model  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402
from gmem_explore.sampling import RECIPES, FastOptions, draw_sde_noise, initial_noise  # noqa: E402
from gmem_explore.sampling import make_generators, sample  # noqa: E402

RECIPE, GUIDED = RECIPES["gmem-v2"], RECIPES["gmem-v2-cfg"]  # sde-heun, 50 time points; + guidance 7.75 on t <= 0.11
TARGETS = {"b_fast": ("images_per_s", ">=", 20.0), "b_fast_guided": ("images_per_s", ">=", 18.0),
           "c_live": ("seconds", "<=", 0.6)}
SAME_IMAGES = 0.02  # bf16 within 2% relative L2 of fp32
ERROR_SEEDS = 4


def upstream_sample(model, noise, snippets, noises, num_steps, cfg_scale=1.0, cfg_interval_start=0.89,
                    last_step_size=0.004, heun_steps=None, calls=None):
    """transport.Sampler.sample_sde (Heun, linear diffusion, last step "Mean") as released, in upstream's time s
    (0 noise, 1 data) on model.forward_upstream; noises[:, i] is step i's standard normal draw per image (our
    sde-heun's draws, so both samplers see the same noise). heun_steps: stop after that many Heun steps (timing).
    calls: a list that gets the rows of every network call."""
    grid = torch.linspace(0.0, 1.0 - last_step_size, num_steps, dtype=torch.float64).tolist()
    dt = grid[1] - grid[0]
    zeros, n = torch.zeros_like(snippets), noise.shape[0]

    def velocity(x, s):  # forward_with_cfg: the doubled batch on every call, combined only from cfg_interval_start
        if cfg_scale == 1.0:
            out = model.forward_upstream(x, torch.full((n,), s, device=x.device), snippets)
        else:
            both = model.forward_upstream(torch.cat([x, x]), torch.full((2 * n,), s, device=x.device),
                                          torch.cat([snippets, zeros]))
            cond, uncond = both.chunk(2)
            out = uncond + cfg_scale * (cond - uncond) if s >= cfg_interval_start else cond
        if calls is not None:
            calls.append(n if cfg_scale == 1.0 else 2 * n)
        return out

    def drift(x, s):  # get_drift and get_score each call the model: velocity + g * score with g = 1 - s
        v, v_for_score = velocity(x, s), velocity(x, s)
        return v + (1 - s) * (-(x - s * v_for_score) / (1 - s))

    x = noise.float()
    for i, s in enumerate(grid[:-1][:heun_steps]):
        x_hat = x + (2 * (1 - s)) ** 0.5 * noises[:, i].float() * dt ** 0.5
        k1 = drift(x_hat, s)
        x_pred = x_hat + dt * k1
        x = x_hat + 0.5 * dt * (k1 + drift(x_pred, s + dt))
    if heun_steps is not None:
        return x
    return x + drift(x, grid[-1]) * last_step_size


class Bench(Sections):
    def __init__(self, args):
        self.args, self.smoke = args, args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.cuda = self.device.type == "cuda"
        if self.smoke:
            sizes = dict(backbone="lightningdit", input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2,
                         num_heads=4, snippet_dim=16, projector_dim=32, repa_dim=16)
            self.card, name = "cpu-smoke", "tiny LightningDiT (smoke)"
        else:
            sizes, self.card, name = dict(backbone="lightningdit"), card_name(), "LightningDiT-XL/1"
        with torch.device(self.device):
            model = build_model("LightningDiT-XL/1" if not self.smoke else None, **sizes)
        self.model = randomize(model).eval().requires_grad_(False)
        c = self.model.config
        self.shape = (c.in_channels, c.input_size, c.input_size)
        # on the CPU the fast path defaults to fp32: ask for bf16 there, so the smoke run checks what a GPU runs
        self.fast = FastOptions(precision="bf16") if self.smoke else True
        self.results = {"card": self.card, "torch": torch.__version__, "model": name, "latent": list(self.shape),
                        "recipe": {"method": RECIPE.method, "steps": args.steps, "evaluations": 2 * args.steps - 1},
                        "guided_recipe": {"guidance": GUIDED.guidance, "interval": list(GUIDED.guidance_interval)},
                        "runs": {}, "checks": {}, "errors": {}}
        self.latents, self.fast_run = {}, None

    # ---- helpers -------------------------------------------------------------------------------------------
    def inputs(self, n):
        """Seeds 0..n-1: generators, the initial noise (their first draw) and unit snippets (fixed seed)."""
        gens = make_generators(range(n), self.device)
        noise = initial_noise(gens, self.shape, self.device)
        g = torch.Generator(device=self.device).manual_seed(1234)
        snippets = torch.randn(n, self.model.config.snippet_dim, device=self.device, generator=g)
        return noise, snippets / snippets.norm(dim=1, keepdim=True), gens

    def ours(self, n, guided=False, steps=None, mode=None, interval=None):
        noise, snippets, gens = self.inputs(n)
        settings = GUIDED if guided else RECIPE
        return sample(self.model, noise, snippets, RECIPE.method, steps or self.args.steps, gens, settings.guidance,
                      interval or settings.guidance_interval, fast=self.fast if mode is None else mode,
                      fast_report=self.keep)

    def keep(self, record):
        self.fast_run = record

    def upstream(self, n, guided=False, heun_steps=None, calls=None):
        noise, snippets, gens = self.inputs(n)
        noises = draw_sde_noise(gens, n, self.args.steps, self.shape, self.device)
        return upstream_sample(self.model, noise, snippets, noises, self.args.steps,
                               GUIDED.guidance if guided else 1.0, 1.0 - GUIDED.guidance_interval[1],
                               heun_steps=heun_steps, calls=calls)

    def record(self, name, n, seconds, peak, **extra):
        row = {"batch": n, "seconds": round(seconds, 4), "images_per_s": round(n / seconds, 3),
               "peak_mem_gib": round(peak, 2), **extra}
        base = self.results["runs"].get("a_upstream_guided" if "guided" in name else "a_upstream")
        if base and name.startswith("b_"):
            row["speedup_vs_a"] = round(row["images_per_s"] / base["images_per_s"], 2)
        if name in TARGETS:
            key, op, value = TARGETS[name]
            row["target"] = f"{key} {op} {value}"
            row["meets_target"] = row[key] >= value if op == ">=" else row[key] <= value
        self.results["runs"][name] = row
        print(f"{name:20s} batch {n:4d}: {row['images_per_s']:8.3f} images/s  {seconds:8.3f} s  peak {peak:6.2f} GiB  "
              f"{row.get('target', '')} {row.get('meets_target', '')}", flush=True)
        self.save()

    # ---- sections ------------------------------------------------------------------------------------------
    def baseline(self, guided):
        """(a): k Heun steps (4k network calls) timed and scaled to the recipe's 2 x steps - 1 evaluations."""
        def go():
            n, k = self.args.batch, self.args.baseline_heun_steps
            with tf32(True):
                self.upstream(2, guided, heun_steps=1)  # cuBLAS and allocator warm-up
                calls = []
                _, seconds, peak = self.timed(lambda: self.upstream(n, guided, heun_steps=k, calls=calls))
            evaluations = 2 * self.args.steps - 1
            self.record("a_upstream" + ("_guided" if guided else ""), n, seconds / (2 * k) * evaluations, peak,
                        timed_heun_steps=k, timed_seconds=round(seconds, 3), network_calls_per_image=2 * evaluations,
                        rows_per_call=calls[0], note="eager fp32+TF32, 2 calls per evaluation, scaled from timed steps")
        return go

    def fast_batch(self, guided):
        """(b): compile with a 3-point run (guided steps too when guided: the doubled block), then time the recipe."""
        def go():
            n = self.args.batch
            # 3 points: t = 1 and 0.502 unguided, 0.004 guided with (0, 0.5): every step kind, guided or not
            _, warm, _ = self.timed(lambda: self.ours(n, guided, steps=3, interval=(0.0, 0.5) if guided else None))
            latents, seconds, peak = self.timed(lambda: self.ours(n, guided))
            self.latents["b_fast_guided" if guided else "b_fast"] = latents[:ERROR_SEEDS].float().cpu()
            self.record("b_fast" + ("_guided" if guided else ""), n, seconds, peak, warmup_seconds=round(warm, 1),
                        evaluations=self.fast_run.evaluations, fast=self.fast_run.as_dict())
        return go

    def live(self):
        n = self.args.live_batch
        _, cold, _ = self.timed(lambda: self.ours(n))
        latents, seconds, peak = self.timed(lambda: self.ours(n))
        self.latents["c_live"] = latents[:ERROR_SEEDS].float().cpu()
        self.record("c_live", n, seconds, peak, cold_seconds=round(cold, 2), fast=self.fast_run.as_dict(),
                    end_to_end=f"seeds -> noise -> SDE noise -> modulation -> {2 * self.args.steps - 1} evaluations")

    def precision_checks(self):
        """bf16 (the batch runs' rows for seeds 0..3) against the fast path in fp32 with TF32 off, eager; that fp32
        run against upstream's algorithm in strict fp32; seeds 0..3 alone (live) against inside the batch run."""
        exact = FastOptions(precision="fp32", compile=False, cuda_graphs=False)
        checks = self.results["checks"]
        with tf32(False):
            fp32 = {g: self.ours(ERROR_SEEDS, g, mode=exact).float().cpu() for g in (False, True)}
            strict = self.upstream(ERROR_SEEDS).float().cpu()
        bf16 = {}
        for guided, name in ((False, "b_fast"), (True, "b_fast_guided")):
            if name not in self.latents:  # that section did not run: the same seeds at batch 4
                self.latents[name] = self.ours(ERROR_SEEDS, guided)[:ERROR_SEEDS].float().cpu()
            rel = relative_l2(self.latents[name], fp32[guided])
            bf16["guided" if guided else "unguided"] = {"max": max(rel), "mean": sum(rel) / len(rel), "per_image": rel}
        worst = max(r["max"] for r in bf16.values())
        bf16["target"], bf16["meets_target"] = f"max <= {SAME_IMAGES}", worst <= SAME_IMAGES
        checks["bf16_vs_fp32"] = bf16
        rel = relative_l2(fp32[False], strict)
        checks["fp32_fast_vs_upstream_algorithm"] = {"max": max(rel), "per_image": rel}
        if "c_live" in self.latents:
            rel = relative_l2(self.latents["c_live"], self.latents["b_fast"])
            checks["batch_independence"] = {"batch_sizes": [self.args.live_batch, self.args.batch],
                                            "max_rel_l2": max(rel)}
        print(f"bf16 vs fp32: unguided {bf16['unguided']['max']:.2e}, guided {bf16['guided']['max']:.2e}; fp32 fast vs "
              f"upstream's algorithm {checks['fp32_fast_vs_upstream_algorithm']['max']:.2e}; batch independence "
              f"{checks.get('batch_independence', {}).get('max_rel_l2')}", flush=True)

    def host_syncs(self):
        counts = {}
        for steps in (10, 20):
            self.ours(self.args.live_batch, steps=steps)  # warm
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    self.ours(self.args.live_batch, steps=steps)
                    self.sync()
                finally:
                    if self.cuda:
                        torch.cuda.set_sync_debug_mode("default")
            counts[steps] = sum("synchroniz" in str(w.message).lower() for w in caught)
        self.results["checks"]["host_syncs_warm_live"] = counts
        print(f"host syncs in a warm live run, 10 / 20 steps: {counts[10]} / {counts[20]}", flush=True)

    def save(self):
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / f"gpu_sampler_v2_{self.card}.json", json.dumps(self.results, indent=2).encode())
        write_bytes_atomic(out / f"gpu_sampler_v2_{self.card}.md", markdown(self.results).encode())


def markdown(r: dict) -> str:
    recipe = r["recipe"]
    lines = [f"# GMem v2 sampler speed on {r['card']} ({r['model']}, latents {'x'.join(map(str, r['latent']))}, "
             f"{recipe['method']} {recipe['steps']} points = {recipe['evaluations']} evaluations, torch {r['torch']})",
             "", "| run | batch | images/s | seconds | x (a) | peak GiB | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in r["runs"].items():
        lines.append(f"| {name} | {row['batch']} | {row['images_per_s']:.3f} | {row['seconds']:.3f} | "
                     f"{row.get('speedup_vs_a', '')} | {row['peak_mem_gib']:.2f} | {row.get('target', '')} | "
                     f"{row.get('meets_target', '')} |")
    lines += ["", "(a) is upstream's sampler as released (eager fp32+TF32, two network calls per evaluation, guidance "
              "on a doubled batch at every call), timed over a few Heun steps and scaled; guided runs use guidance "
              f"{r['guided_recipe']['guidance']} on t in {r['guided_recipe']['interval']}."]
    checks = r.get("checks", {})
    if "bf16_vs_fp32" in checks:
        b = checks["bf16_vs_fp32"]
        lines.append(f"- bf16 vs fp32 (seeds 0..3, max rel L2): unguided {b['unguided']['max']:.2e}, guided "
                     f"{b['guided']['max']:.2e}; target {b['target']}: {b['meets_target']}")
    if "fp32_fast_vs_upstream_algorithm" in checks:
        exact = checks["fp32_fast_vs_upstream_algorithm"]["max"]
        lines.append(f"- fp32 fast path vs upstream's algorithm, strict fp32: {exact:.2e}")
    if "batch_independence" in checks:
        c = checks["batch_independence"]
        small, large = c["batch_sizes"]
        lines.append(f"- seeds 0..3 at batch {small} vs inside batch {large}: {c['max_rel_l2']:.2e}")
    if "host_syncs_warm_live" in checks:
        lines.append(f"- host synchronisations in a warm live run (10 / 20 steps): {checks['host_syncs_warm_live']}")
    lines += [f"- section {name} failed: {err}" for name, err in r.get("errors", {}).items()]
    if r.get("skipped_for_time"):
        lines.append(f"- not run (time budget): {', '.join(r['skipped_for_time'])}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--steps", type=int, default=RECIPE.steps, help="time points (upstream's num_sampling_steps)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--live-batch", type=int, default=4)
    p.add_argument("--baseline-heun-steps", type=int, default=2, help="Heun steps timed for (a), scaled to the recipe")
    p.add_argument("--budget-s", type=float, default=0, help="no section starts after this many seconds (0: no limit)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    p.add_argument("--smoke", action="store_true", help="a tiny LightningDiT on the CPU: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.baseline_heun_steps = 6, 8, 1
    elif not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run with --smoke for the CPU check, or on a GPU machine")
    torch.manual_seed(0)
    bench = Bench(args)
    print(f"{bench.card}: {bench.results['model']}, {2 * args.steps - 1} evaluations, batch {args.batch}", flush=True)
    # most important first (a timeout keeps what was done)
    sections = [("baseline", bench.baseline(False)), ("fast", bench.fast_batch(False)), ("live", bench.live),
                ("baseline_guided", bench.baseline(True)), ("fast_guided", bench.fast_batch(True)),
                ("checks", bench.precision_checks), ("syncs", bench.host_syncs)]
    return bench.run_sections(sections, set(filter(None, args.skip.split(","))), "gpu_sampler_v2")


if __name__ == "__main__":
    main()
