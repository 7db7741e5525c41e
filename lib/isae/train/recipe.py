"""The training recipe of P1's experiments, in one place: what P1's text says, and what the authors' code does.

P1 (Nelson, Karaletsos & Locatello) describes one recipe shared by all four models; the authors' published code
(GitHub ``wjn0/isaes``, package ``rsae``, configs under ``configs/``) differs from that text in several places. A
``Recipe`` holds every element where the two differ, each a separate field, so any one can be switched alone
(``Recipe.switch``). Two complete settings:

* ``PAPER``   — P1's text, with this project's earlier choices where the text is silent (today's behaviour).
* ``AUTHORS`` — the authors' code (``rsae/rip_topk.py``, ``rsae/train.py``, ``rsae/synthetic_data.py``,
  ``configs/``), facts read from commit 313fb5b.

``ELEMENTS`` documents each field: its value in both settings and where each value comes from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import pandas as pd

from isae.core.models import SAEConfig, architecture
from isae.train.trainer import TrainConfig

RECIPES = ("paper", "authors")


@dataclass(frozen=True)
class Element:
    """One element of the recipe: what it controls and the source of each setting's value."""

    what: str
    paper_source: str
    authors_source: str
    applies_to: str = "all"
    """"all", "aRIP models" (iSAE, iSAE-ME), "multistep" (iSAE-ME) or "mixture" (the mixture data only)."""


#: Every field of ``Recipe`` but ``name``, in the order the tables list them.
ELEMENTS: dict[str, Element] = {
    "me_init": Element(
        "iSAE-ME's initialisation of S and W",
        "P1 is silent; our choice: S = 0, W = Dᵀ (training starts from AbsTopK)",
        "S = I − DᵀD / (1.1 λ_max(DᵀD)), W = Dᵀ unscaled (rsae/rip_topk.py)", applies_to="multistep"),
    "code_l1": Element(
        "L1 penalty Σ|z| / (B·k) on the final codes of iSAE and iSAE-ME",
        "P1's loss has no L1 term: 0",
        "0.01 (configs/model/, iSAE and iSAE-ME; TopK and AbsTopK: 0)", applies_to="aRIP models"),
    "arip_estimator": Element(
        "form of the stochastic aRIP estimate",
        "§aRIP: ‖D_Sᵀ D_S n‖²/|S| − 1 per input, averaged",
        "|S| · mean‖D_Sᵀ D_S n‖² / (mean‖D_S n‖²)² − 1, a ratio of batch means (rsae/rip_topk.py)",
        applies_to="aRIP models"),
    "aux_k": Element(
        "AuxK: dead latents used per input (None: d_in // 2)",
        "Gao et al.'s recipe, which P1 follows: 256",
        "d_in // 2 (rsae/rip_topk.py)"),
    "dead_window_batches": Element(
        "AuxK: batches without firing after which a latent is dead (None: tokens, min(10M, run / 10))",
        "Gao et al.: 10M tokens; our choice: scaled to the run, min(10M, run tokens / 10)",
        "8 batches, the current one included (rsae/rip_topk.py); here the 8 batches before the current one"),
    "lr": Element(
        "Adam's base learning rate (None: 2e-4 / √(K / 2¹⁴))",
        "P1 is silent (Gao et al.: 1e-4); our choice: sparsify's 2e-4 / √(K / 2¹⁴)",
        "3e-4 (configs/)"),
    "warmup_steps": Element(
        "linear learning-rate warm-up",
        "P1 is silent: none",
        "100 steps (rsae/train.py)"),
    "decay_frac": Element(
        "linear learning-rate decay over this last fraction of the steps",
        "P1 is silent: constant",
        "the last 20% (rsae/train.py)"),
    "grad_clip": Element(
        "global gradient-norm clipping",
        "P1 is silent: none",
        "1.0, over all parameters, S included (rsae/train.py)"),
    "bf16": Element(
        "bfloat16 compute",
        "P1 is silent: float32",
        "bf16 autocast of the whole step (rsae/train.py); here: latents ranked in bf16, values and "
        "gradients float32 (TrainConfig.bf16_selection)"),
    "radial_grad": Element(
        "remove each atom's radial gradient component before the step",
        "Gao et al.'s recipe, which P1 follows: yes",
        "no; the decoder is renormalised before every forward (rsae/rip_topk.py)"),
    "center_inputs": Element(
        "centre every input by its own feature mean before the unit-norm scaling",
        "§Shared training recipe: unit norm only",
        "centred per sample, then unit norm (rsae/synthetic_data.py, rsae/train.py)"),
    "loss_normaliser": Element(
        "scale of the reconstruction term",
        "mean ‖x − x̂‖² per input",
        "per-element MSE / the first batch's per-element variance (rsae/train.py)"),
    "mixture": Element(
        "the mixture dictionary's generator",
        "P1 gives no component count or spread; our choice: unit centres + spread · N(0, I/N)",
        "max(2, M // 100) centres ~ N(0, 0.3 I), atom = centre + N(0, 0.7 I) (rsae/synthetic_data.py)",
        applies_to="mixture"),
}


@dataclass(frozen=True)
class Recipe:
    """One complete training recipe; every field but ``name`` is an element of ``ELEMENTS``."""

    name: str
    me_init: str
    code_l1: float
    arip_estimator: str
    aux_k: int | None
    dead_window_batches: int | None
    lr: float | None
    warmup_steps: int
    decay_frac: float
    grad_clip: float | None
    bf16: bool
    radial_grad: bool
    center_inputs: bool
    loss_normaliser: str
    mixture: str

    def switch(self, element: str, to: Recipe) -> Recipe:
        """This recipe with ``element`` taken from ``to``, named "<name> + <element>=<its value in to>"."""
        if element not in ELEMENTS:
            raise ValueError(f"element={element!r} is not a recipe element; use one of {list(ELEMENTS)}.")
        return replace(self, name=f"{self.name} + {element} from {to.name}", **{element: getattr(to, element)})

    def applies(self, element: str, arch: str, setting: str) -> bool:
        """Whether ``element`` changes anything for architecture ``arch`` on data ``setting``."""
        target = ELEMENTS[element].applies_to
        spec = architecture(arch)
        return {"all": True, "aRIP models": spec.default_arip_coef > 0, "multistep": spec.multistep,
                "mixture": setting == "mixture"}[target]

    def sae_config(self, d_in: int, d_sae: int, k: int, arch: str) -> SAEConfig:
        """The SAE of architecture ``arch`` under this recipe."""
        aux_k = self.aux_k if self.aux_k is not None else d_in // 2
        code_l1 = self.code_l1 if architecture(arch).default_arip_coef > 0 else 0.0
        return SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=arch, me_init=self.me_init,
                         code_l1_coef=code_l1, arip_estimator=self.arip_estimator, aux_k=aux_k)

    def train_config(self, n_steps: int, batch_size: int, lr: float | None = None, **kwargs) -> TrainConfig:
        """Optimisation under this recipe; ``lr`` (a profile's override) replaces the recipe's base rate."""
        window = None if self.dead_window_batches is None else self.dead_window_batches * batch_size
        return TrainConfig(n_steps=n_steps, batch_size=batch_size, lr=lr if lr is not None else self.lr,
                           dead_after_tokens=window, warmup_steps=self.warmup_steps, decay_frac=self.decay_frac,
                           grad_clip=self.grad_clip, bf16_selection=self.bf16, remove_radial_grad=self.radial_grad,
                           loss_normaliser=self.loss_normaliser, **kwargs)

    def data_options(self) -> dict:
        """The synthetic data's fields this recipe sets (``SyntheticConfig`` keyword arguments)."""
        return {"center_inputs": self.center_inputs, "mixture_recipe": self.mixture}

    def to_dict(self) -> dict:
        return asdict(self)


PAPER = Recipe(name="paper", me_init="zero", code_l1=0.0, arip_estimator="noise", aux_k=256,
               dead_window_batches=None, lr=None, warmup_steps=0, decay_frac=0.0, grad_clip=None, bf16=False,
               radial_grad=True, center_inputs=False, loss_normaliser="none", mixture="ours")
AUTHORS = Recipe(name="authors", me_init="authors", code_l1=0.01, arip_estimator="ratio", aux_k=None,
                 dead_window_batches=8, lr=3e-4, warmup_steps=100, decay_frac=0.2, grad_clip=1.0, bf16=True,
                 radial_grad=False, center_inputs=True, loss_normaliser="first_batch_variance", mixture="authors")
_BY_NAME = {"paper": PAPER, "authors": AUTHORS}
assert [f.name for f in fields(Recipe)][1:] == list(ELEMENTS), "every Recipe field is documented in ELEMENTS"


def recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name``: "paper", "authors", or a base with elements taken from the other one,
    "<base>+<element>[+<element>...]" (e.g. "authors+lr": the authors' recipe with the paper's learning rate,
    as in the recipe ablation); a ``Recipe`` passes through."""
    if isinstance(name, Recipe):
        return name
    base, *switched = str(name).split("+")
    if base not in _BY_NAME:
        raise ValueError(f"recipe={name!r} is unknown; use one of {RECIPES}, optionally followed by "
                         f"'+<element>' with elements from {list(ELEMENTS)} (e.g. 'authors+lr').")
    out, other = _BY_NAME[base], _BY_NAME[RECIPES[1 - RECIPES.index(base)]]
    for element in switched:
        if element not in ELEMENTS:
            raise ValueError(f"recipe={name!r}: {element!r} is not a recipe element; use names from "
                             f"{list(ELEMENTS)}.")
        out = out.switch(element, other)
    return out


def recipe_table() -> pd.DataFrame:
    """Every element with its value and source in both recipes (the notebook's table of differences)."""
    return pd.DataFrame([{"element": name, "what": e.what, "paper": getattr(PAPER, name),
                          "paper source": e.paper_source,
                          "authors": getattr(AUTHORS, name), "authors source": e.authors_source,
                          "applies to": e.applies_to} for name, e in ELEMENTS.items()])
