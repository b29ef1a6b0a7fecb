"""``simx embed --engine ray``: the Encoder runs in Ray Data actors, the driver keeps the cache.

Split of the work (why: one writer, and a killed job must resume where it stopped):
- the driver (this process) lists the files, diffs them against the cache, commits and
  keeps the failure bookkeeping: all of that is ``simx.embed.pipeline.embed_into_cache``, the
  same code a single-process run uses;
- Ray Data only computes Batches: ``from_items`` of the files still to do ->
  ``map_batches(EncoderActor, concurrency=N, num_gpus=G)`` -> ``iter_batches`` in the
  driver, which hands each block to the indexer as it completes. The indexer commits every
  ``commit_every`` images / ``commit_seconds``, so a killed job loses at most the rows
  since the last commit, and the re-run's diff skips every committed row.

Workers hand the rows back to the driver rather than write segments themselves: a row of
a 768-d model is 3 KB, so 1000 img/s is 3 MB/s through Ray's object store, far below what
it moves, and the driver stays the only writer of the cache (no shared filesystem needed
for the cache, no orphan segments from a killed worker to clean up).
(``benchmarks/ray_scale.py`` measures the engine; see its results file.)

A worker that dies mid-task is restarted by Ray and its task retried
(``max_restarts=-1``, ``max_task_retries=-1``); the driver drops a row index it has
already seen, so a retried block can never add a row twice.

Inputs: local paths, or any URI that pyarrow's filesystems read (``file://``, ``s3://``,
``gs://``, ``hdfs://``), mixed freely; see ``simx.images.uri``. The driver lists URIs with
pyarrow and the workers read their bytes, so the files need not be on the driver at all.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from simx.run.encoder import Batch, Encoder
from simx.core import failpoints
from simx.core.errors import SimxError
from simx.embed.pipeline import DEFAULT_COMMIT_SECONDS, EmbedReport, embed_into_cache
from simx.images.uri import UriReader, is_uri
from simx.embed.listing import scan_any

# Rows per Ray task, at most: big enough that the Encoder's decode pipeline overlaps
# inference inside the task and Ray's per-task overhead (~ms) vanishes, small enough that a
# block completes (and can be committed) every few seconds on a CPU worker. A small job is
# cut finer, into at least TASKS_PER_WORKER blocks per worker, so every worker gets some.
DEFAULT_ROWS_PER_TASK = 64
TASKS_PER_WORKER = 4


class RayEngineError(SimxError):
    """Ray is missing, or the cluster could not be reached or refused the job."""


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part simx needs)
    except ImportError:
        raise RayEngineError("the Ray engine needs Ray Data: pip install 'simx-embed[ray]'") from None
    return ray


class EncoderActor:
    """One Ray Data worker: opens the model once, then embeds blocks of ``{i, path}`` rows.

    The model file is read from ``model_path`` on the worker's own filesystem (a shared
    filesystem on a multi-node cluster). Bad images come back as an ``error`` string, never
    as an exception: an exception would make Ray retry a task that can only fail again.
    """

    def __init__(self, model_path: str, provider: str = "auto", threads: int | None = None,
                 exif_transpose: bool = False, fast: bool = False,
                 batch_size: int | None = None) -> None:
        self.encoder = Encoder(model_path, provider=provider, threads=threads,
                               exif_transpose=exif_transpose, fast=fast)
        self.batch_size = batch_size
        self.provider = self.encoder.providers[0] if self.encoder.providers else "?"
        self.reader = UriReader()
        failpoints.hit("ray-actor-start", payload=_node_id)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(p) for p in block["path"]]
        n, dim = len(keys), self.encoder.dim
        emb = np.zeros((n, dim), np.float32)
        ok = np.zeros(n, bool)
        errors = [""] * n
        with ExitStack() as stack:
            inputs: list[str] = list(keys)
            remote = [j for j, k in enumerate(keys) if is_uri(k)]
            if remote:
                for j, got in zip(remote, self.reader.fetch([keys[j] for j in remote], stack)):
                    if isinstance(got, Exception):
                        errors[j] = str(got)
                    else:
                        inputs[j] = got
            todo = [j for j in range(n) if not errors[j]]
            for b in self.encoder.iter_embed([inputs[j] for j in todo], self.batch_size):
                rows = [todo[t] for t in b.indices]
                emb[rows] = b.embeddings
                ok[rows] = True
                for t, err in b.failures:
                    errors[todo[t]] = err
        failpoints.hit("ray-task")
        return {"i": np.asarray(block["i"], np.int64), "emb": emb, "ok": ok,
                "error": np.array(errors, dtype=object),
                "provider": np.array([self.provider] * n, dtype=object)}


def _first_line(e: BaseException) -> str:
    """The message a user can act on: Ray wraps a worker's exception in its traceback."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    cause = [x for x in lines if x.startswith(("simx.", "SimxError", "ModelFileError"))
             or "Error:" in x]
    return (cause[-1] if cause else lines[0] if lines else type(e).__name__)[:500]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class RayBatches:
    """The ``batches`` callable ``embed_into_cache`` takes: todo -> Batches computed on Ray.

    Ray is started (or joined) only when there is something to do, so an unchanged re-run
    costs no more than a single-process one. ``providers`` collects what the workers ran on.
    """

    def __init__(self, model_path: Path, *, address: str | None, workers: int,
                 gpus_per_worker: float, cpus_per_worker: float, provider: str,
                 threads: int | None, exif_transpose: bool, fast: bool,
                 batch_size: int | None, rows_per_task: int, progress: bool) -> None:
        if workers < 1:
            raise SimxError(f"--workers must be at least 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise SimxError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
        if rows_per_task < 1:
            raise SimxError(f"rows per task must be at least 1, got {rows_per_task}")
        self.model_path = model_path
        self.address, self.workers = address, workers
        self.gpus, self.cpus = gpus_per_worker, cpus_per_worker
        self.actor_kwargs = {
            "model_path": str(model_path), "provider": provider,
            # Each actor gets the cores Ray reserved for it, not every core of the node:
            # N actors on one node would otherwise fight over the same cores.
            "threads": threads if threads is not None else max(1, int(cpus_per_worker)),
            "exif_transpose": exif_transpose, "fast": fast, "batch_size": batch_size,
        }
        self.rows_per_task = rows_per_task
        self.progress = progress
        self.providers: set[str] = set()

    def _init(self, ray: Any) -> bool:
        """Connect to the cluster (or start a local one); True if this call started Ray."""
        if ray.is_initialized():
            return False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        forward = failpoints.forward_env()
        common = {"include_dashboard": False, "logging_level": logging.WARNING,
                  "log_to_driver": False, "configure_logging": True,
                  "runtime_env": {"env_vars": forward} if forward else None}
        try:
            if self.address:
                ray.init(address=self.address, **common)
            else:
                # A private single-node instance: loopback only, bounded to what the
                # workers need (at least the machine's cores, so decoding has room).
                # address="local": never join a cluster found in RAY_ADDRESS or /tmp/ray.
                cpus = max(os.cpu_count() or 1, int(np.ceil(self.workers * self.cpus)))
                ray.init(address="local", num_cpus=cpus, num_gpus=int(np.ceil(self.workers * self.gpus)),
                         _node_ip_address="127.0.0.1", **common)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            where = self.address or "a local Ray instance"
            raise RayEngineError(f"cannot start or join Ray at {where}: {_first_line(e)}") from None
        return True

    def __call__(self, todo: list[str]) -> Iterator[Batch]:
        if not todo:
            return
        ray = _ray()
        started = self._init(ray)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = self.progress
            ctx.print_on_execution_start = False
            rows = max(1, min(self.rows_per_task,
                              -(-len(todo) // (TASKS_PER_WORKER * self.workers))))
            ds = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(todo)],
                                     override_num_blocks=-(-len(todo) // rows))
            # Ray Data's actor pools restart a dead actor and retry its task by default
            # (max_restarts=-1, max_task_retries=-1); tests/test_ray.py kills one to prove it.
            out = ds.map_batches(EncoderActor, fn_constructor_kwargs=self.actor_kwargs,
                                 batch_size=rows,
                                 compute=ray.data.ActorPoolStrategy(size=self.workers),
                                 num_cpus=self.cpus, num_gpus=self.gpus or None,
                                 batch_format="numpy")
            seen: set[int] = set()
            with warnings.catch_warnings():
                # Fewer blocks than actors (a small todo) is fine, not worth a warning.
                warnings.filterwarnings("ignore", message=".*concurrent actors.*")
                try:
                    for block in out.iter_batches(batch_size=None, batch_format="numpy"):
                        yield self._to_batch(block, seen)
                except Exception as e:
                    if not type(e).__module__.startswith("ray"):
                        raise
                    # A worker that cannot open the model, or a job the cluster refused:
                    # one line (the committed rows stay; a re-run continues from them).
                    raise RayEngineError(f"the Ray job failed: {_first_line(e)}") from None
        finally:
            if started:
                ray.shutdown()

    def _to_batch(self, block: dict[str, np.ndarray], seen: set[int]) -> Batch:
        """A block of worker output as the indexer's Batch; an index seen before is dropped."""
        idx: list[int] = []
        rows: list[int] = []
        fails: list[tuple[int, str]] = []
        for j, (i, ok, err) in enumerate(zip(block["i"].tolist(), block["ok"].tolist(),
                                             block["error"].tolist())):
            if i in seen:
                continue
            seen.add(i)
            if ok:
                idx.append(i)
                rows.append(j)
            else:
                fails.append((i, str(err)))
        self.providers.update(str(p) for p in block["provider"].tolist())
        emb = np.asarray(block["emb"], np.float32)
        return Batch(idx, np.ascontiguousarray(emb[np.asarray(rows, np.intp)]), fails)


def embed_on_ray(
    paths: Iterable[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    provider: str = "auto",
    threads: int | None = None,
    exif_transpose: bool = False,
    fast: bool = False,
    batch_size: int | None = None,
    rows_per_task: int = DEFAULT_ROWS_PER_TASK,
    force: bool = False,
    lock_timeout: float = 0.0,
    commit_every: int = 0,
    commit_seconds: float = DEFAULT_COMMIT_SECONDS,
    progress: bool | None = None,
) -> EmbedReport:
    """Bring the cache at ``cache_dir`` up to date with ``paths``, embedding on a Ray cluster.

    ``address`` is a running cluster (``ray start --head`` prints it; ``auto`` finds the
    local one); without it a private local Ray instance is started and stopped. Every other
    argument means what it means for ``simx embed``. The result equals a single-process
    run row for row (fp32 onnxruntime is batch-invariant, see simx.run.encoder).
    """
    # The driver opens the model too: it checks the file (and the spec the cache is keyed
    # on) before a cluster is touched, and its path is what the workers open.
    enc = Encoder(model, provider="cpu", threads=1, exif_transpose=exif_transpose, fast=fast)
    batches = RayBatches(enc.path.resolve(), address=address, workers=workers,
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                         provider=provider, threads=threads, exif_transpose=exif_transpose,
                         fast=fast, batch_size=batch_size, rows_per_task=rows_per_task,
                         progress=bool(progress))
    report = embed_into_cache(paths, enc, cache_dir, batch_size=batch_size, force=force,
                              lock_timeout=lock_timeout, commit_every=commit_every,
                              commit_seconds=commit_seconds, progress=progress, batches=batches,
                              lister=scan_any)
    if batches.providers:
        report.providers = [f"ray:{p}" for p in sorted(batches.providers)]
    return report
