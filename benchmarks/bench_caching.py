"""Activation-caching throughput of the `default` profile's language-model caches, today's path against the fast one,
measured side by side in one run on the same windows.

    .venv/bin/python benchmarks/bench_caching.py [--windows 48] [--threads 2] [--sae-windows 320]

The default profile caches SmolLM2's residual stream at notebook 03's hook (blocks.20) and at notebook 05's layers
(blocks.4, 10, 16; 20 is shared). Three builds of the same windows into temporary folders:

  (a) **baseline**: one cache per hook, each its own fp32 forward pass (the path before the fast one);
  (b) **bf16 only**: the same, with the forward under bfloat16 autocast;
  (c) **fast**: all hooks from one bf16 forward pass per batch (``activations.cache_lm_group``).

Tokens/s counts each window position once (a profile's token, however many hooks it is cached at), so (c)/(a) is
the speed-up of caching what the profile needs. Then, for bf16 against fp32 at each hook: the max and mean absolute
deviation of the activations and the mean relative deviation ‖Δ‖/‖x‖; and the downstream effect: a TopK SAE
trained with one seed on each cache's unit-norm rows, its FVU on fp32 rows, and the DCS between the two (against
the DCS of two seeds on fp32: the seed-to-seed spread). Also the share of the baseline's time spent outside the
forward pass (masking, copies, writes, sha256).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from isae.data.activations import LMRequest, cache_lm_group, lm_windows
from isae.data.lm import hook_activations, load_language_model
from isae.experiments.profiles import real_profile, weighted_profile


def _build(root: Path, hooks: list[str], n_tokens: int, context: int, precision: str, grouped: bool, bridge, tok):
    reqs = {root / h: LMRequest(hook=h, n_tokens=n_tokens, context_length=context, windows_per_shard=32,
                                batch_windows=16, precision=precision) for h in hooks}
    t0 = time.perf_counter()
    if grouped:
        caches = cache_lm_group(reqs, bridge, tok, progress=False)
    else:
        caches = {}
        for d, r in reqs.items():
            caches.update(cache_lm_group({d: r}, bridge, tok, progress=False))
    return time.perf_counter() - t0, {d.name: c for d, c in caches.items()}


def _sae_effect(fp32, bf16, eval_rows: torch.Tensor) -> dict:
    """TopK SAEs trained with seed 0 on the fp32 and on the bf16 cache (same rows, same order) and with seed 1 on
    fp32: FVU on held-out fp32 rows, and DCS of the fp32/bf16 pair against the seed-to-seed DCS."""
    from isae.core.models import SAE, SAEConfig
    from isae.eval.metrics import dcs, match_atoms, single_metrics
    from isae.train.trainer import TrainConfig, train_many

    cfg = SAEConfig(d_in=fp32.d_in, d_sae=4 * fp32.d_in, k=16, architecture="topk")
    steps = (len(fp32) - len(eval_rows)) // 128
    tc = TrainConfig(n_steps=steps, batch_size=128, log_every=10**9, checkpoint_every=10**9, device="cpu",
                     geometric_median_samples=1024)
    saes = {}
    for name, cache, seed in (("fp32", fp32, 0), ("bf16", bf16, 0), ("fp32 seed 1", fp32, 1)):
        saes[name] = SAE(cfg, seed=seed)
        train_many({name: saes[name]}, cache.stream(128, seed=0, stop_row=len(cache) - len(eval_rows)), tc,
                   progress=False)

    def pair(a, b):
        return dcs(match_atoms(saes[a].W_dec, saes[b].W_dec))

    return {"FVU on fp32 rows, SAE trained on fp32": single_metrics(saes["fp32"], eval_rows)["mse_fvu"],
            "FVU on fp32 rows, SAE trained on bf16": single_metrics(saes["bf16"], eval_rows)["mse_fvu"],
            "DCS fp32 vs bf16 (same seed)": pair("fp32", "bf16"),
            "DCS seed 0 vs seed 1 (both fp32)": pair("fp32", "fp32 seed 1")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=48, help="windows of the default profile's context length")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sae-windows", type=int, default=320,
                    help="windows cached for the downstream SAE check (0: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p, wp = real_profile("default"), weighted_profile("default")
    hooks = [p.lm_hook] + [f"blocks.{L}.hook_resid_post" for L in wp.lm_layers if f"blocks.{L}.hook_resid_post" !=
                           p.lm_hook]
    context = p.context_length
    n_tokens = args.windows * (context - 1)
    bridge, tok = load_language_model("smollm2")
    windows = lm_windows(tok, LMRequest(n_tokens=n_tokens, context_length=context))
    n_positions = int(windows.mask.sum())
    print(f"torch threads {torch.get_num_threads()}; hooks {hooks}; {len(windows)} windows × {context} tokens "
          f"({n_positions:,} cached positions per hook)")
    hook_activations(bridge, windows.tokens[:4], hooks, "bfloat16")  # warm-up of both paths
    hook_activations(bridge, windows.tokens[:4], hooks, "float32")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {"(a) baseline: fp32, one forward per hook": ("float32", False),
                "(b) bf16 autocast, one forward per hook": ("bfloat16", False),
                "(c) fast: bf16 autocast, all hooks from one forward": ("bfloat16", True)}
        seconds, caches = {}, {}
        for i, (name, (precision, grouped)) in enumerate(runs.items()):
            seconds[name], caches[name] = _build(tmp / str(i), hooks, n_tokens, context, precision, grouped,
                                                 bridge, tok)
        t0 = time.perf_counter()
        for s in range(0, len(windows), 16):
            hook_activations(bridge, windows.tokens[s : s + 16], [p.lm_hook], "float32")
        bare = time.perf_counter() - t0

        base = next(iter(seconds.values()))
        print("\nthroughput (profile tokens/s: a position counts once, whatever the number of hooks):")
        for name, sec in seconds.items():
            print(f"  {name:54s} {n_positions / sec:8,.0f} tokens/s   {base / sec:5.2f}× the baseline")
        one_hook = caches[next(iter(caches))][Path(p.lm_hook).name]
        build_one = sum(s["seconds"] for s in one_hook.manifest["shards"])
        print(f"  bare fp32 forward up to {p.lm_hook}: {n_positions / bare:,.0f} tokens/s; the baseline's cache of "
              f"that hook spent {build_one:.1f} s computing shards against {bare:.1f} s of bare forward")
        print("  goal: (c) ≥ 3× (a)")

        fp32 = caches["(a) baseline: fp32, one forward per hook"]
        bf16 = caches["(b) bf16 autocast, one forward per hook"]
        print("\nbf16 autocast against fp32, on every cached row:")
        effect_rows = {}
        for h in hooks:
            a, b = fp32[h].rows(0, len(fp32[h])).astype(np.float32), bf16[h].rows(0, len(bf16[h])).astype(np.float32)
            d = b - a
            rel = np.linalg.norm(d, axis=1) / np.linalg.norm(a, axis=1)
            print(f"  {h:26s} max |Δ| {np.abs(d).max():8.3f}  mean |Δ| {np.abs(d).mean():.4f}  "
                  f"(mean |x| {np.abs(a).mean():.3f})  mean ‖Δ‖/‖x‖ {rel.mean():.4f}  max {rel.max():.4f}")
            effect_rows[h] = (a, b)
        if args.sae_windows:
            n = args.sae_windows * (context - 1)
            print(f"\ndownstream, {p.lm_hook}: {args.sae_windows} windows cached in fp32 and in bf16; TopK SAEs "
                  f"(K = 4·d, k = 16, batch 128, one pass; the last 512 rows held out)")
            pair = {}
            for precision in ("float32", "bfloat16"):
                _, built = _build(tmp / f"sae-{precision}", [p.lm_hook], n, context, precision, True, bridge, tok)
                pair[precision] = built[p.lm_hook]
            rows = torch.from_numpy(pair["float32"].rows(len(pair["float32"]) - 512, len(pair["float32"])))
            effect = _sae_effect(pair["float32"], pair["bfloat16"], rows / rows.norm(dim=1, keepdim=True))
            for k, v in effect.items():
                print(f"  {k:40s} {v:.4f}")

if __name__ == "__main__":
    main()
