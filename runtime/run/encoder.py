"""Batched embedding with decoding and preprocessing overlapped with inference.

Why a pipeline: on the CPU, DINOv2-S costs ~220 core-ms per image and an exact
preprocess 10-30 ms, so decoding in the inference thread would idle the model for
5-15% of the run; on a GPU the model is so fast that decoding *is* the run. A small
thread pool decodes and preprocesses up to ``PREFETCH_BATCHES`` batches ahead while
onnxruntime runs the current batch (both release the GIL), bounded so memory stays flat.

Thread budget (documented choice, so the two pools do not fight over cores):
- onnxruntime intra-op threads: ``threads`` (default: onnxruntime's own, one per core);
- decode workers on the CPU provider: ``max(1, cores // 4)``, at most 4. Decoding needs a
  small fraction of the CPU the model needs, and idle workers cost nothing;
- decode workers on a GPU provider: every core (at most 16), because there the CPU only decodes;
- OpenCV's own thread pool is set to 1 thread (``cv2.setNumThreads(1)``, process-wide):
  parallelism comes from decoding several images at once, not from splitting one.

Default batch size: 8 on the CPU (throughput is flat above 8 there and latency grows),
32 on CUDA/TensorRT (enough to fill the GPU for ViT-S/B at 224 px).

Batch invariance. fp32 on onnxruntime's CPU kernels gives every image bit-identical
numbers whatever its batch mates (measured for DINOv2-S and the tiny test model, any
batch size or thread count), which is what lets an incremental cache equal a clean run
exactly. int8 files come in two kinds (``spec.extra["quantization"]``):

- ``static-qdq`` (the export default): every activation scale was fixed at export from
  calibration photos, so an image's embedding is bit-identical whatever its batch mates
  (export gates it: batch 8 against one at a time). These run in batches.
- ``dynamic`` (and int8 files from before the key existed): the activation scale is
  computed over the whole batch, so one bright image changes its neighbours' embeddings
  (max abs 0.14 measured on a random-weight DINOv2-S int8, random inputs). For those the
  Encoder runs the model one image at a time by default (``per_image``); decoding still
  overlaps.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from simx.core.errors import SimxError, first_line
from simx.images.decode import DECODE_ERRORS, load_rgb
from simx.images.preprocess import preprocess
from simx.run.session import ModelSession, open_model
from simx.model.spec import ModelSpec

if TYPE_CHECKING:
    from simx.run.text import TextEncoder

ImageInput = Union[str, os.PathLike, np.ndarray]

CPU_BATCH = 8
GPU_BATCH = 32
PREFETCH_BATCHES = 2
# A bad input (simx's own errors, and decoder or array-shape errors) is one failure line;
# anything else is a bug and stops the run with its traceback.
PREPARE_ERRORS: tuple[type[BaseException], ...] = (SimxError, *DECODE_ERRORS)


class EmbedError(SimxError):
    """An image that could not be embedded (``Encoder.embed`` raises it; the indexer records it)."""


def _describe(item: ImageInput, index: int) -> str:
    return str(item) if not isinstance(item, np.ndarray) else f"array #{index}"


def _error_text(e: BaseException) -> str:
    """One line for failed.jsonl: simx's own messages as they are, others with their type."""
    msg = first_line(e)
    if isinstance(e, SimxError) or msg == type(e).__name__:
        return msg
    return f"{type(e).__name__}: {msg}"


def default_workers(on_gpu: bool) -> int:
    """Decode workers for the provider (see the module docstring for the reasoning)."""
    cores = os.cpu_count() or 1
    return max(1, min(16, cores)) if on_gpu else max(1, min(4, cores // 4))


#: The ``spec.extra["quantization"]`` value of int8 files that are batch-invariant.
STATIC_INT8 = "static-qdq"


def needs_per_image(spec: ModelSpec) -> bool:
    """Whether a file must run one image at a time to keep results independent of batch
    mates: only int8 that is not static QDQ (dynamic activation scales)."""
    return spec.precision == "int8" and spec.extra.get("quantization") != STATIC_INT8
def sized_workers(prepare_ms: float, model_ms: float, on_gpu: bool, margin: float = 1.25) -> int:
    """Decode workers that hide decoding behind the model: enough that ``workers`` images
    are prepared in the time the model embeds ``workers`` images (``prepare_ms`` per image
    on one worker vs ``model_ms`` per image), with a margin for jitter. Capped by the
    cores this process may use: on the CPU provider a worker beyond that only takes cores
    from the model."""
    from simx.core.machine import usable_cores

    need = math.ceil(margin * prepare_ms / max(model_ms, 1e-6))
    cap = min(16, usable_cores())
    return max(1, min(cap, need))


def _worker_init() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - OpenCV always present in the runtime extras
        pass


@dataclass
class Batch:
    """One step of ``Encoder.iter_embed``: which inputs were embedded and which failed."""

    indices: list[int]  # positions in the input of the rows of ``embeddings``
    embeddings: np.ndarray  # float32 [len(indices), D]
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, one-line error)


class Encoder:
    """Embeds images with an exported simx model.

    ``model`` is an .onnx path or an id found in ``$SIMX_MODELS_DIR`` (default
    ``./onnx_models``). Everything about preprocessing comes from the file's own spec.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        provider: str = "auto",
        threads: int | None = None,
        *,
        exif_transpose: bool = False,
        fast: bool = False,
        workers: int | None = None,
        per_image: bool | None = None,
        precision: str | None = None,
        provider_options: dict[str, str] | None = None,
        device_id: int = 0,
    ) -> None:
        # ``provider`` and ``precision`` come from simx.run.providers' table; precision "auto"
        # calibrates this host's paths and opens the fastest accurate one (simx.run.autoselect).
        self._session: ModelSession = open_model(model, provider=provider, threads=threads,
                                                 precision=precision,
                                                 provider_options=provider_options,
                                                 device_id=device_id)
        self.exif_transpose = exif_transpose
        self.fast = fast
        # Run the model one image at a time, so no image depends on its batch mates.
        self.per_image = needs_per_image(self.spec) if per_image is None else per_image
        # ``workers`` None: start from default_workers, then size the pool from the first
        # batch's measured preprocess and model times (sized_workers).
        self.auto_workers = workers is None
        self.workers = workers or default_workers(self._session.on_gpu)
        self._prep_lock = threading.Lock()
        self._prep_s = 0.0  # summed wall time of prepare() calls, and how many
        self._prep_n = 0
        self._model_ms: float | None = None  # ms per image of the first measured batch
        self.threads = threads
        self._text: TextEncoder | None = None  # built on the first embed_text call

    # -- what the model is ---------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self._session.spec

    @property
    def dim(self) -> int:
        return self._session.spec.dim

    @property
    def providers(self) -> list[str]:
        """The providers onnxruntime actually gave the session (first one runs the model)."""
        return list(self._session.providers)

    @property
    def provider(self) -> str:
        """simx's name of the provider that runs the model (a row of simx.run.providers)."""
        return self._session.provider

    @property
    def precision(self) -> str:
        """The precision that really runs: the file's, or bf16 / fp16 chosen at run time."""
        return self._session.precision

    @property
    def choice(self) -> dict | None:
        """What ``precision="auto"`` measured and chose (None when nothing was chosen)."""
        return self._session.choice

    @property
    def path(self) -> Path:
        return self._session.path

    @property
    def default_batch_size(self) -> int:
        return GPU_BATCH if self._session.on_gpu else CPU_BATCH

    def __repr__(self) -> str:
        return (f"Encoder({self.spec.id!r}, dim={self.dim}, provider={self.provider!r}, "
                f"precision={self.precision!r})")

    # -- one image -----------------------------------------------------------------------
    def prepare(self, item: ImageInput) -> np.ndarray:
        """Decode (if a path) and preprocess one image into the model's float32 [3, S, S]."""
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise EmbedError(
                    f"arrays must be RGB uint8 of shape (H, W, 3); got {item.dtype} {item.shape}"
                )
            rgb = item
        else:
            rgb = load_rgb(item, exif_transpose=self.exif_transpose)
        return preprocess(rgb, self.spec.preprocess, fast=self.fast)

    def _timed_prepare(self, item: ImageInput) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.prepare(item)
        finally:
            with self._prep_lock:
                self._prep_s += time.perf_counter() - t0
                self._prep_n += 1

    def pool_report(self) -> dict[str, float | int | bool | None]:
        """The decode pool's size and the figures it was sized from (for ``simx bench``)."""
        prep = 1e3 * self._prep_s / self._prep_n if self._prep_n else None
        return {"workers": self.workers, "auto": self.auto_workers,
                "prepare_ms_per_image": prep, "model_ms_per_image": self._model_ms,
                "sized_workers": (sized_workers(prep, self._model_ms, self._session.on_gpu)
                                  if prep is not None and self._model_ms else None)}

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Model only: a preprocessed float32 [B, 3, S, S] batch to [B, D].

        In ``per_image`` mode the images go through the model one by one (see the module
        docstring: dynamic int8 would otherwise mix batch mates into each result).
        """
        if self.per_image and len(pixels) > 1:
            return np.concatenate([self._session.run(pixels[i:i + 1]) for i in range(len(pixels))])
        return self._session.run(pixels)

    # -- many images ---------------------------------------------------------------------
    def iter_embed(
        self,
        images: Iterable[ImageInput],
        batch_size: int | None = None,
    ) -> Iterator[Batch]:
        """Embed ``images`` in batches, reporting per-image failures instead of raising.

        Decoding runs ``PREFETCH_BATCHES`` batches ahead in a thread pool. A batch holds
        ``batch_size`` *successfully* prepared images (the last one may hold fewer), so
        a bad file never shrinks the batch the model sees.
        """
        bs = int(batch_size or self.default_batch_size)
        if bs < 1:
            raise SimxError(f"batch size must be at least 1, got {bs}")
        window = bs * (PREFETCH_BATCHES + 1)
        source = enumerate(images)
        pending: deque[tuple[int, Future[np.ndarray]]] = deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="simx-decode",
                                  initializer=_worker_init)

        def fill() -> None:
            while len(pending) < window:
                try:
                    i, item = next(source)
                except StopIteration:
                    return
                pending.append((i, pool.submit(self._timed_prepare, item)))

        runs = 0
        try:
            fill()
            while pending:
                idx: list[int] = []
                arrays: list[np.ndarray] = []
                fails: list[tuple[int, str]] = []
                while pending and len(arrays) < bs:
                    i, fut = pending.popleft()
                    try:
                        arrays.append(fut.result())
                        idx.append(i)
                    except PREPARE_ERRORS as e:  # a bad image: report it, keep going
                        fails.append((i, _error_text(e)))
                    fill()
                if arrays:
                    t0 = time.perf_counter()
                    emb = self.run(np.stack(arrays))
                    runs += 1  # the first call pays one-off set-up: size from the second
                    if self.auto_workers and self._model_ms is None and self._prep_n and runs == 2:
                        self._model_ms = 1e3 * (time.perf_counter() - t0) / len(arrays)
                        want = sized_workers(1e3 * self._prep_s / self._prep_n, self._model_ms,
                                             self._session.on_gpu)
                        if want > self.workers:  # new work goes to a bigger pool
                            pool.shutdown(wait=False)  # its queued items still run
                            self.workers = want
                            pool = ThreadPoolExecutor(want, thread_name_prefix="simx-decode",
                                                      initializer=_worker_init)
                else:
                    emb = np.zeros((0, self.dim), np.float32)
                yield Batch(idx, emb, fails)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def embed(self, images: Sequence[ImageInput], batch_size: int | None = None) -> np.ndarray:
        """Embed paths and/or RGB uint8 arrays into float32 [N, D], in input order.

        Raises EmbedError on the first image that cannot be decoded; use
        ``iter_embed`` (or ``simx embed``) to skip bad files instead.
        """
        items = list(images)
        out = np.empty((len(items), self.dim), np.float32)
        for batch in self.iter_embed(items, batch_size):
            if batch.failures:
                i, err = batch.failures[0]
                raise EmbedError(f"{_describe(items[i], i)}: {err}")
            out[batch.indices] = batch.embeddings
        return out

    def embed_text(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Text queries as L2-normalized float32 [N, D] in this model's embedding space.

        Needs the OpenCLIP text tower exported beside the model (``<id>-text.onnx``, from
        ``simx export openclip ... --text``); ``simx.search.TextEncoder`` does the work.
        """
        from simx.run.text import TextEncoder

        if self._text is None:
            text = TextEncoder(self.path, provider="cuda" if self._session.on_gpu else "cpu",
                               threads=self.threads)
            text.check_pair(self.spec.id, self.spec.source, self.spec.weights, str(self.path))
            self._text = text
        if self._text.dim != self.dim:
            raise SimxError(f"text tower {self._text.path} gives {self._text.dim}-d vectors, "
                            f"the image model {self.dim}-d")
        return self._text.embed(texts, batch_size)
