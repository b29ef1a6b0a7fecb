"""``simx bench --images``: the pipeline's stages on real files.

Each image is decoded and preprocessed once, one at a time, to time those stages per
image (and to feed the model-only phase real tensors); the end-to-end phase then embeds
the same files through the real Encoder (threaded decode overlapped with inference).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simx.core.errors import SimxError

#: Cap on distinct images decoded for the stage split.
MAX_STAGE_IMAGES = 256


@dataclass
class ImageSet:
    """The files of a ``--images`` folder that decoded, their tensors, and the stage times."""

    paths: list[Path]
    tensors: list[np.ndarray]
    stages: dict[str, Any]


def decode_and_preprocess(paths: Sequence[Path], spec: Any, cap: int = MAX_STAGE_IMAGES) -> ImageSet:
    """Decode and preprocess each image once, one at a time, timing each stage per image.

    Only the paths that decoded are kept: the end-to-end phase runs on those, so one
    corrupt file in the folder cannot abort the benchmark (its count is reported)."""
    from simx.images.decode import load_rgb
    from simx.images.preprocess import preprocess

    t_dec: list[float] = []
    t_pre: list[float] = []
    tensors: list[np.ndarray] = []
    good: list[Path] = []
    skipped = 0
    for p in list(paths)[:cap]:
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(p)
        except SimxError:
            skipped += 1  # unreadable files are the encoder's failed.jsonl business
            continue
        t1 = time.perf_counter()
        x = preprocess(rgb, spec.preprocess)
        t2 = time.perf_counter()
        t_dec.append(t1 - t0)
        t_pre.append(t2 - t1)
        tensors.append(np.asarray(x, dtype=np.float32))
        good.append(p)
    if not tensors:
        raise SimxError(f"none of the {skipped} images could be decoded: nothing to benchmark")
    return ImageSet(good, tensors, {
        "images": len(tensors),
        "skipped": skipped,
        "decode_ms_per_image": float(np.mean(t_dec) * 1e3),
        "preprocess_ms_per_image": float(np.mean(t_pre) * 1e3),
    })


def load_images(folder: Path, spec: Any, say: Callable[[str], None]) -> ImageSet:
    """Find the images under ``folder``, then decode and preprocess them (timed)."""
    from simx.images.decode import find_images

    paths = [Path(p) for p in find_images([folder])]
    if not paths:
        raise SimxError(f"no images found in {folder}")
    say(f"decode + preprocess {min(len(paths), MAX_STAGE_IMAGES)} images, one at a time ...")
    images = decode_and_preprocess(paths, spec)
    if images.stages["skipped"]:
        say(f"skipped {images.stages['skipped']} file(s) that do not decode")
    return images


def make_encoder(model: str, session_kwargs: dict[str, Any]) -> Any:
    from simx.run.encoder import Encoder

    return Encoder(model, **session_kwargs)


def encoder_embed(encoder: Any, paths: Sequence[Path], batch_size: int) -> Any:
    """Embed through the real pipeline (threaded decode overlapped with inference)."""
    kw: dict[str, Any] = {"batch_size": batch_size}
    try:
        params = inspect.signature(encoder.embed).parameters
        if "progress" in params:
            kw["progress"] = False
    except (TypeError, ValueError):
        pass
    return encoder.embed(list(paths), **kw)


def end_to_end_stream(encoder: Any, paths: Sequence[Path], batch: int) -> Callable[[int, int], None]:
    """Warm the encoder up at this batch size, then return ``stream(round, k)``, which
    embeds k of ``paths`` end to end (each round starting further along the list)."""
    encoder_embed(encoder, [paths[i % len(paths)] for i in range(2 * batch)], batch)

    def stream(r: int, k: int) -> None:
        encoder_embed(encoder, [paths[(r * k + i) % len(paths)] for i in range(k)], batch)

    return stream
