"""SAELens round trip: every saved SAE family loads in SAELens with our encode / decode, and back.

Three phases, run by ``make saelens-roundtrip`` as separate processes (so SAELens's side loads nothing of ours but
``isae.saelens``)::

    .venv/bin/python scripts/saelens_roundtrip.py ours-export --saes outputs/smoke/saes --work /tmp/rt
    .venv/bin/python scripts/saelens_roundtrip.py saelens     --saes outputs/smoke/saes --work /tmp/rt
    .venv/bin/python scripts/saelens_roundtrip.py ours-check  --work /tmp/rt

1. ``ours-export``: per saved folder, ``n`` seeded unit-norm inputs and our codes z = SAE.encode(x)
   and reconstructions SAE.decode(z), written to ``work/ours/<folder>.safetensors``; and one folder per
   architecture rewritten in the layout used before the SAELens export (``work/legacy/``).
2. ``saelens`` (``import isae.saelens`` registers iSAE-ME): each folder through
   ``sae_lens.SAE.load_from_disk``; its encode(x) and decode(encode(x)) must equal ours; the legacy folders
   through ``isae.saelens.load`` likewise. Then SAELens writes
   folders of its own with its own save code (TopK, AbsTopK, standard, JumpReLU inference SAEs with perturbed
   weights, and TopK / JumpReLU training SAEs via ``save_inference_model``) with their codes on the same kind of
   inputs, into ``work/theirs/``.
3. ``ours-check``: each SAELens folder through ``isae.core.io.load_sae``; our encode / decode must
   equal SAELens's.

"Equal": codes and reconstructions within ``--atol`` (float32 products in another order round differently) and
the same active latents for every input. Exit status 1 when any folder fails. The work folder is scratch space.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


def unit_inputs(n: int, d_in: int, seed: int) -> torch.Tensor:
    """``n`` seeded Gaussian rows scaled to unit norm (what our SAEs are trained on)."""
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def compare(name: str, kind: str, z_ours: torch.Tensor, z_theirs: torch.Tensor, x_ours: torch.Tensor,
            x_theirs: torch.Tensor, atol: float) -> bool:
    """Print one line and return whether codes, supports and reconstructions agree."""
    dz = float((z_ours - z_theirs).abs().max())
    dx = float((x_ours - x_theirs).abs().max())
    same_support = float(((z_ours != 0) == (z_theirs != 0)).all(dim=1).float().mean())
    ok = dz <= atol and dx <= atol and same_support == 1.0
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<36} {kind:<28} max|Δz| {dz:.1e}  max|Δx̂| {dx:.1e}  "
          f"same active set {100 * same_support:.1f}%", flush=True)
    return ok


def folders(root: Path) -> list[Path]:
    found = sorted(p.parent for p in root.glob("*/cfg.json"))
    if not found:
        raise SystemExit(f"error: no SAE folders (*/cfg.json) under {root}; run notebooks 01 and 03 at the smoke "
                         "profile first (see docs/own-saes.md), or pass --saes.")
    return found


# --- phase 1 and 3: the project's environment ------------------------------------------------------------------

def ours_export(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "lib"))
    from isae.core.io import load_sae

    out = args.work / "ours"
    out.mkdir(parents=True, exist_ok=True)
    for d in folders(args.saes):
        sae = load_sae(d).eval()
        x = unit_inputs(args.n, sae.cfg.d_in, args.seed)
        with torch.no_grad():
            z = sae.encode(x)
            save_file({"x": x, "z": z, "x_hat": sae.decode(z)}, str(out / f"{d.name}.safetensors"))
        (out / f"{d.name}.json").write_text(json.dumps({"dir": str(d.resolve()), "architecture": sae.cfg.architecture}))
    legacy = [write_legacy(d, args.work / "legacy") for d in first_per_architecture(folders(args.saes))]
    print(f"ours-export: {len(folders(args.saes))} folders under {args.saes} → {out}; {len(legacy)} in the layout "
          f"before the SAELens export → {args.work / 'legacy'}")
    return 0


def first_per_architecture(dirs: list[Path]) -> list[Path]:
    """The first folder of each of our architectures (``isae_config``)."""
    seen = {}
    for d in dirs:
        seen.setdefault(json.loads((d / "cfg.json").read_text())["isae_config"]["architecture"], d)
    return list(seen.values())


def write_legacy(d: Path, root: Path) -> Path:
    """``d`` rewritten as ``save_sae`` wrote folders before the SAELens export: our architecture name (iSAE as
    "isae"), no metadata, no top-level n_steps, a Γ (``loss_weight``) inside the weights file."""
    cfg = json.loads((d / "cfg.json").read_text())
    own = cfg["isae_config"]
    legacy_cfg = {"architecture": {"relu": "standard"}.get(own["architecture"], own["architecture"]),
                  "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "k": own["k"], "dtype": "float32", "device": "cpu",
                  "apply_b_dec_to_input": True, "normalize_activations": "none",
                  "input_normalization": cfg.get("input_normalization"), "isae_config": own}
    tensors = load_file(str(d / "sae_weights.safetensors"))
    tensors["loss_weight"] = torch.linspace(0.5, 1.5, cfg["d_in"])
    out = root / d.name
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(legacy_cfg, indent=2))
    return out


def ours_check(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "lib"))
    from isae.core.io import load_sae

    theirs = sorted((args.work / "theirs").glob("*/cfg.json"))
    if not theirs:
        raise SystemExit(f"error: no SAELens folders under {args.work / 'theirs'}; run the saelens phase first.")
    print(f"SAELens-written folders → isae.core.io.load_sae ({len(theirs)}):")
    ok = True
    for cfg_path in theirs:
        d = cfg_path.parent
        ref = load_file(str(d.parent / f"{d.name}.expected.safetensors"))
        sae = load_sae(d).eval()
        with torch.no_grad():
            z = sae.encode(ref["x"])
            x_hat = sae.decode(z)
        kind = f"{type(sae).__name__}({sae.cfg.architecture})"
        ok &= compare(d.name, kind, z, ref["z"], x_hat, ref["x_hat"], args.atol)
    print("ours-check: " + ("every SAELens folder loads with SAELens's encode and decode" if ok else "FAILED"))
    return 0 if ok else 1


# --- phase 2: the SAELens environment ---------------------------------------------------------------------------

def _perturb(sae, seed: int) -> None:
    """Move every parameter away from its init, so a converter that re-initialises or drops a tensor fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name == "threshold":  # per-latent JumpReLU thresholds, positive and different
                p.copy_(0.02 + 0.05 * noise.abs())
            else:
                p.add_(0.1 * noise)


def saelens_phase(args: argparse.Namespace) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    import sae_lens
    from sae_lens import (
        SAE,
        AbsTopKSAE,
        AbsTopKSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    import isae.saelens  # registers isae_me with SAELens

    print(f"sae_lens {sae_lens.__version__}, torch {torch.__version__}")
    print(f"our folders → sae_lens.SAE.load_from_disk ({args.saes}):")
    ok = True
    for d in folders(args.saes):
        ref = load_file(str(args.work / "ours" / f"{d.name}.safetensors"))
        sae = SAE.load_from_disk(d)
        with torch.no_grad():
            z = sae.encode(ref["x"])
            x_hat = sae.decode(z)
        arch = json.loads((d / "cfg.json").read_text())["architecture"]
        ok &= compare(d.name, f"{type(sae).__name__}({arch})", ref["z"], z, ref["x_hat"], x_hat, args.atol)

    legacy = sorted((args.work / "legacy").glob("*/cfg.json"))
    print(f"folders in the layout before the SAELens export → isae.saelens.load ({len(legacy)}):")
    for cfg_path in legacy:
        d = cfg_path.parent
        ref = load_file(str(args.work / "ours" / f"{d.name}.safetensors"))
        sae = isae.saelens.load(d)
        with torch.no_grad():
            z = sae.encode(ref["x"])
            x_hat = sae.decode(z)
        arch = json.loads(cfg_path.read_text())["architecture"]
        ok &= compare(d.name, f"{type(sae).__name__}({arch})", ref["z"], z, ref["x_hat"], x_hat, args.atol)

    out = args.work / "theirs"
    out.mkdir(parents=True, exist_ok=True)
    d_in, d_sae, k = 24, 96, 6
    written = {  # built one at a time below, each after its own torch.manual_seed (SAELens inits from it)
        "saelens_topk": lambda: TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)),
        "saelens_abstopk": lambda: AbsTopKSAE(AbsTopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)),
        "saelens_standard": lambda: StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
        "saelens_standard_no_bdec_in": lambda: StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae,
                                                                             apply_b_dec_to_input=False)),
        "saelens_jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    }
    training = {
        "saelens_topk_training": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k)),
        "saelens_jumprelu_training": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae)),
    }
    x = unit_inputs(args.n, d_in, args.seed)
    for i, (name, build) in enumerate({**written, **training}.items()):
        torch.manual_seed(i)
        sae = build()
        _perturb(sae, seed=100 + i)
        if name in training:
            sae.save_inference_model(out / name)  # SAELens's own export (folds the decoder norms for TopK)
            sae = SAE.load_from_disk(out / name)  # its codes as SAELens's inference SAE computes them
        else:
            sae.save_model(out / name)
        with torch.no_grad():
            z = sae.encode(x)
            save_file({"x": x, "z": z, "x_hat": sae.decode(z)}, str(out / f"{name}.expected.safetensors"))
    print(f"saelens: wrote {len(written) + len(training)} SAELens folders with SAELens's save code → {out}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["ours-export", "saelens", "ours-check"])
    p.add_argument("--saes", type=Path, default=ROOT / "outputs" / "smoke" / "saes", help="folder of SAE folders")
    p.add_argument("--work", type=Path, required=True, help="scratch folder shared by the three phases")
    p.add_argument("--n", type=int, default=512, help="inputs per SAE")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    p.add_argument("--atol", type=float, default=ATOL, help="largest |difference| of a code or reconstruction entry")
    args = p.parse_args(argv)
    return {"ours-export": ours_export, "saelens": saelens_phase, "ours-check": ours_check}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
