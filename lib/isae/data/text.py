"""The packaged text corpus: documents, a deterministic held-out split, fixed-length token windows.

Sources, in this order (Wikipedia leads first: the closest to the papers' web text):
``wiki-leads`` (10,033 Wikipedia lead sections), ``kjv`` (King James Bible, one document per
chapter), ``shakespeare`` (Shakespeare's plays and poems and Milton's works, one per file),
``sotu`` (State of the Union addresses, one per address), ``moby-dick`` (one per chapter).
About 6.5M SmolLM2 tokens in all. Each source is an asset (``isae.data.assets``); a missing one raises
AssetMissing naming the command that fetches it.

The split is per document (by a salted hash of the document's group, normally its id), so it
does not depend on order, on which sources are loaded, or on the tokenizer. Windows are
``context_length`` tokens long and start with BOS; ``Windows.mask`` is False at every BOS
(including the separators between packed documents) and padding position, so those never enter
activation caches.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from isae.data.assets import asset_path

SOURCES = ("wiki-leads", "kjv", "shakespeare", "sotu", "moby-dick")
SPLIT_SALT = "isae-text-split-v1"
DEFAULT_HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Document:
    id: str          # unique, stable: "<source>/<name>"
    source: str      # asset name
    title: str
    text: str
    group: str = ""  # split key when documents overlap (the same poem in two editions); defaults to id

    @property
    def split_key(self) -> str:
        return self.group or self.id


# ------------------------------------------------------------------------------------ sources

def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n").strip()


def wiki_leads_documents(root=None) -> Iterator[Document]:
    data = json.loads(asset_path("wiki-leads", root).read_text(encoding="utf-8"))
    for key, entry in data.items():
        text = (entry.get("extract") or "").strip()
        if text:
            yield Document(f"wiki-leads/{key}", "wiki-leads", entry.get("title") or key, text)


_VERSE_REF = re.compile(r"(?<!\S)\d+:\d+\s+")


def kjv_documents(root=None) -> Iterator[Document]:
    """One document per chapter; verse numbers ("3:16 ") removed."""
    con = sqlite3.connect(f"file:{asset_path('kjv', root)}?mode=ro", uri=True)
    try:
        books = {(t, b): name for t, b, name in con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        rows = con.execute("SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                           "ORDER BY TestamentID, BookID, ChapterID, VerseID")
        current, parts = None, []
        for t, b, c, p1, p2 in list(rows) + [(None, None, None, "", "")]:
            if (t, b, c) != current:
                if current is not None:
                    book = books.get(current[:2], f"book{current[1]}")
                    title = f"{book} {current[2]}"
                    yield Document(f"kjv/{book}/{current[2]}", "kjv", title, " ".join(parts))
                current, parts = (t, b, c), []
            for p in (p1, p2):
                p = _VERSE_REF.sub("", (p or "").strip()).strip()
                if p:
                    parts.append(p)
    finally:
        con.close()


# Milton's Comus is in three of these files: keep them on one side of the split
_MILTON_OVERLAP = {"comus", "lallegro_il_penseroso_comus_and_lycidas", "poetical_works"}


def shakespeare_documents(root=None) -> Iterator[Document]:
    """Shakespeare's plays and poems, then Milton's works (Project Gutenberg texts), one per file."""
    folder = asset_path("shakespeare", root)
    for sub, author in (("shksprdata", "Shakespeare"), ("miltondata", "Milton")):
        for f in sorted((folder / sub / "texts").glob("*_gut.txt")):
            stem = f.name[: -len("_gut.txt")]
            text = _read_text(f)
            title = next((line.strip() for line in text.splitlines() if line.strip()), stem)
            group = "shakespeare/milton-comus" if author == "Milton" and stem in _MILTON_OVERLAP else ""
            yield Document(f"shakespeare/{author.lower()}/{stem}", "shakespeare", f"{author}: {title}", text, group)


def sotu_documents(root=None) -> Iterator[Document]:
    for f in sorted(asset_path("sotu", root).glob("*.txt")):
        yield Document(f"sotu/{f.stem}", "sotu", f.stem.replace("_", " "), _read_text(f))


def moby_dick_documents(root=None) -> Iterator[Document]:
    folder = asset_path("moby-dick", root)
    order = json.loads((folder / "file_list.json").read_text())
    for name in order:
        f = folder / name
        if f.suffix == ".txt" and f.is_file():
            text = _read_text(f)
            yield Document(f"moby-dick/{f.stem}", "moby-dick", text.splitlines()[0].strip() if text else f.stem, text)


def local_documents(path: str | Path) -> Iterator[Document]:
    """Documents of a local text dataset, for users with their own corpus (e.g. a slice of the Pile, P1's data):
    a ``.jsonl`` file (one JSON object per line with a "text" field, as the Pile's shards), or a folder of
    ``.txt`` / ``.jsonl`` files read in sorted order. Document ids are "<file>/<line>" or "<file>"."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text={str(path)!r}: no such file or folder; give a .jsonl file with a 'text' field "
                                "per line, or a folder of .txt / .jsonl files")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
    if not files:
        raise FileNotFoundError(f"text={str(path)!r} holds no .txt or .jsonl file")
    for f in files:
        name = f.name if f == path else str(f.relative_to(path))
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as lines:
                for i, line in enumerate(lines):
                    if line.strip():
                        text = (json.loads(line).get("text") or "").strip()
                        if text:
                            yield Document(f"local/{name}/{i}", "local", f"{name}:{i}", text)
        else:
            text = _read_text(f)
            if text:
                yield Document(f"local/{name}", "local", name, text)


_LOADERS = {"wiki-leads": wiki_leads_documents, "kjv": kjv_documents, "shakespeare": shakespeare_documents,
            "sotu": sotu_documents, "moby-dick": moby_dick_documents}


def iter_documents(sources: Sequence[str] = SOURCES, split: str | None = None,
                   heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, root=None) -> Iterator[Document]:
    """Documents of ``sources`` in order; only those of ``split`` ("train" / "heldout") when given."""
    unknown = set(sources) - set(_LOADERS)
    if unknown:
        raise KeyError(f"unknown text sources {sorted(unknown)}; known: {list(_LOADERS)}")
    for s in sources:
        for doc in _LOADERS[s](root):
            if split is None or split_of(doc, heldout_fraction) == split:
                yield doc


def load_documents(sources: Sequence[str] = SOURCES, split: str | None = None,
                   heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, root=None,
                   text: str | Path | None = None) -> list[Document]:
    """The documents of ``split``: of the packaged ``sources``, or of the local dataset ``text``
    (``local_documents``) when given; the split is the same per-document hash either way."""
    if text is None:
        return list(iter_documents(sources, split, heldout_fraction, root))
    return [d for d in local_documents(text) if split is None or split_of(d, heldout_fraction) == split]


# -------------------------------------------------------------------------------------- split

def _unit_hash(key: str, salt: str = SPLIT_SALT) -> float:
    h = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(doc: Document | str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
             salt: str = SPLIT_SALT) -> str:
    """"heldout" or "train" for a document (or a split key), from a salted hash: deterministic,
    independent of order, and nested (a document held out at fraction f stays held out at f' > f)."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    key = doc.split_key if isinstance(doc, Document) else doc
    return "heldout" if _unit_hash(key, salt) < heldout_fraction else "train"


def split_documents(docs: Iterable[Document], heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
                    salt: str = SPLIT_SALT) -> tuple[list[Document], list[Document]]:
    """(train, heldout), each in the input order."""
    train, held = [], []
    for d in docs:
        (held if split_of(d, heldout_fraction, salt) == "heldout" else train).append(d)
    return train, held


# ------------------------------------------------------------------------------------ windows

@dataclass
class Windows:
    """Token windows [n, context_length]: BOS first; ``mask`` True at real text tokens only.

    ``doc`` is the index (into the documents given) of each position's document, -1 at BOS and
    padding."""
    tokens: torch.Tensor  # int64
    mask: torch.Tensor    # bool
    doc: torch.Tensor     # int32

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    def __getitem__(self, idx) -> Windows:
        return Windows(self.tokens[idx], self.mask[idx], self.doc[idx])

    @staticmethod
    def cat(parts: Sequence[Windows], context_length: int) -> Windows:
        if not parts:
            return Windows(torch.zeros(0, context_length, dtype=torch.int64),
                           torch.zeros(0, context_length, dtype=torch.bool),
                           torch.zeros(0, context_length, dtype=torch.int32))
        return Windows(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                       torch.cat([p.doc for p in parts]))


def special_ids(tokenizer) -> tuple[int, int]:
    """(bos_id, pad_id) for a tokenizer: BOS (else EOS) and PAD (else EOS, else BOS)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start windows with")
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, bos) if t is not None)
    return int(bos), int(pad)


def _windows_from_rows(rows: list[tuple[np.ndarray, np.ndarray]], L: int, bos: int, pad: int) -> Windows:
    n = len(rows)
    tokens = np.full((n, L), pad, dtype=np.int64)
    doc = np.full((n, L), -1, dtype=np.int32)
    tokens[:, 0] = bos
    for i, (t, d) in enumerate(rows):
        tokens[i, 1:1 + len(t)] = t
        doc[i, 1:1 + len(d)] = d
    doc_t = torch.from_numpy(doc)
    return Windows(torch.from_numpy(tokens), doc_t >= 0, doc_t)


def iter_windows(documents: Iterable[Document], tokenizer, context_length: int = 128, pack: bool = True,
                 batch_windows: int = 256, docs_per_batch: int = 64) -> Iterator[Windows]:
    """Tokenise documents lazily into windows of ``context_length`` (BOS + ``context_length - 1`` tokens).

    ``pack=True``: documents are concatenated with a BOS between them and cut into full windows
    (a window may span documents; only the very last one is padded). ``pack=False``: each
    document is cut on its own and its last window padded. Yields Windows of up to
    ``batch_windows`` rows; ``Windows.doc`` indexes the documents in the order given."""
    if context_length < 2:
        raise ValueError("context_length must be at least 2 (BOS + one token)")
    bos, pad = special_ids(tokenizer)
    body = context_length - 1
    carry_t = np.zeros(0, dtype=np.int64)   # packed stream not yet emitted (BOS separators included)
    carry_d = np.zeros(0, dtype=np.int32)   # its document index, -1 at separators
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    started = False  # has any document entered the packed stream yet?

    def flush(force: bool = False):
        nonlocal rows
        while len(rows) >= batch_windows or (force and rows):
            chunk, rows = rows[:batch_windows], rows[batch_windows:]
            yield _windows_from_rows(chunk, context_length, bos, pad)

    def batches():
        batch, start = [], 0
        for i, d in enumerate(documents):
            batch.append(d)
            if len(batch) == docs_per_batch:
                yield start, batch
                start, batch = i + 1, []
        if batch:
            yield start, batch

    for start, batch in batches():
        ids = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        if pack:
            pieces_t, pieces_d = [carry_t], [carry_d]
            for j, t in enumerate(ids):
                if not t:
                    continue
                if started:  # a BOS separator before every document but the first
                    pieces_t.append(np.array([bos], dtype=np.int64))
                    pieces_d.append(np.array([-1], dtype=np.int32))
                pieces_t.append(np.asarray(t, dtype=np.int64))
                pieces_d.append(np.full(len(t), start + j, dtype=np.int32))
                started = True
            stream_t, stream_d = np.concatenate(pieces_t), np.concatenate(pieces_d)
            pos = 0
            while True:
                if pos < len(stream_t) and stream_d[pos] < 0:
                    pos += 1  # a separator at a window's start: the window's own BOS stands for it
                if len(stream_t) - pos < body:
                    break
                rows.append((stream_t[pos:pos + body], stream_d[pos:pos + body]))
                pos += body
            carry_t, carry_d = stream_t[pos:], stream_d[pos:]
        else:
            for j, t in enumerate(ids):
                t = np.asarray(t, dtype=np.int64)
                for k in range(0, len(t), body):
                    piece = t[k:k + body]
                    rows.append((piece, np.full(len(piece), start + j, dtype=np.int32)))
        yield from flush()
    if pack and len(carry_t) and (carry_d >= 0).any():
        if carry_d[0] < 0:
            carry_t, carry_d = carry_t[1:], carry_d[1:]
        rows.append((carry_t, carry_d))
    yield from flush(force=True)


def tokenize_windows(documents: Iterable[Document], tokenizer, context_length: int = 128, pack: bool = True,
                     max_windows: int | None = None) -> Windows:
    """All windows (or the first ``max_windows``) of ``documents``; see :func:`iter_windows`."""
    parts, n = [], 0
    for w in iter_windows(documents, tokenizer, context_length, pack):
        if max_windows is not None and n + len(w) >= max_windows:
            parts.append(w[: max_windows - n])
            break
        parts.append(w)
        n += len(w)
    return Windows.cat(parts, context_length)
