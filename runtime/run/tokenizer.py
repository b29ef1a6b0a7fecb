"""CLIP's byte-level BPE tokenizer, without torch.

A text query must become exactly the token ids open_clip would feed its text tower,
or the text embedding silently drifts from the image space. This is a line-for-line
port of ``open_clip.tokenizer.SimpleTokenizer`` (clean="lower", no reduction mask)
returning numpy arrays instead of torch tensors.

Exactness needs two small pure-python dependencies, the same ones open_clip uses:
``ftfy`` (``fix_text`` repairs mojibake and normalizes unicode; no stdlib equivalent)
and ``regex`` (the split pattern uses ``\\p{L}`` / ``\\p{N}``, which ``re`` lacks; a
``re`` approximation with ``[^\\W\\d_]`` disagrees on marks and CJK numerals). Both are
in simx's install_requires. The BPE merges ship as package data (``data/``), the
very file open_clip ships; its sha256 is recorded in text-model metadata.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import string
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from simx.core.errors import SimxError

DEFAULT_CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
TOKENIZER_NAME = "clip-bpe-49408"  # open_clip SimpleTokenizer, clean="lower"
_N_MERGES = 49152 - 256 - 2  # the merges CLIP was trained with; the file holds more


def _vocab_path() -> Path:
    return Path(str(resources.files("simx.run").joinpath("data", VOCAB_FILE)))


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character map (keeps BPE off whitespace/control)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _deps():
    try:
        import ftfy
        import regex
    except ImportError as e:  # pragma: no cover - both are install_requires
        raise SimxError(
            f"text queries need {e.name} (exact CLIP tokenization): pip install ftfy regex"
        ) from None
    return ftfy, regex


def basic_clean(text: str) -> str:
    """ftfy, then a double HTML unescape, then strip: the first step of every open_clip clean."""
    ftfy, _ = _deps()
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def clean_whitespace(text: str) -> str:
    """open_clip's ``clean="whitespace"`` (its HFTokenizer default): basic, collapse whitespace."""
    return " ".join(basic_clean(text).split()).strip()


def clean_lower(text: str) -> str:
    """open_clip's ``clean="lower"`` (the CLIP BPE default): whitespace clean, lower-cased."""
    return clean_whitespace(text).lower()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_canonicalize(text: str) -> str:
    """open_clip's ``clean="canonicalize"`` (SigLIP, SigLIP2, some mT5 models): basic, then
    big_vision's canonicalization: "_" to space, ASCII punctuation removed, lower-cased,
    whitespace collapsed."""
    text = basic_clean(text).replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


CLEAN_FNS = {"whitespace": clean_whitespace, "lower": clean_lower, "canonicalize": clean_canonicalize}


def get_clean_fn(name: str) -> Callable[[str], str]:
    """The cleaning function open_clip's ``get_clean_fn(name)`` returns."""
    try:
        return CLEAN_FNS[name]
    except KeyError:
        raise SimxError(f"unknown text clean {name!r}; choose from {', '.join(CLEAN_FNS)}") from None


class ClipTokenizer:
    """Text -> int64 token ids of shape [N, context_length], as ``open_clip.tokenize``."""

    def __init__(self, vocab_path: str | Path | None = None,
                 context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        path = Path(vocab_path) if vocab_path else _vocab_path()
        if not path.is_file():
            raise SimxError(f"BPE vocabulary not found: {path}")
        raw = path.read_bytes()
        self.vocab_sha256 = hashlib.sha256(raw).hexdigest()
        merges_txt = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges_txt]
        b2u = bytes_to_unicode()
        vocab = list(b2u.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>"]
        vocab += special
        self.encoder: dict[str, int] = {t: i for i, t in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, ...], int] = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = b2u
        self.byte_decoder = {v: k for k, v in b2u.items()}
        self._cache: dict[str, str] = {t: t for t in special}
        _, regex = _deps()
        self._pat = regex.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)

    def bpe(self, token: str) -> str:
        """Greedy lowest-rank merging of one pre-token (byte-mapped), cached."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        if len(word) == 1:
            return token + "</w>"  # open_clip does not cache this case either
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            out: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    out.extend(word[i:])
                    break
                out.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        for tok in self._pat.findall(clean_lower(text)):
            mapped = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Best-effort inverse of encode (lower-cased, cleaned), for debugging."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """[N, context_length] int64: sot + ids + eot, zero-padded.

        Over-long texts are cut to context_length with the last position forced to
        eot, as open_clip does (the text tower pools at the argmax id, i.e. the eot).
        """
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = int(context_length or self.context_length)
        if n_ctx < 2:
            raise SimxError(f"context length {n_ctx} is too small (need >= 2)")
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise SimxError(f"text query {row} is {type(text).__name__}, not str")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > n_ctx:
                ids = ids[:n_ctx]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


@lru_cache(maxsize=4)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """A shared tokenizer (building one parses 48k merges: ~0.2 s)."""
    return ClipTokenizer(context_length=context_length)


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """``open_clip.tokenize`` without torch."""
    return get_tokenizer(context_length)(texts)
