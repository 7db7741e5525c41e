"""Language models through the TransformerLens bridge (isae.data.lm).

A tiny GPT-NeoX (Pythia's architecture) saved to a local folder exercises the "any Hugging Face
causal LM" path with no asset and no network. The SmolLM2 tests skip when the GGUF has not been
fetched; the first run converts it to safetensors once (~35 s), later loads take about a second."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isae.data import assets
from isae.data.assets import AssetMissing
from isae.data.lm import hook_activations, hook_layer, load_hf_model, load_language_model, residual_activations

pytestmark = pytest.mark.assets

N_LAYERS = 3


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<pad>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny_pythia_dir(tmp_path_factory):
    """A randomly initialised 3-layer GPT-NeoX with a word-level tokenizer, saved as a HF folder."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = _word_tokenizer("the cat sat on a mat and dog ran far away".split())
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny-pythia")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_bridge(tiny_pythia_dir):
    return load_language_model(tiny_pythia_dir, device="cpu")


def _hidden_states(folder, tokens):
    hf, _ = load_hf_model(folder, device="cpu")
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True).hidden_states


def test_hook_layer():
    assert hook_layer("blocks.12.hook_resid_post") == 12
    assert hook_layer("blocks.0.attn.hook_z") == 0
    assert hook_layer("hook_embed") is None


def test_bridge_activations_equal_transformers_hidden_states(tiny_pythia_dir, tiny_bridge):
    bridge, tok = tiny_bridge
    tokens = torch.randint(3, len(tok), (2, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = tok.bos_token_id
    hs = _hidden_states(tiny_pythia_dir, tokens)
    for layer in range(N_LAYERS):
        pre = residual_activations(bridge, tokens, f"blocks.{layer}.hook_resid_pre")
        assert pre.shape == (2, 12, 32)
        assert (pre - hs[layer]).abs().max().item() < 1e-5
        if layer < N_LAYERS - 1:  # transformers' last hidden state has the final norm applied
            post = residual_activations(bridge, tokens, f"blocks.{layer}.hook_resid_post")
            assert (post - hs[layer + 1]).abs().max().item() < 1e-5


def test_nothing_past_the_hook_is_computed(tiny_bridge):
    bridge, tok = tiny_bridge
    finished = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: finished.append(k)) for k, b in enumerate(bridge.blocks)]
    handles.append(bridge.unembed.register_forward_hook(lambda m, i, o: finished.append("unembed")))
    try:
        residual_activations(bridge, torch.tensor([[0, 3, 4, 5]]), "blocks.0.hook_resid_post")
        assert finished == [0]
        finished.clear()
        residual_activations(bridge, torch.tensor([[0, 3, 4, 5]]), "blocks.1.hook_mlp_out")
        assert finished == [0, 1]
    finally:
        for h in handles:
            h.remove()


def test_many_hooks_from_one_forward_equal_one_forward_per_hook(tiny_bridge):
    bridge, tok = tiny_bridge
    tokens = torch.randint(3, len(tok), (2, 10), generator=torch.Generator().manual_seed(1))
    finished = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: finished.append(k)) for k, b in enumerate(bridge.blocks)]
    try:
        hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
        many = hook_activations(bridge, tokens, hooks)
        assert finished == [0, 1]  # one pass, stopped after the deepest hook's block
    finally:
        for h in handles:
            h.remove()
    for h in hooks:
        assert torch.equal(many[h], residual_activations(bridge, tokens, h))


def test_bfloat16_autocast_is_close_to_float32_but_not_equal(tiny_bridge):
    bridge, tok = tiny_bridge
    tokens = torch.randint(3, len(tok), (2, 10), generator=torch.Generator().manual_seed(2))
    hook = "blocks.2.hook_resid_pre"
    fp32 = residual_activations(bridge, tokens, hook)
    bf16 = residual_activations(bridge, tokens, hook, precision="bfloat16")
    assert bf16.dtype == torch.float32
    rel = ((bf16 - fp32).norm(dim=-1) / fp32.norm(dim=-1)).max().item()
    assert 0 < rel < 0.05
    with pytest.raises(ValueError, match="precision"):
        residual_activations(bridge, tokens, hook, precision="int4")


def test_grouped_cache_equals_one_cache_per_hook_and_resumes(tiny_bridge, tmp_path):
    """Two hooks and two lengths cached from one forward pass per batch equal separate builds; a group with one
    complete member resumes only the other."""
    import json

    from isae.data.activations import LMRequest, cache_lm_activations, cache_lm_group
    from isae.data.cache import read_manifest

    bridge, tok = tiny_bridge
    text = tmp_path / "text.jsonl"  # a local dataset: no packaged corpus needed
    g = np.random.default_rng(0)
    words = "the cat sat on a mat and dog ran far away".split()
    text.write_text("".join(json.dumps({"text": " ".join(g.choice(words, 30))}) + "\n" for _ in range(80)))
    base = dict(context_length=16, windows_per_shard=4, batch_windows=3, text=str(text))
    reqs = {tmp_path / "g" / "a": LMRequest(hook="blocks.0.hook_resid_post", n_tokens=150, **base),
            tmp_path / "g" / "b": LMRequest(hook="blocks.2.hook_resid_post", n_tokens=90, **base)}
    grouped = cache_lm_group(reqs, bridge, tok, progress=False)
    for d, req in reqs.items():
        alone = cache_lm_activations(tmp_path / "alone" / d.name, req, bridge=bridge, tokenizer=tok, progress=False)
        assert len(grouped[d]) == len(alone) > 0
        assert alone.spec == grouped[d].spec
        for extra in ("tokens", "positions"):
            assert np.array_equal(grouped[d].extra(extra), alone.extra(extra))
        assert np.allclose(grouped[d].rows(0, len(alone)), alone.rows(0, len(alone)), atol=1e-5)
    # drop b's last two shards from its manifest: the group rebuilds only those
    b = tmp_path / "g" / "b"
    m = read_manifest(b)
    kept = m["shards"][:-2]
    from isae.core.provenance import atomic_write_json
    atomic_write_json(b / "manifest.json", {**m, "shards": kept, "complete": False})
    a_mtime = (tmp_path / "g" / "a" / "manifest.json").stat().st_mtime_ns
    again = cache_lm_group(reqs, bridge, tok, progress=False)
    assert (tmp_path / "g" / "a" / "manifest.json").stat().st_mtime_ns == a_mtime
    assert np.array_equal(again[b].rows(0, len(again[b])), grouped[b].rows(0, len(grouped[b])))
    with pytest.raises(ValueError, match="differ only"):
        cache_lm_group({tmp_path / "x": LMRequest(context_length=16, text=str(text)),
                        tmp_path / "y": LMRequest(context_length=32, text=str(text))},
                       bridge, tok, progress=False)


def test_unknown_hook_is_refused(tiny_bridge):
    with pytest.raises(KeyError, match="not a hook"):
        residual_activations(tiny_bridge[0], torch.tensor([[0, 3]]), "blocks.0.hook_nonsense")


def test_default_model_missing_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ISAE_ASSETS_DIR", str(tmp_path))
    with pytest.raises(AssetMissing, match=r"scripts/fetch_assets.py --only smollm2"):
        load_language_model()


# ------------------------------------------------------------------------ SmolLM2 (asset)

@pytest.fixture(scope="session")
def smollm2():
    if not assets.asset_dir("smollm2").is_dir():
        pytest.skip("asset smollm2 not fetched (make assets)")
    return load_language_model("smollm2", device="cpu")


def test_smollm2_predicts_rome(smollm2):
    bridge, tok = smollm2
    ids = tok("The capital of Italy is", add_special_tokens=False, return_tensors="pt").input_ids
    assert bridge.cfg.n_layers == 30 and bridge.cfg.d_model == 576
    with torch.no_grad():
        logits = bridge(ids)
    assert tok.decode(logits[0, -1].argmax()) == " Rome"


def test_smollm2_bridge_equals_transformers(smollm2):
    from isae.data.lm import smollm2_hf_dir

    bridge, tok = smollm2
    text = "In the beginning God created the heaven and the earth. And the earth was without form."
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    tokens = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    hs = _hidden_states(smollm2_hf_dir(), tokens)
    for layer in (0, 6, 28):
        act = residual_activations(bridge, tokens, f"blocks.{layer}.hook_resid_post")
        assert act.shape == (1, tokens.shape[1], 576)
        assert (act - hs[layer + 1]).abs().max().item() < 1e-4


def test_pythia_path_offline_local_text_through_caching_and_splicing(tmp_path):
    """P1's model path with no hub: a 12-block GPT-NeoX with random weights stands in for Pythia-160M, the local
    text for the Pile; both of P1's hooks exist, the grouped cache holds them, and the splice of an identity
    'SAE' leaves the loss unchanged while a random SAE raises it."""
    import json

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from isae.core.models import SAE, SAEConfig
    from isae.data.activations import LMRequest, ModelLoader, lm_windows, open_or_build_all
    from isae.data.lm import PYTHIA_HOOKS
    from isae.eval.downstream import sae_reconstructor, splice_metrics

    words = "the cat sat on a mat and dog ran far away".split()
    tok = _word_tokenizer(words)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=12, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25)
    torch.manual_seed(0)
    folder = tmp_path / "pythia-like"
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    g = np.random.default_rng(0)
    text = tmp_path / "pile-like.jsonl"
    text.write_text("".join(json.dumps({"text": " ".join(g.choice(words, 40))}) + "\n" for _ in range(60)))

    reqs = {tmp_path / "c" / name: LMRequest(model=str(folder), hook=hook, text=str(text), n_tokens=300,
                                             context_length=16, windows_per_shard=8, batch_windows=4)
            for name, hook in PYTHIA_HOOKS.items()}
    models = ModelLoader("cpu")
    caches = open_or_build_all(reqs, models, progress=False)
    bridge, tokenizer = models.lm(str(folder))
    assert bridge.cfg.n_layers == 12
    for d, req in reqs.items():
        assert caches[d].d_in == 32 and len(caches[d]) >= 290 and caches[d].spec["text"] == str(text)
        windows = lm_windows(tokenizer, req)
        first = windows[:4]
        acts = residual_activations(bridge, first.tokens, req.hook)[first.mask]
        assert np.allclose(caches[d].rows(0, len(acts)), acts.numpy(), atol=1e-5)  # the cache holds this hook

    hook = PYTHIA_HOOKS["authors"]
    windows = lm_windows(tokenizer, reqs[tmp_path / "c" / "authors"])[:6]
    sae = SAE(SAEConfig(d_in=32, d_sae=64, k=4, architecture="topk"), seed=0)
    out = splice_metrics(bridge, windows.tokens, windows.mask, hook,
                         {"identity": lambda x: x, "random SAE": sae_reconstructor(sae)}, progress=False)
    out = out.set_index("model")
    assert out.loc["identity", "ce_sae"] == pytest.approx(out.loc["identity", "ce_clean"], abs=1e-5)
    assert out.loc["random SAE", "ce_sae"] > out.loc["random SAE", "ce_clean"]


def test_local_text_is_split_by_document_and_missing_paths_are_named(tmp_path):
    from isae.data.text import load_documents

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(f"document number {i}")
    train, held = load_documents(split="train", text=folder), load_documents(split="heldout", text=folder)
    assert len(train) + len(held) == 40 and held and not {d.id for d in train} & {d.id for d in held}
    with pytest.raises(FileNotFoundError, match="text="):
        load_documents(text=tmp_path / "nowhere")
