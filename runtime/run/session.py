"""Open a model: the entry point everything that runs one (encoder, bench, search) goes through.

``open_model`` builds the session (``simx.run.build``) at the precision asked for, or, for
``precision="auto"``, at the path ``simx.run.autoselect`` measured fastest among those
that pass the accuracy gate on this host. The names callers need beside it (reading a
spec, finding model files, provider checks) are re-exported from ``simx.run.build``.
"""

from __future__ import annotations

import os

from simx.run import providers
from simx.run.autoselect import choose
from simx.run.build import (  # noqa: F401  (re-exported: the public face of opening models)
    ModelSession,
    available_providers,
    build_session,
    check_available,
    models_dir,
    open_graph,
    pick_providers,
    read_spec,
    resolve_model_path,
    resolve_precision,
    resolve_provider,
    session_options,
)


def open_model(
    model: str | os.PathLike[str],
    provider: str = "auto",
    threads: int | None = None,
    kind: str = "image",
    *,
    precision: str | None = None,
    provider_options: dict[str, str] | None = None,
    device_id: int = 0,
) -> ModelSession:
    """Open an exported simx model. Every failure is a ModelFileError or ProviderError with one line.

    The graph's inputs and outputs are checked against the spec, the weights against the
    hash recorded at export, and the model's ``kind`` ("image" or "text") against what the
    caller needs.

    ``precision`` None runs the file at its own precision; ``"auto"`` (or ``provider``
    and ``precision`` both ``"auto"``) calibrates the paths this host has against the
    file's fp32 CPU output and opens the fastest that passes (simx.run.autoselect).
    ``provider_options`` are merged over the table's options (simx.run.providers).
    """
    if precision != "auto":
        return build_session(model, provider, threads, kind=kind, precision=precision,
                             provider_options=provider_options, device_id=device_id)
    path = resolve_model_path(model)
    c = choose(path, provider=provider, threads=threads, kind=kind)
    # The chosen path may run a sibling export (``<stem>-int8.onnx``) of the same model.
    chosen = path.with_name(c["file"]) if c.get("file") else path
    # A sibling, or an int8 file, runs at the file's own precision (None).
    own = c.get("file") or c["precision"] not in providers.PRECISION_CHOICES
    ms = build_session(chosen, c["provider"], threads, kind=kind,
                       precision=None if own else c["precision"],
                       provider_options=provider_options, device_id=device_id)
    ms.choice = c
    return ms
