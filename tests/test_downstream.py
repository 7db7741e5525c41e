"""Downstream loss (isae.eval.downstream): splicing an identity "SAE" changes nothing, zero-ablation hurts, norms
restored.

A tiny Llama (SmolLM2's architecture) is trained for a few seconds to predict a cyclic word sequence, saved
as a Hugging Face folder and loaded through ``isae.data.lm.load_language_model`` — the same path as the notebook's
SmolLM2. An untrained model would not do: its CE is already at least log(vocab) on targets it cannot
predict, so zeroing its residual stream (uniform logits, CE = log(vocab)) need not make anything worse.
"""

from __future__ import annotations

import math

import pytest
import torch

from isae.core.models import SAE, SAEConfig
from isae.data.lm import load_language_model
from isae.eval import downstream

WORDS = "the cat sat on a mat and dog ran far away".split()
HOOK = "blocks.0.hook_resid_post"


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _cyclic_tokens(n: int, length: int, seed: int) -> torch.Tensor:
    """BOS, then the word cycle from a random offset: every next token is determined by the current one."""
    starts = torch.randint(0, len(WORDS), (n,), generator=torch.Generator().manual_seed(seed))
    body = (starts[:, None] + torch.arange(length - 1)) % len(WORDS) + 3
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), body], dim=1)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _word_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(60):
        tokens = _cyclic_tokens(16, 12, seed=step)
        loss = model(tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return load_language_model(folder, device="cpu")


@pytest.fixture(scope="module")
def windows():
    tokens = _cyclic_tokens(6, 12, seed=1234)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False  # BOS positions are neither replaced nor scored, as in the activation caches
    return tokens, mask


def test_identity_reconstruction_leaves_ce_unchanged_and_zero_ablation_hurts(tiny_llama, windows):
    bridge, tok = tiny_llama
    tokens, mask = windows
    res = downstream.splice_metrics(bridge, tokens, mask, HOOK, {"identity": lambda x: x}, batch_size=4,
                                    progress=False).iloc[0]
    assert res["ce_sae"] == pytest.approx(res["ce_clean"], abs=1e-5)
    assert res["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert res["ce_clean"] < 0.5 * math.log(len(tok))  # the model has learnt the cycle
    assert res["ce_zero"] > res["ce_clean"] + 0.5
    assert res["n_tokens"] == 6 * 10  # pairs (t, t+1) with both positions in the mask


def test_a_noisy_reconstruction_recovers_less_than_the_identity(tiny_llama, windows):
    bridge, _ = tiny_llama
    tokens, mask = windows
    gen = torch.Generator().manual_seed(0)

    def noisy(x):
        return x + 3.0 * x.norm(dim=-1, keepdim=True) * torch.randn(x.shape, generator=gen) / x.shape[-1] ** 0.5

    res = downstream.splice_metrics(bridge, tokens, mask, HOOK, {"identity": lambda x: x, "noisy": noisy},
                                    batch_size=8, progress=False).set_index("model")
    assert res.loc["noisy", "ce_sae"] > res.loc["identity", "ce_sae"]
    assert res.loc["noisy", "kl"] > 1e-3
    assert res.loc["noisy", "ce_recovered"] < 1.0
    assert res["ce_clean"].nunique() == 1 and res["ce_zero"].nunique() == 1


def test_masks_with_nothing_to_score_are_refused(tiny_llama, windows):
    bridge, _ = tiny_llama
    tokens, _ = windows
    with pytest.raises(ValueError, match="no scored positions"):
        downstream.splice_metrics(bridge, tokens, torch.zeros_like(tokens, dtype=torch.bool), HOOK,
                                  {"identity": lambda x: x}, progress=False)
    with pytest.raises(ValueError, match="same shape"):
        downstream.splice_metrics(bridge, tokens, torch.ones(2, 3, dtype=torch.bool), HOOK, {}, progress=False)


def _exact_abstopk(d_in: int = 8) -> SAE:
    """An AbsTopK SAE that reconstructs every unit-norm input exactly (atoms = the standard basis)."""
    sae = SAE(SAEConfig(d_in=d_in, d_sae=2 * d_in, k=d_in, architecture="abstopk"), seed=0)
    with torch.no_grad():
        sae.W_dec[:d_in] = torch.eye(d_in)
        sae.W_enc.zero_()
        sae.W_enc[:d_in] = torch.eye(d_in)
        sae.b_dec.zero_()
    return sae


def test_sae_reconstructor_restores_the_norm():
    sae = _exact_abstopk()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen) * torch.logspace(-2, 3, 32)[:, None]
    torch.testing.assert_close(downstream.sae_reconstructor(sae)(x), x, rtol=1e-5, atol=1e-5)
    # any SAE: the output is ‖x‖ · SAE(x / ‖x‖), so it scales with ‖x‖
    other = SAE(SAEConfig(d_in=8, d_sae=32, k=4, architecture="topk"), seed=3)
    rec = downstream.sae_reconstructor(other)
    unit = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(rec(x), x.norm(dim=1, keepdim=True) * other.decode(other.encode(unit)).detach())
    torch.testing.assert_close(rec(7.0 * x), 7.0 * rec(x), rtol=1e-5, atol=1e-4)


def test_every_trained_seed_is_spliced_and_table3_averages_over_seeds(tiny_llama, windows, monkeypatch):
    """notebook 03's CE claim compares models over seeds: ``splice_seeds`` splices every trained SAE (not the
    random-init floor), one row each, equal to splicing that SAE alone; ``table3`` averages the rows per model."""
    import pandas as pd

    from isae.core.runs import RunKey
    from isae.data.text import Windows
    from isae.experiments import p1_real
    from isae.experiments.profiles import real_profile
    from isae.pipeline import ExperimentResult
    from isae.train.recipe import recipe as get_recipe

    bridge, _ = tiny_llama
    tokens, mask = windows
    monkeypatch.setattr(p1_real.activations, "lm_windows",
                        lambda tokenizer, req: Windows(tokens, mask, torch.zeros_like(tokens, dtype=torch.int32)))
    p = real_profile("smoke", lm_hook=HOOK, context_length=tokens.shape[1], ce_windows=len(tokens), recipe="authors")
    keys = [RunKey("topk", 0), RunKey("topk", 1), RunKey("topk", 2), RunKey("abstopk", 0), RunKey("abstopk", 1),
            RunKey("topk", 1000, trained=False)]
    saes = {key: SAE(SAEConfig(d_in=32, d_sae=64, k=4, architecture=key.variant), seed=key.seed) for key in keys}
    empty = pd.DataFrame()
    setting = p1_real.RealSetting("smollm2", "authors", None, None, {}, ExperimentResult(empty, empty, empty, saes,
                                                                                          torch.zeros(0)), 0)
    splice, n_windows = p1_real.splice_seeds(setting, p, bridge, None)
    assert n_windows == len(tokens)
    assert list(zip(splice["model"], splice["seed"])) == [("TopK", 0), ("TopK", 1), ("TopK", 2), ("AbsTopK", 0),
                                                          ("AbsTopK", 1)]
    assert splice["ce_sae"].nunique() == 5  # five different SAEs, five different losses
    center = get_recipe(p.recipe).center_inputs  # the authors' recipe trains on per-row centred inputs
    alone = downstream.splice_metrics(bridge, tokens, mask, HOOK,
                                      {"x": downstream.sae_reconstructor(saes[RunKey("topk", 1)], center)},
                                      progress=False).iloc[0]
    assert splice.set_index("run").loc["topk/seed1", "ce_sae"] == pytest.approx(alone["ce_sae"], rel=1e-6)

    probes = pd.DataFrame({"model": ["TopK", "AbsTopK"], "test_acc_k1": [0.6, 0.7], "test_acc_k2": [0.6, 0.7],
                           "test_acc_k5": [0.6, 0.7]})
    t3 = p1_real.table3(splice, probes).set_index("model")
    topk = splice[splice["model"] == "TopK"]["ce_sae"]
    assert t3.loc["TopK", "ce_sae"] == pytest.approx(topk.mean())
    assert t3.loc["TopK", "ce_sae_sd"] == pytest.approx(topk.std(ddof=1))
    assert list(t3["n_seeds"]) == [3, 2] and t3.loc["AbsTopK", "sparse_probing_k1"] == 0.7
