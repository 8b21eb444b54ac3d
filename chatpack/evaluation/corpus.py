"""The damage report's text corpus: documents of prose, code and dialogue, cut into teacher-forcing windows.

``data/damage_corpus.jsonl`` holds one document per line::

    {"id": "prose-lighthouse", "genre": "prose", "source": "written for this project", "text": "..."}

Windows are cut per document (a window never spans two documents) and ordered round-robin over the genres, so a
token budget smaller than the corpus still covers every genre in the same proportion, and always the same windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Callable

from chatpack.evaluation.data import read_jsonl
from chatpack.project import PROJECT_ROOT

DEFAULT_CORPUS = PROJECT_ROOT / "data" / "damage_corpus.jsonl"
GENRES = ("prose", "code", "dialogue")
MIN_WINDOW = 16  # shorter document tails are dropped: too little context to judge a prediction


@dataclass(frozen=True)
class Document:
    id: str
    genre: str
    source: str
    text: str


@dataclass(frozen=True)
class Window:
    doc_id: str
    genre: str
    ids: tuple[int, ...]

    @property
    def scored(self) -> int:
        """Tokens predicted from context in this window (every one but the first)."""
        return len(self.ids) - 1


def load_corpus(path: str | Path = DEFAULT_CORPUS) -> list[Document]:
    """Read and check the corpus; errors name the line and the field."""
    docs, seen = [], set()
    for where, obj in read_jsonl(path, "corpus"):
        for key in ("id", "genre", "source", "text"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
        if obj["genre"] not in GENRES:
            raise ValueError(f"{where}: genre '{obj['genre']}' is not one of {', '.join(GENRES)}")
        if obj["id"] in seen:
            raise ValueError(f"{where}: duplicate id '{obj['id']}'")
        seen.add(obj["id"])
        docs.append(Document(obj["id"], obj["genre"], obj["source"], obj["text"]))
    if not docs:
        raise ValueError(f"corpus: {path} has no documents")
    return docs


def corpus_sha256(path: str | Path = DEFAULT_CORPUS) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cut_windows(docs: list[Document], encode: Callable[[str], list[int]], window: int, budget: int) -> list[Window]:
    """Windows of at most ``window`` tokens, genres interleaved, until ``budget`` scored tokens (0 = all of them).

    The last window taken is shortened so the total is exactly the budget when the corpus has that many tokens.
    """
    if window < MIN_WINDOW:
        raise ValueError(f"window: {window} tokens is too short (at least {MIN_WINDOW})")
    by_genre: dict[str, list[Window]] = {}
    for doc in docs:
        ids = encode(doc.text)
        for start in range(0, len(ids), window):
            chunk = tuple(ids[start:start + window])
            if len(chunk) >= MIN_WINDOW:
                by_genre.setdefault(doc.genre, []).append(Window(doc.id, doc.genre, chunk))
    ordered = [w for group in zip_longest(*(by_genre[g] for g in GENRES if g in by_genre)) for w in group if w]
    if budget <= 0:
        return ordered
    taken, total = [], 0
    for w in ordered:
        if total >= budget:
            break
        keep = min(len(w.ids), budget - total + 1)
        if keep < MIN_WINDOW:
            break
        taken.append(Window(w.doc_id, w.genre, w.ids[:keep]))
        total += keep - 1
    return taken


def corpus_tokens(docs: list[Document], encode: Callable[[str], list[int]]) -> dict[str, int]:
    """Tokens per genre (and ``total``) under a tokenizer: what the README's corpus description quotes."""
    counts = {g: 0 for g in GENRES}
    for doc in docs:
        counts[doc.genre] += len(encode(doc.text))
    return {**counts, "total": sum(counts.values())}
