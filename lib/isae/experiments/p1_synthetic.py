"""P1 on synthetic data (notebook 01): the data of each setting and data seed under each recipe, and the experiment
(``P1Synthetic``) that trains and evaluates P1's four models on them with the generic pipeline (``isae.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from isae.core.models import SAEConfig
from isae.core.runs import RunKey
from isae.data.synthetic import SyntheticConfig, SyntheticStream, make_dictionary
from isae.eval import metrics
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import SyntheticProfile
from isae.pipeline import STEP_COST, ExperimentResult, load_saes, merge_units, model_unit
from isae.train.recipe import RECIPES, Recipe
from isae.train.recipe import recipe as get_recipe
from isae.train.trainer import TrainConfig


@dataclass
class SettingInputs:
    """What one (setting, data seed) of a synthetic run is built from: shared by the units of every synthetic
    experiment (``P1Synthetic``, ``P1RecipeAblation``, ``P1Scale``) and their ``load``."""

    setting: str
    run_name: str
    """Folder name of the checkpoints and saved SAEs: "<setting>" for data seed 0, else "<setting>_data<seed>"."""
    recipe: Recipe
    data_cfg: SyntheticConfig
    train_cfg: TrainConfig
    stream: SyntheticStream
    sae_cfgs: dict[str, SAEConfig]


def setting_inputs(setting: str, p: SyntheticProfile, recipe: str | Recipe = "authors",
                   device: str | None = None) -> SettingInputs:
    """The data, stream, training settings and SAE configs of one setting at the sizes of ``p`` (its data seed)."""
    rec = get_recipe(recipe)
    data_cfg = synthetic_data_config(setting, p, rec)
    train_cfg = rec.train_config(p.n_steps, p.batch_size, lr=p.lr, log_every=p.log_every,
                                 checkpoint_every=p.checkpoint_every, device=device)
    stream = SyntheticStream(data_cfg, p.batch_size, seed=p.data_seed, device=train_cfg.resolved_device())
    sae_cfgs = {a: rec.sae_config(p.d_in, p.d_sae, p.k, a) for a in p.models}
    return SettingInputs(setting, run_name(setting, p.data_seed), rec, data_cfg, train_cfg, stream, sae_cfgs)


def synthetic_unit(si: SettingInputs, p: SyntheticProfile, variant: str, out_dir: Path, ctx: Context,
                   **kw) -> dict[str, pd.DataFrame]:
    """One model's unit of a synthetic experiment at the sizes of ``p`` (its data seed): ``pipeline.model_unit`` on
    ``si``'s stream and held-out inputs, measured against the ground truth, with the data and recipe in the saved
    SAEs' provenance; the tables gain the ``data_seed`` column."""
    tables = model_unit(si.setting, si.stream, si.stream.held_out(p.n_eval)[0], variant, si.sae_cfgs[variant],
                        si.train_cfg, p.n_seeds, out_dir, true_atoms=si.stream.dictionary, run_name=si.run_name,
                        data=si.data_cfg.to_dict(), recipe=si.recipe.to_dict(), **kw, **ctx.params)
    for name in ("runs", "pairs", "log"):
        tables[name].insert(1, "data_seed", p.data_seed)
    return tables


def run_name(setting: str, data_seed: int) -> str:
    """The folder name of one setting's checkpoints and saved SAEs: the first data seed keeps the plain setting name
    (so one-data-seed folders stay where they were), others are "<setting>_data<seed>"."""
    return setting if data_seed == 0 else f"{setting}_data{data_seed}"


def synthetic_data_config(setting: str, p: SyntheticProfile, recipe: str | Recipe = "authors") -> SyntheticConfig:
    """The data of one synthetic setting ("iid" or "mixture") at the sizes of ``p`` under ``recipe``."""
    return SyntheticConfig(d_in=p.d_in, n_atoms=p.n_atoms, k=p.k, kind=setting, n_components=p.n_components,
                           spread=p.spread, seed=p.data_seed, **get_recipe(recipe).data_options())


def dictionary_coherence(p: SyntheticProfile, recipes: tuple[str, ...] = RECIPES) -> pd.DataFrame:
    """``metrics.coherence`` of the ground-truth dictionary of every setting of ``p`` under each recipe's data."""
    rows = [{"recipe": r, "setting": s, **metrics.coherence(make_dictionary(synthetic_data_config(s, p, r)))}
            for r in recipes for s in p.settings]
    return pd.DataFrame(rows).set_index(["recipe", "setting"])


def setting_key(setting: str, data_seed: int, p: SyntheticProfile) -> str:
    """``P1Synthetic``'s key of one setting and data seed: "<setting>" for p's first data seed, else
    "<setting>_data<seed>"."""
    return setting if data_seed == p.data_seed else f"{setting}_data{data_seed}"


def recipe_dir(out_dir: str | Path | None, recipes: tuple[str, ...], name: str) -> Path | None:
    """Where ``P1Synthetic`` writes recipe ``name``: ``out_dir`` for the first (headline) recipe, else
    ``out_dir/recipe-<name>``."""
    if out_dir is None:
        return None
    return Path(out_dir) if name == recipes[0] else Path(out_dir) / f"recipe-{name}"


def check_recipes(recipes: tuple[str, ...]) -> None:
    """Refuse an empty or repeated list of recipe names, or one ``isae.train.recipe.recipe`` does not know."""
    if not recipes or len(set(recipes)) != len(recipes):
        raise ValueError(f"recipes={recipes!r}: pass distinct recipe names (e.g. {RECIPES} or 'authors+lr'), the "
                         "headline's first.")
    for r in recipes:
        get_recipe(r)  # names the unknown recipe or element


class P1Synthetic(Experiment):
    """Notebook 01: P1's four models × seeds on every synthetic setting and data seed, under each recipe (the
    headline's first). A unit is one model of one (recipe, setting, data seed): its seeds trained on one stream and
    evaluated with their random-init floor. ``load`` gives, by recipe and setting key, each setting's
    ``ExperimentResult`` with its saved SAEs and held-out inputs."""

    name = "p1_synthetic"

    def __init__(self, p: SyntheticProfile, recipes: tuple[str, ...] = RECIPES):
        """``recipes``: notebook 01 passes ``profiles.HEADLINE_RECIPES[profile]``."""
        check_recipes(tuple(recipes))
        self.p, self.recipes = p, tuple(recipes)

    def identity(self) -> dict:
        return {"sizes": self.p.to_dict(), "recipes": list(self.recipes)}

    def units(self) -> list[Unit]:
        p = self.p
        return [Unit(f"{r}-{run_name(s, d)}-{a}", (r, s, d, a), STEP_COST.get(a, 1.0) * p.n_steps * p.n_seeds)
                for r in self.recipes for s in p.settings for d in p.data_seeds() for a in p.models]

    def _inputs(self, recipe: str, setting: str, data_seed: int, device) -> SettingInputs:
        return setting_inputs(setting, replace(self.p, data_seed=data_seed), recipe, device=str(device))

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        recipe, setting, d, variant = unit.key
        si = self._inputs(recipe, setting, d, ctx.device)
        ctx.log(f"{ctx.label}training {variant} × {self.p.n_seeds} seeds on {recipe}/{si.run_name}")
        return synthetic_unit(si, replace(self.p, data_seed=d), variant, recipe_dir(ctx.out, self.recipes, recipe),
                              ctx, progress=ctx.progress)

    def merge(self, results: list[dict], ctx: Context) -> dict:
        by_setting: dict[tuple, list[dict]] = {}
        for unit, tables in zip(self.units(), results):
            by_setting.setdefault(unit.key[:3], []).append(tables)
        return {key: merge_units(parts) for key, parts in by_setting.items()}

    def load(self, merged: dict, ctx: Context) -> dict[str, dict[str, ExperimentResult]]:
        p, out = self.p, {}
        keys = [RunKey(a, s) for a in p.models for s in range(p.n_seeds)]
        for (recipe, setting, d), t in merged.items():
            si = self._inputs(recipe, setting, d, ctx.device)
            saes = load_saes(recipe_dir(ctx.out, self.recipes, recipe), si.run_name, keys, ctx.device)
            x_eval = si.stream.held_out(p.n_eval)[0].to(ctx.device)
            out.setdefault(recipe, {})[setting_key(setting, d, p)] = ExperimentResult(
                runs=t["runs"], pairs=t["pairs"], log=t["log"], saes=saes, x_eval=x_eval)
        return out


