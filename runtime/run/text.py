"""Text towers: find the text model that pairs with an image model, tokenize, embed.

A text tower's vectors are only comparable with image embeddings of the same model and
weights, so ``pair_id`` names that identity and ``TextEncoder.check_pair`` refuses a mismatch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simx.core.errors import ModelFileError, SearchError

TEXT_SUFFIX = "-text"




# ----------------------------------------------------------------------------- exact








# ----------------------------------------------------------------------------- faiss






# ----------------------------------------------------------------------------- text
def pair_id(model_id: str, source: str, weights: str) -> str:
    """The identity an image tower and its text tower share: the image model's id, source
    and weights (``pretrained``, ``random`` with simx's seed, or ``sha256:`` of the user's
    checkpoint). The text file records it as ``pair``; a cache's is read from its model_id,
    source and weights, so a text tower of other weights (another checkpoint, random
    vs pretrained) is refused even when the id and the dimension agree."""
    import hashlib
    import json

    blob = json.dumps({"id": model_id, "source": source, "weights": weights}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_model_path(model: str | os.PathLike[str]) -> Path:
    """The text tower that belongs to an image model: ``<stem>-text.onnx`` beside it.

    ``model`` may be the image model (path or id) or the text model itself.
    """
    from simx.run.session import models_dir, resolve_model_path

    from simx.run.session import read_spec

    p = Path(model)
    if p.suffix == ".onnx" and p.stem.endswith(TEXT_SUFFIX) and p.is_file():
        return p
    try:
        image = resolve_model_path(model)
    except ModelFileError:  # no image model: the text tower may still be there
        if p.suffix == ".onnx":
            cands = [p.with_name(p.stem + TEXT_SUFFIX + ".onnx")]
        else:
            cands = [models_dir() / f"{p.name}{TEXT_SUFFIX}.onnx"]
    else:
        cands = [image.with_name(image.stem + TEXT_SUFFIX + ".onnx")]
        # An int8/fp16 image file (<id>-int8.onnx) pairs with the fp32 <id>-text.onnx.
        try:
            cands.append(image.with_name(read_spec(image).id + TEXT_SUFFIX + ".onnx"))
        except ModelFileError:
            pass
    for cand in cands:
        if cand.is_file():
            return cand
    raise ModelFileError(
        f"no text tower {cands[0]} for {model}; export it with "
        "`simx export openclip --model ... --pretrained ... --text`"
    )


class TextEncoder:
    """Tokenizes text and runs a simx text tower: L2-normalized vectors in the image space.

    The tokenizer is the one the model was exported with (CLIP BPE, or the Hugging Face
    tokenizer.json beside it), checked against the sha256 in its metadata, so a
    mismatched vocabulary is an error, not drift.
    """

    def __init__(self, model: str | os.PathLike[str], provider: str = "auto",
                 threads: int | None = None) -> None:
        from simx.run.hf_tokenizer import text_tokenizer
        from simx.run.session import open_model

        self.path = text_model_path(model)
        self._session = open_model(self.path, provider=provider, threads=threads, kind="text")
        extra = self._session.spec.extra
        if extra.get("kind") != "text":
            raise ModelFileError(f"{self.path}: not a simx text tower (spec.extra.kind != 'text')")
        self.context_length = int(extra.get("context_length", 77))
        self.tokenizer = text_tokenizer(self.path, extra)

    @property
    def spec(self) -> Any:
        return self._session.spec

    @property
    def image_model(self) -> str | None:
        """The id of the image tower this text tower pairs with."""
        return self._session.spec.extra.get("image_model")

    @property
    def pair(self) -> str | None:
        """The image tower identity this text tower was exported with (None: older files)."""
        return self._session.spec.extra.get("pair")

    def check_pair(self, model_id: str, source: str | None, weights: str | None,
                   what: str) -> None:
        """Refuse to put this text tower's vectors next to ``what``'s image embeddings
        unless both come from one model (same id, source and weights)."""
        if self.image_model and self.image_model != model_id:
            raise SearchError(f"{self.path.name} is the text tower of {self.image_model}, but "
                              f"{what} holds {model_id} embeddings")
        if self.pair and source is not None and weights is not None:
            want = pair_id(model_id, source, weights)
            if self.pair != want:
                raise SearchError(
                    f"{self.path.name} was exported with other weights than {what} "
                    f"({model_id}, weights {weights}; pair {want} != the text tower's "
                    f"{self.pair}): their embeddings do not share a space; export both together")

    @property
    def dim(self) -> int:
        return self._session.spec.dim

    def embed(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32 L2-normalized text embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        ids = self.tokenizer(list(texts))
        out = np.empty((ids.shape[0], self.dim), np.float32)
        for s in range(0, ids.shape[0], batch_size):
            e = self._session.run(ids[s : s + batch_size])
            # The spec says normalize=True, but a foreign file might not: be sure.
            out[s : s + batch_size] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return out


# ----------------------------------------------------------------------------- cache








