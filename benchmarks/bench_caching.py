"""Activation-caching throughput against the bare model forward up to the hook, measured side by side.

    .venv/bin/python benchmarks/bench_caching.py [--hook blocks.20.hook_resid_post] [--windows 64]

For the same windows it times (a) the bare forward through transformer-lens up to the hook
(``run_with_cache`` with ``stop_at_layer``, nothing kept) and (b) a full cache build into a temporary folder
(forward, BOS/padding masking, copies, shard writes, sha256, manifest). Prints tokens/s of both and their
ratio (goal: caching ≥ 90% of the bare forward), and the peak resident memory of builds of 1× and 4× the
windows (goal: bounded, i.e. not growing with the number of tokens beyond the windows' token ids).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from isae.data.activations import LMRequest, _lm_shard_fn, lm_spec, lm_windows
from isae.data.cache import build_cache
from isae.data.lm import load_language_model, residual_activations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--windows", type=int, default=64, help="windows of --context tokens per timed pass")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bridge, tok = load_language_model("smollm2")
    req = LMRequest(hook=args.hook, n_tokens=4 * args.windows * (args.context - 1), context_length=args.context,
                    windows_per_shard=args.batch_windows * 2, batch_windows=args.batch_windows)
    windows = lm_windows(tok, req)
    first = windows[: args.windows]
    n_tokens = int(first.mask.sum())
    print(f"device: {next(bridge.parameters()).device}, torch threads {torch.get_num_threads()}, hook {args.hook}, "
          f"{args.windows} windows × {args.context} tokens ({n_tokens} cached tokens)")

    residual_activations(bridge, first.tokens[: args.batch_windows], args.hook)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(first), args.batch_windows):
        residual_activations(bridge, first.tokens[s : s + args.batch_windows], args.hook)
    bare = n_tokens / (time.perf_counter() - t0)

    make_shard = _lm_shard_fn(bridge, windows, req)
    rows = []
    for scale in (1, 4):
        n_shards = scale * args.windows // req.windows_per_shard
        with tempfile.TemporaryDirectory() as d:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            build_cache(d, {**lm_spec(req, bridge.cfg.d_model), "bench_scale": scale}, n_shards, make_shard,
                        progress=False)
            seconds = time.perf_counter() - t0
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        cached = int(windows[: n_shards * req.windows_per_shard].mask.sum())
        rows.append((scale, cached, cached / seconds, grown))

    print(f"\nbare forward up to the hook: {bare:10,.0f} tokens/s")
    for scale, cached, tps, grown in rows:
        print(f"cache build, {scale}× windows:  {tps:10,.0f} tokens/s  ({tps / bare:.0%} of bare; {cached} tokens; "
              f"peak RSS grew {grown:.0f} MiB)")
    print("\ngoal: caching ≥ 90% of the bare forward; peak memory not growing with the token count")


if __name__ == "__main__":
    main()
