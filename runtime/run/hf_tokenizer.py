"""Hugging Face tokenizers (SigLIP's T5 and Gemma vocabularies, BERT, XLM-R, mT5 ...) without
torch or transformers, and the choice of tokenizer for a simx text model.

open_clip tokenizes these families with its ``HFTokenizer``: clean each text (the model
config's ``clean``: "whitespace" by default, "canonicalize" for SigLIP/SigLIP2), call the
transformers tokenizer with ``max_length=L, padding="max_length", truncation=True``, and
zero the sep token if the config says ``strip_sep_token``. A transformers *fast* tokenizer
does that work in its Rust backend, a ``tokenizers.Tokenizer``: transformers only sets the
backend's truncation (longest_first, stride 0, its truncation side) and padding (fixed
length, its pad token and id, its padding side), then calls ``encode_batch`` with special
tokens (the backend's post-processor adds eos / cls / sep, after truncation, so an eos
stays last in a truncated row). The export therefore saves the very backend transformers
built, as ``<text-model-id>.tokenizer.json`` beside the text model (its sha256 in the
model's metadata), plus those few settings; this module replays them with the
``tokenizers`` library alone (``pip install 'simx-embed[text]'``). The export refuses to
write the file unless the ids equal open_clip's on its probe texts.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simx.core.errors import ModelFileError, SimxError
from simx.run.tokenizer import get_clean_fn, get_tokenizer

TOKENIZER_SUFFIX = ".tokenizer.json"
SIDES = ("right", "left")


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise SimxError("this text model uses a Hugging Face tokenizer, which needs the "
                        "`tokenizers` library: pip install 'simx-embed[text]'") from None
    return tokenizers


@dataclass(frozen=True)
class HFTokenizerSettings:
    """What open_clip and transformers apply around the backend tokenizer (recorded in the
    text model's metadata as ``tokenizer_settings``)."""

    source: str  # open_clip's hf_tokenizer_name, or the folder the files came from
    context_length: int
    clean: str = "whitespace"
    strip_sep_token: bool = False
    sep_token_id: int | None = None
    pad_token_id: int = 0
    pad_token: str = "<pad>"
    padding_side: str = "right"
    truncation_side: str = "right"

    def __post_init__(self) -> None:
        get_clean_fn(self.clean)  # an unknown clean fails here, not on the first query
        if int(self.context_length) < 1:
            raise SimxError(f"tokenizer context length {self.context_length} must be positive")
        for side in (self.padding_side, self.truncation_side):
            if side not in SIDES:
                raise SimxError(f"tokenizer side {side!r} is not one of {', '.join(SIDES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> HFTokenizerSettings:
        if not isinstance(d, dict):
            raise SimxError("tokenizer_settings is not an object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SimxError(f"tokenizer_settings has unknown keys {unknown}; upgrade simx")
        try:
            return cls(**d)
        except TypeError as e:
            raise SimxError(f"malformed tokenizer_settings: {e}") from None


class HFTokenizer:
    """Text -> int64 token ids [N, context_length], as open_clip's ``HFTokenizer`` gives them."""

    def __init__(self, tokenizer_json: str, settings: HFTokenizerSettings) -> None:
        tk = _tokenizers()
        self.settings = settings
        self.json = tokenizer_json
        self.vocab_sha256 = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
        try:
            base = tk.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises its own Exception for a bad file
            raise SimxError(f"not a Hugging Face tokenizer.json: {str(e)[:200]}") from None
        self.vocab_size = int(base.get_vocab_size(with_added_tokens=True))
        self.context_length = int(settings.context_length)
        self._clean = get_clean_fn(settings.clean)
        self._by_length: dict[int, Any] = {}

    @classmethod
    def from_file(cls, path: str | Path, settings: HFTokenizerSettings,
                  sha256: str | None = None) -> HFTokenizer:
        """Load a tokenizer.json, checking its sha256 when the model recorded one."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ModelFileError(f"tokenizer file {path} cannot be read ({e.strerror}); the "
                                 "export writes it beside the text model: copy both") from None
        digest = hashlib.sha256(raw).hexdigest()
        if sha256 and digest != sha256:
            raise ModelFileError(f"{path}: sha256 {digest[:12]}... is not the {sha256[:12]}... "
                                 "the text model was exported with; re-export or copy the right file")
        return cls(raw.decode("utf-8"), settings)

    def _backend(self, n: int) -> Any:
        """The backend set up as transformers sets it for ``max_length=n``, one per length."""
        tok = self._by_length.get(n)
        if tok is None:
            s = self.settings
            tok = _tokenizers().Tokenizer.from_str(self.json)
            tok.enable_truncation(max_length=n, stride=0, strategy="longest_first",
                                  direction=s.truncation_side)
            tok.enable_padding(direction=s.padding_side, pad_id=int(s.pad_token_id), pad_type_id=0,
                               pad_token=s.pad_token, length=n)
            self._by_length[n] = tok
        return tok

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """[N, context_length] int64 ids: cleaned, special tokens added, truncated, padded."""
        if isinstance(texts, str):
            texts = [texts]
        n = int(context_length or self.context_length)
        if n < 1:
            raise SimxError(f"context length {n} is too small")
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise SimxError(f"text query {row} is {type(text).__name__}, not str")
        encs = self._backend(n).encode_batch([self._clean(t) for t in texts], add_special_tokens=True)
        ids = np.array([e.ids for e in encs], dtype=np.int64).reshape(len(texts), n)
        s = self.settings
        if s.strip_sep_token and s.sep_token_id is not None:
            ids[ids == int(s.sep_token_id)] = 0
        return ids


def text_tokenizer(model_path: Path, extra: dict[str, Any]) -> Any:
    """The tokenizer a simx text model was exported with, checked against its metadata.

    A model whose extra names a ``tokenizer_file`` uses that Hugging Face tokenizer (found
    beside the model); any other uses CLIP's BPE, shipped with simx.
    """
    n = int(extra.get("context_length", 77))
    want = extra.get("vocab_sha256")
    name = extra.get("tokenizer_file")
    if name:
        if Path(name).name != name:
            raise ModelFileError(f"{model_path}: tokenizer_file {name!r} is not a plain file name")
        try:
            settings = HFTokenizerSettings.from_dict(extra.get("tokenizer_settings"))
        except SimxError as e:
            raise ModelFileError(f"{model_path}: {e}") from None
        if settings.context_length != n:
            raise ModelFileError(f"{model_path}: tokenizer context length {settings.context_length} "
                                 f"!= the model's {n}")
        return HFTokenizer.from_file(model_path.with_name(name), settings, want)
    tok = get_tokenizer(n)
    if want and want != tok.vocab_sha256:
        raise ModelFileError(
            f"{model_path}: exported with BPE vocabulary {want[:12]}..., simx ships "
            f"{tok.vocab_sha256[:12]}...; re-export or upgrade simx"
        )
    return tok
