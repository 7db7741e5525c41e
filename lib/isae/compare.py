"""``python -m isae.compare SAE_DIR SAE_DIR [SAE_DIR ...] --activations CACHE_OR_NPY [--oracle] [--out DIR]``

The identifiability report of two or more SAEs (this project's folders, SAELens folders, sparsify's layout) on
shared activations: every pairwise metric of the project with mean ± sd over pairs, a random-init floor of the same
shape, per-SAE R_S and the aRIP diagnostic, and a figure of the matched-cosine distributions. The library call is
``isae.report.compare.compare_saes``; its docstring says what each preprocessing choice does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = Path("outputs") / "compare"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from isae.report.compare import NORMALIZE

    p = argparse.ArgumentParser(prog="python -m isae.compare", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sae_dirs", nargs="+", type=Path, metavar="SAE_DIR",
                   help="two or more SAE folders of the same d_in and d_sae")
    p.add_argument("--activations", type=Path, required=True, metavar="CACHE_OR_NPY",
                   help="an activation cache folder (isae.data.cache), an .npy or a .safetensors matrix [n, d_in]")
    p.add_argument("--activations-key", default=None,
                   help="the tensor to use when the .safetensors file holds several")
    p.add_argument("--oracle", action="store_true", help="add the OMP-oracle code IoU and ℓ2 (slow at large d_sae)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the CSVs, the figure and report.md")
    p.add_argument("--n-inputs", type=int, default=4096, help="activation rows drawn (seeded) for every metric")
    p.add_argument("--normalize", choices=NORMALIZE, default="auto",
                   help="input preprocessing; auto (our choice): what each SAE was trained on — unit norm for this "
                        "project's SAEs (centred first under the authors' recipe), SAELens's expected-norm scaling "
                        "where its cfg.json asks for it, raw activations for other foreign SAEs")
    p.add_argument("--n-supports", type=int, default=512, help="sampled supports of the aRIP diagnostic per SAE")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample, the supports and the bootstrap")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from isae.report.compare import CompareInputError, compare_saes

    try:
        result = compare_saes(args.sae_dirs, args.activations, oracle=args.oracle, out=args.out,
                              n_inputs=args.n_inputs, normalize=args.normalize, activations_key=args.activations_key,
                              n_supports=args.n_supports, seed=args.seed, progress=not args.no_progress)
    except CompareInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.text())
    print("per pair:")
    cols = ["a", "b", "trained", *[c for c in result.pairs.columns if c not in ("a", "b", "trained")]]
    print(result.pairs[cols].to_string(index=False, float_format="{:.4f}".format))
    print(f"\nwrote {', '.join(str(p) for p in result.files.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
