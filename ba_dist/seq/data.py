"""Text sources and tokenization for the sequence tasks.

Language modelling (word level, as Merity et al. / the paper's PTB row)::

    ptb            Penn Treebank from its standard files in ``data_dir``:
                   ptb.train.txt, ptb.valid.txt, ptb.test.txt (Mikolov's
                   simple-examples/data). One sentence per line, ``<eos>`` appended.
    python_docs    offline stand-in: the English prose of Python's own language
                   reference (``pydoc_data/topics.py``, ~460k characters, ships
                   with CPython), turned into PTB-like sentences.

Translation (the paper's WMT row)::

    wmt16_en_de    WMT16 English -> German through tensorflow_datasets
                   (``wmt16_translate/de-en``: train 4.5M pairs, validation =
                   newstest2015, test = newstest2016). Needs a network or a
                   prepared ``data_dir``.
    synthetic      offline stand-in: a generated language pair. The source is a
                   sentence of pseudo-words, the target the same sentence
                   reversed with every word replaced by its translation (a
                   fixed bijection of lexicons), so it needs attention over the
                   whole source and has exactly one correct answer.

Token ids. Word vocabularies: 0 padding (never a target), 1 ``<eos>``,
2 ``<unk>``, then words by decreasing training frequency. Subword vocabulary
(shared by source and target, as the shared embeddings need): 0 padding, the
ids of ``tfds.deprecated.text.SubwordTextEncoder``, then EOS and BOS.

Everything here is pure Python/numpy (no Horovod); ``prepare_*`` take an
``is_chief`` flag and a ``barrier`` so rank 0 builds the vocabulary and the
encoded arrays once into the workdir while the other ranks wait and then read
the same files (memory-mapped: one copy in the page cache per node).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "DataError", "PAD", "WordVocab", "SubwordVocab", "Ragged",
    "LM_CORPORA", "TRANSLATION_CORPORA", "read_ptb", "python_docs_corpus",
    "wmt16_en_de", "synthetic_translation", "prepare_lm", "prepare_translation", "references",
]

PAD = 0
SPLITS = ("train", "valid", "test")


class DataError(RuntimeError):
    """A corpus that cannot be found or read; the message names the file and the fix."""


# ----------------------------------------------------------------------------- vocabularies
class WordVocab:
    """Word-level vocabulary: 0 ``<pad>``, 1 ``<eos>``, 2 ``<unk>``, then words by frequency."""

    SPECIALS = ("<pad>", "<eos>", "<unk>")
    EOS, UNK = 1, 2

    def __init__(self, words: Sequence[str]):
        if tuple(words[:3]) != self.SPECIALS:
            raise ValueError(f"a word vocabulary starts with {self.SPECIALS}, got {tuple(words[:3])}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_size: Optional[int] = None) -> "WordVocab":
        """Most frequent words first (ties alphabetically, so the result is deterministic)."""
        counts = collections.Counter(w for s in sentences for w in s if w not in cls.SPECIALS)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[:max(0, max_size - len(cls.SPECIALS))]
        return cls(list(cls.SPECIALS) + ranked)

    @property
    def size(self) -> int:
        return len(self.words)

    def encode_stream(self, sentences: Iterable[Sequence[str]]) -> np.ndarray:
        """One int32 stream: every sentence's ids followed by ``<eos>`` (PTB convention)."""
        ids = []
        for s in sentences:
            ids.extend(self.index.get(w, self.UNK) for w in s)
            ids.append(self.EOS)
        return np.asarray(ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != PAD)

    def save(self, path: Path) -> None:
        Path(path).write_text("\n".join(self.words) + "\n")

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        return cls(Path(path).read_text().splitlines())


class SubwordVocab:
    """Shared source/target subwords (``tfds.deprecated.text.SubwordTextEncoder``) + EOS + BOS.

    ``encode`` appends EOS; the decoder input starts with BOS. The encoder is
    invertible (``decode(encode(s)) == s``), so BLEU is computed on plain text.
    """

    def __init__(self, encoder):
        self.encoder = encoder
        self.eos = encoder.vocab_size
        self.bos = encoder.vocab_size + 1

    @classmethod
    def build(cls, texts: Iterable[str], target_size: int, max_corpus_chars: Optional[int] = None) -> "SubwordVocab":
        import tensorflow_datasets as tfds
        enc = tfds.deprecated.text.SubwordTextEncoder.build_from_corpus(
            texts, target_vocab_size=target_size, max_corpus_chars=max_corpus_chars)
        return cls(enc)

    @classmethod
    def from_subwords(cls, subwords: Sequence[str]) -> "SubwordVocab":
        import tensorflow_datasets as tfds
        return cls(tfds.deprecated.text.SubwordTextEncoder(vocab_list=list(subwords)))

    @property
    def size(self) -> int:
        return self.encoder.vocab_size + 2

    def encode(self, text: str) -> list[int]:
        return self.encoder.encode(text) + [self.eos]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i not in (PAD, self.bos):
                out.append(i)
        return self.encoder.decode(out)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.encoder.subwords))

    @classmethod
    def load(cls, path: Path) -> "SubwordVocab":
        return cls.from_subwords(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------- ragged storage
@dataclasses.dataclass
class Ragged:
    """Variable-length int sequences as one flat array plus offsets (``len(offsets) == n + 1``)."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> "Ragged":
        lens = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        values = np.fromiter((i for s in seqs for i in s), np.int32, int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.values[self.offsets[i]:self.offsets[i + 1]])

    def save(self, prefix: Path) -> None:
        np.save(f"{prefix}.values.npy", self.values)
        np.save(f"{prefix}.offsets.npy", self.offsets)

    @classmethod
    def load(cls, prefix: Path) -> "Ragged":
        return cls(np.load(f"{prefix}.values.npy", mmap_mode="r"), np.load(f"{prefix}.offsets.npy"))


# ----------------------------------------------------------------------------- LM corpora
def read_ptb(data_dir: str) -> dict[str, list[list[str]]]:
    """PTB's three files as sentences of words (the files are already tokenized, with ``<unk>``)."""
    if not data_dir:
        raise DataError("input.data_dir is empty: point it at the directory holding ptb.train.txt, "
                        "ptb.valid.txt and ptb.test.txt (simple-examples/data of Mikolov's PTB release)")
    out = {}
    for split in SPLITS:
        path = Path(data_dir) / f"ptb.{split}.txt"
        if not path.is_file():
            raise DataError(f"PTB file {path} not found: input.data_dir must hold ptb.train.txt, "
                            f"ptb.valid.txt and ptb.test.txt")
        out[split] = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return out


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")


def _looks_like_code(para: str) -> bool:
    """Grammar rules, interpreter sessions and code: few letters, or their markers."""
    if "::=" in para or ">>>" in para or "...:" in para:
        return True
    text = para.strip()
    return not text or sum(c.isalpha() or c.isspace() for c in text) / len(text) < 0.9


def python_docs_corpus(valid_every: int = 20) -> dict[str, list[list[str]]]:
    """PTB-like sentences from the prose of ``pydoc_data.topics`` (ships with CPython).

    Paragraphs of grammar or code and heading underlines are skipped; the
    rest is split into sentences, lower-cased, numbers become ``N`` as in
    PTB. Sentence ``i`` goes to valid if ``i % valid_every == 0``, to test if
    ``== 1``, else to train (~90% / 5% / 5%).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise DataError("this Python has no pydoc_data.topics; use input.dataset='ptb' with input.data_dir") from e
    sentences = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            if _looks_like_code(para):
                continue
            lines = [l for l in para.splitlines() if l.strip() and not re.fullmatch(r"[*=\-~^\"]+", l.strip())]
            text = " ".join(l.strip() for l in lines)
            for sent in _SENTENCE_END.split(text):
                words = ["N" if w[0].isdigit() else w for w in _WORD.findall(sent.lower())]
                if len(words) >= 3:
                    sentences.append(words)
    out = {s: [] for s in SPLITS}
    for i, s in enumerate(sentences):
        out["valid" if i % valid_every == 0 else "test" if i % valid_every == 1 else "train"].append(s)
    return out


LM_CORPORA: dict[str, Callable[..., dict]] = {
    "ptb": lambda data_dir="", **_: read_ptb(data_dir),
    "python_docs": lambda **_: python_docs_corpus(),
}


# ----------------------------------------------------------------------------- translation corpora
_TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def wmt16_en_de(split: str, data_dir: str = "", download: bool = False,
                max_examples: int = -1) -> tuple[list[str], list[str]]:
    """English sources and German references of one WMT16 split via tensorflow_datasets."""
    import tensorflow_datasets as tfds
    tsplit = _TFDS_SPLITS[split] + (f"[:{max_examples}]" if max_examples > 0 else "")
    try:
        ds = tfds.load("wmt16_translate/de-en", split=tsplit, data_dir=data_dir or None, download=download)
    except Exception as e:  # DatasetNotFoundError, missing manual files, no network...
        raise DataError(f"cannot load tensorflow_datasets 'wmt16_translate/de-en' split {tsplit!r} "
                        f"(data_dir={data_dir or 'default'}, download={download}): {type(e).__name__}: {e}. "
                        f"Prepare it once with network access (input.download=True or `tfds build "
                        f"wmt16_translate/de-en`) and pass input.data_dir") from e
    src, tgt = [], []
    for ex in tfds.as_numpy(ds):
        src.append(ex["en"].decode("utf-8"))
        tgt.append(ex["de"].decode("utf-8"))
    return src, tgt


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _lexicon(rng: np.random.Generator, size: int, syllables: int) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES, syllables)))
    return sorted(words)


def synthetic_translation(split: str, num_examples: int, lexicon_size: int = 40, min_len: int = 3,
                          max_len: int = 8, seed: int = 0) -> tuple[list[str], list[str]]:
    """A generated language pair: target = source reversed, each word translated.

    The two lexicons depend only on ``seed`` (so every split shares them); the
    sentences of each split come from their own stream, so splits differ.
    """
    lex_rng = np.random.default_rng([seed, 0])
    src_lex = _lexicon(lex_rng, lexicon_size, 2)
    tgt_lex = _lexicon(lex_rng, lexicon_size, 3)
    translation = dict(zip(src_lex, lex_rng.permutation(tgt_lex)))
    rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
    src, tgt = [], []
    for _ in range(num_examples):
        words = list(rng.choice(src_lex, rng.integers(min_len, max_len + 1)))
        src.append(" ".join(words))
        tgt.append(" ".join(translation[w] for w in reversed(words)))
    return src, tgt


TRANSLATION_CORPORA: dict[str, Callable[..., tuple[list[str], list[str]]]] = {
    "wmt16_en_de": lambda split, data_dir="", download=False, max_examples=-1, **_:
        wmt16_en_de(split, data_dir, download, max_examples),
    "synthetic": lambda split, num_examples=None, seed=0, **kw:
        synthetic_translation(split, num_examples[split], seed=seed, **kw),
}


# ----------------------------------------------------------------------------- preparation (rank 0 builds)
def _done(directory: Path) -> bool:
    return (directory / "DONE").is_file()


def prepare_lm(corpus: str, cache: Path, is_chief: bool, barrier: Callable[[], None],
               max_vocab: Optional[int] = None, **corpus_kwargs) -> tuple[WordVocab, dict[str, np.ndarray]]:
    """Vocabulary and one id stream per split, built once by rank 0 into ``cache``.

    Returns the vocabulary and ``{split: int32 stream}`` (memory-mapped).
    """
    if corpus not in LM_CORPORA:
        raise DataError(f"unknown language-model corpus {corpus!r}; known: {', '.join(LM_CORPORA)}")
    cache = Path(cache)
    if is_chief and not _done(cache):
        cache.mkdir(parents=True, exist_ok=True)
        text = LM_CORPORA[corpus](**corpus_kwargs)
        vocab = WordVocab.build(text["train"], max_vocab)
        vocab.save(cache / "vocab.txt")
        for split in SPLITS:
            np.save(cache / f"{split}.npy", vocab.encode_stream(text[split]))
        (cache / "DONE").write_text(corpus)
    barrier()
    if not _done(cache):
        raise DataError(f"data cache {cache} is incomplete (no DONE file) although rank 0 prepared it: "
                        f"is the workdir on a filesystem every rank sees?")
    vocab = WordVocab.load(cache / "vocab.txt")
    return vocab, {s: np.load(cache / f"{s}.npy", mmap_mode="r") for s in SPLITS}


def prepare_translation(corpus: str, cache: Path, is_chief: bool, barrier: Callable[[], None],
                        vocab_size: int, max_len: int, vocab_sentences: int = 200_000,
                        max_corpus_chars: Optional[int] = None, splits: Sequence[str] = SPLITS,
                        **corpus_kwargs) -> tuple[SubwordVocab, dict[str, tuple[Ragged, Ragged]]]:
    """Subword vocabulary and encoded (source, target) pairs per split, built once by rank 0.

    The vocabulary is learnt from the first ``vocab_sentences`` training pairs
    (both sides). Training pairs with a side longer than ``max_len`` tokens
    (EOS included) are dropped; evaluation splits are kept whole. The raw
    target texts of the evaluation splits are saved too: BLEU is computed
    against them.
    """
    if corpus not in TRANSLATION_CORPORA:
        raise DataError(f"unknown translation corpus {corpus!r}; known: {', '.join(TRANSLATION_CORPORA)}")
    cache = Path(cache)
    if is_chief and not _done(cache):
        cache.mkdir(parents=True, exist_ok=True)
        load = TRANSLATION_CORPORA[corpus]
        texts = {s: load(s, **corpus_kwargs) for s in splits}
        src, tgt = texts["train"]
        n = min(len(src), vocab_sentences)
        vocab = SubwordVocab.build((t for pair in zip(src[:n], tgt[:n]) for t in pair), vocab_size, max_corpus_chars)
        vocab.save(cache / "vocab.json")
        for split, (src, tgt) in texts.items():
            s_ids = [vocab.encode(t) for t in src]
            t_ids = [vocab.encode(t) for t in tgt]
            if split == "train":
                keep = [i for i in range(len(src)) if len(s_ids[i]) <= max_len and len(t_ids[i]) <= max_len]
                s_ids, t_ids = [s_ids[i] for i in keep], [t_ids[i] for i in keep]
            else:
                (cache / f"{split}.ref.json").write_text(json.dumps(tgt))
            Ragged.from_lists(s_ids).save(cache / f"{split}.src")
            Ragged.from_lists(t_ids).save(cache / f"{split}.tgt")
        (cache / "DONE").write_text(corpus)
    barrier()
    if not _done(cache):
        raise DataError(f"data cache {cache} is incomplete (no DONE file) although rank 0 prepared it: "
                        f"is the workdir on a filesystem every rank sees?")
    vocab = SubwordVocab.load(cache / "vocab.json")
    return vocab, {s: (Ragged.load(cache / f"{s}.src"), Ragged.load(cache / f"{s}.tgt")) for s in splits}


def references(cache: Path, split: str) -> list[str]:
    """Raw target sentences of an evaluation split (what BLEU compares against)."""
    return json.loads((Path(cache) / f"{split}.ref.json").read_text())
