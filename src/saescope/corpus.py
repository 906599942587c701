"""Text sources for corpus capture, and their chunking into fixed-length token contexts.

Sources: ``wiki`` (the Wikipedia sample bundled in the gensim wheel: 206 articles, CC BY-SA), a ``.txt`` file,
a ``.jsonl`` file (one JSON object per line, text under ``text_field``), a folder of those, or a local HF
``datasets`` directory (``save_to_disk`` output).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError

log = logging.getLogger(__name__)

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wiki_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SaescopeError("corpus 'wiki' needs gensim (the sample ships in its wheel): pip install 'saescope[corpus]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / WIKI_FILE
    if not path.is_file():
        raise SaescopeError(f"corpus 'wiki': {path} is missing from the gensim install; reinstall gensim")
    return path


def iter_wiki(min_chars: int = 200) -> Iterator[str]:
    """Clean article texts from the bundled Wikipedia dump (gensim's own extract_pages + filter_wiki)."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(wiki_path(), "rb") as f:
        for _title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
            clean = filter_wiki(text)
            # filter_wiki leaves runs of blank lines and stray markup lines; keep readable paragraphs.
            clean = clean.replace("'''", "").replace("''", "")  # bold/italic quote markup
            paras = [" ".join(p.split()) for p in clean.split("\n\n")]
            body = "\n\n".join(p for p in paras if len(p) > 40 and not p.startswith(("|", "{", "!")))
            if len(body) >= min_chars and not body.lower().startswith("#redirect"):
                yield body


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SaescopeError(f"{path}:{n}: not valid JSON; each line must be one JSON object") from None
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise SaescopeError(f"{path}:{n}: no string field '{field}'; pass --text-field NAME")
            yield text


def _iter_hf_dataset(path: Path, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise SaescopeError(f"{path}: a HF datasets directory needs `pip install datasets`") from None
    ds: Any = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if field not in ds.column_names:
        raise SaescopeError(f"{path}: no column '{field}' (columns: {', '.join(ds.column_names)}); pass --text-field")
    for row in ds:
        yield row[field]


def iter_texts(corpus: str, text_field: str = "text") -> Iterator[str]:
    """Documents of a corpus spec, in a fixed order."""
    if corpus == "wiki":
        yield from iter_wiki()
        return
    path = Path(corpus).expanduser()
    if not path.exists():
        raise SaescopeError(f"corpus '{corpus}': no such file or directory; use 'wiki', a .txt/.jsonl file or a folder")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _iter_hf_dataset(path, text_field)
            return
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise SaescopeError(f"corpus '{corpus}': folder holds no .txt or .jsonl files")
        for p in files:
            yield from iter_texts(str(p), text_field)
        return
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field)
    elif path.suffix == ".txt":
        yield _read_txt(path)
    else:
        raise SaescopeError(f"corpus '{corpus}': unsupported file type {path.suffix!r}; use .txt or .jsonl")


def _read_txt(path: Path) -> str:
    """A .txt corpus file; empty or whitespace-only is an error, bytes that are not UTF-8 (a binary file?) a warning
    (they are read as U+FFFD)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise SaescopeError(f"corpus '{path}': the file is {'empty' if not raw else 'only whitespace'}; "
                            f"pass a corpus with text in it (or 'wiki')")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        log.warning("corpus '%s': not UTF-8 text (a binary file?) from byte %d; %d undecodable bytes are read as "
                    "U+FFFD", path, e.start, text.count("\ufffd"))
        return text


def iter_contexts(tokenizer: Any, texts: Iterator[str], context_len: int, add_bos: bool = True) -> Iterator[list[int]]:
    """Pack documents into fixed-length token contexts: [BOS] + (context_len - 1) tokens, documents joined by EOS.

    The trailing partial context is dropped so that every context has the same length (no padding needed).
    """
    bos = tokenizer.bos_token_id if add_bos else None
    eos = tokenizer.eos_token_id
    body = context_len - (1 if bos is not None else 0)
    if body < 1:
        raise SaescopeError(f"context_len {context_len} is too short")
    buf: list[int] = []
    for text in texts:
        if not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        buf.extend(ids)
        if eos is not None:
            buf.append(eos)
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            yield ([bos] if bos is not None else []) + chunk


@dataclass
class CorpusConfig:
    """Where the text comes from (shared by capture and collate)."""

    corpus: str = "wiki"
    """wiki (bundled Wikipedia sample), a .txt/.jsonl file, a folder of them, or a HF datasets directory."""
    text_field: str = "text"
    """Text field of .jsonl rows / dataset columns."""
    shuffle_docs: int = 0
    """Documents held in a seeded shuffle buffer, so contexts come from documents spread over the corpus rather
    than its first ones (0 = the corpus order). A buffer as large as the corpus is a full shuffle."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.shuffle_docs, 0, "--shuffle_docs", "0 = the corpus order")
        path = Path(self.corpus).expanduser()
        if self.corpus == "wiki" or not path.exists():  # a missing path is reported where it is read
            return
        if path.is_file() and path.suffix not in (".txt", ".jsonl"):
            raise SaescopeError(f"--corpus {self.corpus}: unsupported file type {path.suffix!r}; use .txt or .jsonl")
        if path.is_file() and path.stat().st_size == 0:
            raise SaescopeError(f"--corpus {self.corpus}: the file is empty; pass a corpus with text in it")

    def texts(self) -> Iterator[str]:
        docs = iter_texts(self.corpus, self.text_field)
        return shuffled_docs(docs, self.shuffle_docs) if self.shuffle_docs > 0 else docs

    def describe(self) -> dict[str, Any]:
        return {**describe(self.corpus), "text_field": self.text_field, "shuffle_docs": self.shuffle_docs}


def shuffled_docs(docs: Iterator[str], buffer: int, seed: int = 0) -> Iterator[str]:
    """A deterministic streaming shuffle: fill a buffer, then emit a random element per document read."""
    import random

    rng = random.Random(seed)
    buf: list[str] = []
    for d in docs:
        if len(buf) < buffer:
            buf.append(d)
            continue
        j = rng.randrange(buffer)
        yield buf[j]
        buf[j] = d
    rng.shuffle(buf)
    yield from buf


def describe(corpus: str) -> dict[str, Any]:
    """A stable description of a corpus, part of a store's identity (resume must see the same source)."""
    if corpus == "wiki":
        return {"kind": "wiki", "path": WIKI_FILE}
    path = Path(corpus).expanduser().resolve()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return {"kind": "dir" if path.is_dir() else path.suffix.lstrip("."), "path": str(path), "bytes": size}
