"""Text corpus, document split and token windows (isae.data.text).

Split and window tests use synthetic documents and a word-level tokenizer (no asset needed);
tests on the packaged corpus skip when ``make assets`` has not fetched it."""

from __future__ import annotations

import random

import pytest
import torch

from isae.data import assets
from isae.data.text import SOURCES, Document, iter_windows, load_documents, split_documents, split_of, tokenize_windows

pytestmark = pytest.mark.assets

WORDS = [f"w{i}" for i in range(50)]


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<bos>",
                                   unk_token="<unk>", pad_token="<pad>")


def _docs(n: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [Document(f"src/doc{i}", "src", f"doc {i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))))
            for i in range(n)]


def _ids(doc: Document) -> list[int]:
    return [WORDS.index(w) + 3 for w in doc.text.split()]


# ---------------------------------------------------------------------------------- split

def test_split_is_deterministic_disjoint_and_complete():
    docs = _docs(3000)
    train, held = split_documents(docs, heldout_fraction=0.1)
    train2, held2 = split_documents(list(reversed(docs)), heldout_fraction=0.1)
    assert {d.id for d in train} == {d.id for d in train2} and {d.id for d in held} == {d.id for d in held2}
    assert not {d.id for d in train} & {d.id for d in held}
    assert len(train) + len(held) == len(docs)
    assert 0.08 < len(held) / len(docs) < 0.12
    train_ids = {d.id for d in train}
    assert [d.id for d in train] == [d.id for d in docs if d.id in train_ids], "input order is kept"


def test_split_depends_on_the_document_only():
    docs = _docs(500)
    assert [split_of(d, 0.2) for d in docs] == [split_of(d.id, 0.2) for d in docs]
    held_small = {d.id for d in docs if split_of(d, 0.1) == "heldout"}
    held_large = {d.id for d in docs if split_of(d, 0.3) == "heldout"}
    assert held_small < held_large, "a larger held-out fraction only adds documents"
    assert all(split_of(d, 0.0) == "train" for d in docs) and all(split_of(d, 1.0) == "heldout" for d in docs)
    with pytest.raises(ValueError):
        split_of(docs[0], 1.5)


def test_documents_of_one_group_share_a_side():
    docs = [Document(f"src/d{i}", "src", "", "w1", group="src/same") for i in range(200)]
    assert len({split_of(d, 0.5) for d in docs}) == 1


# -------------------------------------------------------------------------------- windows

@pytest.mark.parametrize("pack", [True, False])
def test_windows_length_bos_and_mask(pack):
    tok = _word_tokenizer()
    docs = _docs(60, seed=1)
    L = 16
    w = tokenize_windows(docs, tok, context_length=L, pack=pack)
    assert w.tokens.shape == w.mask.shape == w.doc.shape == (len(w), L)
    assert w.tokens.dtype == torch.int64 and w.mask.dtype == torch.bool
    assert (w.tokens[:, 0] == 0).all() and not w.mask[:, 0].any(), "BOS first, masked"
    assert not w.mask[w.tokens == 0].any(), "every BOS (document separators too) is masked"
    assert not w.mask[w.tokens == 1].any(), "padding is masked"
    assert (w.mask == (w.doc >= 0)).all()
    # the unmasked positions are exactly the documents' tokens, in order, each exactly once
    assert w.tokens[w.mask].tolist() == [t for d in docs for t in _ids(d)]
    assert w.doc[w.mask].tolist() == [i for i, d in enumerate(docs) for _ in _ids(d)]
    if pack:  # every window but the last is full; padding only at its end
        assert (w.tokens[:-1] != 1).all()
        seps = (w.tokens[:, 1:] == 0).sum().item()
        assert seps <= len(docs) - 1
    else:  # one document per window; padding only after its last token
        for row_doc, row_tok in zip(w.doc, w.tokens):
            assert len(set(row_doc[row_doc >= 0].tolist())) == 1
            pad = (row_tok == 1).nonzero()
            if len(pad):
                assert (row_tok[pad.min():] == 1).all()


def test_windows_stream_in_batches_and_stop_early():
    tok = _word_tokenizer()
    docs = _docs(200, seed=2)
    full = tokenize_windows(docs, tok, context_length=8)
    parts = list(iter_windows(docs, tok, context_length=8, batch_windows=7, docs_per_batch=5))
    assert all(len(p) <= 7 for p in parts)
    assert torch.equal(torch.cat([p.tokens for p in parts]), full.tokens)
    head = tokenize_windows(docs, tok, context_length=8, max_windows=10)
    assert torch.equal(head.tokens, full.tokens[:10]) and torch.equal(head.mask, full.mask[:10])
    with pytest.raises(ValueError):
        tokenize_windows(docs, tok, context_length=1)


# ------------------------------------------------------------------------- real corpus

def _have_corpus() -> bool:
    return all(assets.asset_dir(s).is_dir() for s in SOURCES)


@pytest.fixture(scope="module")
def corpus():
    if not _have_corpus():
        pytest.skip(f"text assets {SOURCES} not fetched (make assets)")
    return load_documents()


def test_corpus_sources_in_order(corpus):
    sources = [d.source for d in corpus]
    assert sources[0] == "wiki-leads"
    assert [s for i, s in enumerate(sources) if i == 0 or s != sources[i - 1]] == list(SOURCES)
    counts = {s: sources.count(s) for s in SOURCES}
    assert counts["wiki-leads"] == 10033 and counts["kjv"] == 1189 and counts["shakespeare"] == 49
    assert counts["sotu"] == 233
    assert len({d.id for d in corpus}) == len(corpus)
    kjv = next(d for d in corpus if d.id == "kjv/Genesis/1")
    assert kjv.text.startswith("In the beginning God created") and "1:2" not in kjv.text


def test_corpus_split_is_disjoint(corpus):
    train = load_documents(split="train")
    held = load_documents(split="heldout")
    assert len(train) + len(held) == len(corpus)
    assert not {d.id for d in train} & {d.id for d in held}
    assert {d.source for d in held} == set(SOURCES)


def test_corpus_windows_with_the_smollm2_tokenizer(corpus):
    from transformers import AutoTokenizer

    from isae.data.lm import smollm2_hf_dir

    if not (smollm2_hf_dir() / "tokenizer.json").is_file():
        pytest.skip("SmolLM2 safetensors copy not built (make assets)")
    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    w = tokenize_windows(corpus[:100], tok, context_length=128)
    assert (w.tokens[:, 0] == tok.bos_token_id).all() and not w.mask[:, 0].any()
    assert not w.mask[w.tokens == tok.bos_token_id].any()
    text = tok.decode(w.tokens[0, 1:20])
    assert corpus[0].text.startswith(text.strip()[:40])
