"""The OpenCLIP text tower as a verified, self-describing ONNX file: ``<image-id>-text.onnx``.

Why a separate file: most users only embed images, and the text tower of ViT-H-14 is
another 1.4 GB. ``simx search --text`` finds it beside the image model.

The graph maps ``input_ids`` int64 [batch, context_length] (the tokenizer's output,
dynamic batch) to ``text_embeddings`` float32 [batch, dim], unnormalized, exactly
``model.encode_text(ids, normalize=False)``; the spec says ``normalize=True`` so the
runtime L2-normalizes, as for the image tower.

The spec format is the image one (so every simx reader opens it); the text-specific
facts live in ``spec.extra``: ``kind="text"``, ``context_length``, ``tokenizer``,
``vocab_sha256``, ``image_model`` (the paired image tower's id), ``pair`` (the identity
both files share: image id, source and weights; search refuses a text tower of another
pair) and, when exported together, ``image_spec_hash``. ``image_size`` and
``preprocess`` are the paired image model's, which keeps the spec valid.

Tokenizers: CLIP's BPE ships with simx. Models whose open_clip config names an
``hf_tokenizer_name`` (SigLIP's T5 vocabulary, SigLIP2's Gemma, XLM-V, BERT) get
``<id>-text.tokenizer.json`` beside the text model (``tokenizer_file``, with
``tokenizer_settings``), taken from open_clip's own HFTokenizer, which transformers loads
from ``--tokenizer DIR``, the local Hugging Face cache or the hub; the export refuses
unless simx's torch-free replay (``simx.run.hf_tokenizer``) gives open_clip's ids.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from simx.model import catalogue
from simx.core.errors import SimxError, first_line
from simx.core.fs import fsync_dir, write_bytes_durably
from simx.run.hf_tokenizer import TOKENIZER_SUFFIX
from simx.run.text import pair_id
from simx.model.spec import METADATA_KEY, ModelSpec
from simx.run.tokenizer import TOKENIZER_NAME, get_tokenizer
from simx.model.weights_hash import weights_sha256

from . import verify, writer
from . import weights as _weights
from .families import family
from .families._openclip import create_openclip
from .weights import quiet_logging

TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "text_embeddings"
# Distinct captions for parity: short, long (truncated), unicode, punctuation.
PARITY_TEXTS = (
    "a photo of a cat",
    "a diagram",
    "a dog sitting on a red sofa next to a window, in the afternoon light",
    "Crème brûlée à la café — 東京 🐶",
    "x " * 120,
    "",
    "!!! ??? ...",
    "a photo of a cat.",
)
MIN_COSINE = 0.99999
MAX_ABS_REL = 1e-4


class TextExportError(SimxError):
    """The text tower could not be exported or failed verification."""


@contextlib.contextmanager
def _text_layers(n: int | None) -> Iterator[None]:
    """Build open_clip models with ``n`` text transformer blocks (tests, for time); the
    blocks are the same classes, so the exported code path is the full model's."""
    if n is None:
        yield
        return
    import open_clip.factory as factory

    orig = factory.get_model_config

    def cfg(name: str) -> Any:
        c = orig(name)
        if c and isinstance(c.get("text_cfg", {}).get("layers"), int):
            c["text_cfg"]["layers"] = min(c["text_cfg"]["layers"], int(n))
        return c

    factory.get_model_config = cfg
    try:
        yield
    finally:
        factory.get_model_config = orig


def build_clip(entry: catalogue.ModelEntry, weights: str,
               text_layers: int | None = None) -> tuple[Any, str]:
    """The full open_clip model (both towers) and the spec's weights string.

    ``weights``: "pretrained" (open_clip downloads the tag), "random" (seeded, tests
    and speed only) or a checkpoint path (its sha256 goes into the spec). Loading is the
    image exporter's (``families._openclip.create_openclip``): same seed, same QuickGELU
    rule, same one-line errors when the hub is unreachable or a checkpoint does not fit;
    random weights give the image tower its family's recipe, as the image export does, so
    a random text file pairs with the random image file of the same entry.
    ``text_layers``: fewer text blocks (random weights only: tests and sweeps).
    """
    if not entry.text:
        raise TextExportError(f"{entry.id} has no text tower simx can export (OpenCLIP models "
                              "with open_clip's own text transformer have one)")
    if text_layers is not None and weights != "random":
        raise TextExportError("text_layers (a reduced-depth text tower) needs random weights")
    with _text_layers(text_layers):
        model, label = create_openclip(entry, weights, family(entry.family).randomize,
                                       what=f"{entry.id} (text)", pretrained_text=False)
    return model.eval(), label


# ----------------------------------------------------------------------------- tokenizers
# Texts the export tokenizes with both simx and open_clip; any difference refuses the export.
TOKENIZER_PROBES = PARITY_TEXTS + (
    "UPPER lower MiXeD Case",
    "  \t\n leading and trailing \r\n ",
    "&amp;lt;b&amp;gt; &quot;html&quot; &#39;s",
    "snake_case_words and under_scores",
    "東京タワーの夜景 北京 서울 ١٢٣",
    "Ã©tÃ© mojibake, ﬁ ligature, ＦＵＬＬ width",
    "🐶🐱 👍🏽 👨‍👩‍👧",
    "a photo of a " + "very " * 80 + "long caption",
    "a" * 300,
)


def tokenizer_settings_of(text_cfg: dict[str, Any]) -> tuple[str, int, dict[str, Any], str | None]:
    """(hf_tokenizer_name, context_length, open_clip HFTokenizer kwargs, tokenizer_mode) as
    ``open_clip.get_tokenizer`` resolves them from a model config's ``text_cfg``."""
    return (text_cfg.get("hf_tokenizer_name", ""), int(text_cfg.get("context_length", 77)),
            dict(text_cfg.get("tokenizer_kwargs", {})), text_cfg.get("tokenizer_mode"))


def open_clip_hf_tokenizer(what: str, text_cfg: dict[str, Any],
                           tokenizer: str | Path | None = None) -> Any:
    """open_clip's own ``HFTokenizer`` for a model config, the reference simx must equal.

    ``tokenizer``: a folder holding the tokenizer files (tokenizer.json and
    tokenizer_config.json); without it the name in the config is loaded from the local
    Hugging Face cache, or from the hub when it answers. A missing tokenizer is one clear
    error, never a 45-second retry loop.
    """
    name, n_ctx, kwargs, mode = tokenizer_settings_of(text_cfg)
    if mode:
        raise TextExportError(f"{what}: open_clip tokenizer_mode {mode!r} is not supported by simx")
    try:
        import transformers  # noqa: F401  (open_clip's HFTokenizer imports it lazily)
        from open_clip.tokenizer import HFTokenizer
    except ImportError:
        raise TextExportError(f"{what}: its text tower uses a Hugging Face tokenizer; exporting it "
                              "needs transformers (pip install transformers tokenizers)") from None
    if tokenizer is not None:
        folder = Path(tokenizer)
        if not (folder / "tokenizer.json").is_file():
            raise TextExportError(f"--tokenizer {folder}: no tokenizer.json there (simx needs the "
                                  "fast-tokenizer file that save_pretrained writes)")
        source, attempts = str(folder), [{}]
    else:
        # The local cache first (offline, instant); then the hub, only if it answers.
        source, attempts = name, [{"local_files_only": True}] + ([{}] if _weights.hub_reachable() else [])
    err: Exception | None = None
    for extra in attempts:
        try:
            with quiet_logging():
                return HFTokenizer(source, context_length=n_ctx, **kwargs, **extra)
        except Exception as e:  # transformers / huggingface_hub raise many types
            err = e
    if tokenizer is not None:
        raise TextExportError(f"--tokenizer {source}: transformers cannot load it "
                              f"({type(err).__name__}: {first_line(err)[:160]})")
    raise TextExportError(
        f"{what}: its tokenizer {name!r} is not in the local Hugging Face cache and the hub is "
        f"unreachable ({type(err).__name__}: {first_line(err)[:120]}); pass --tokenizer DIR, a "
        f"folder with {name}'s tokenizer.json and tokenizer_config.json")


def simx_hf_tokenizer(ref: Any, source: str) -> Any:
    """simx's torch-free tokenizer holding the backend open_clip's ``ref`` tokenizes with.

    The settings are read from the loaded transformers tokenizer (its pad token, sides and
    sep id), i.e. what transformers applies around the backend on every call.
    """
    from simx.run.hf_tokenizer import HFTokenizer, HFTokenizerSettings

    hf = ref.tokenizer
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TextExportError(f"{source}: a slow (python) tokenizer without tokenizer.json; simx "
                              "needs the fast tokenizer file")
    clean = {v: k for k, v in _clean_fns().items()}.get(ref.clean_fn)
    if clean is None:
        raise TextExportError(f"{source}: open_clip clean function {ref.clean_fn!r} is unknown to simx")
    pad_id = hf.pad_token_id
    if pad_id is None:
        raise TextExportError(f"{source}: the tokenizer has no pad token; open_clip cannot pad to "
                              "the context length")
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    settings = HFTokenizerSettings(
        source=source, context_length=int(ref.context_length), clean=clean,
        strip_sep_token=bool(ref.strip_sep_token),
        sep_token_id=None if hf.sep_token_id is None else int(hf.sep_token_id),
        pad_token_id=int(pad_id), pad_token=str(hf.pad_token),
        padding_side=str(hf.padding_side), truncation_side=str(hf.truncation_side),
    )
    return HFTokenizer(plain.to_str(), settings)


def _clean_fns() -> dict[str, Any]:
    """open_clip's clean functions by the names its configs use."""
    from open_clip.tokenizer import get_clean_fn

    return {k: get_clean_fn(k) for k in ("whitespace", "lower", "canonicalize")}


def check_tokenizer(ours: Any, ref: Any, what: str, texts: tuple[str, ...] = TOKENIZER_PROBES) -> None:
    """Refuse a tokenizer whose ids differ from open_clip's on any probe text."""
    got = ours(list(texts))
    want = ref(list(texts)).numpy()
    bad = [t for t, g, w in zip(texts, got, want) if g.shape != w.shape or not np.array_equal(g, w)]
    if got.shape != want.shape or bad:
        raise TextExportError(f"{what}: simx's tokenizer gives other token ids than open_clip's "
                              f"for {len(bad)} of {len(texts)} probe texts, e.g. {bad[:1]!r}")


class _TextTower:
    """Wraps encode_text as a module whose only input is input_ids (for the exporter)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class TextTower(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.m.encode_text(input_ids, normalize=False)

        return TextTower(model).eval()


def _context_length(model: Any) -> int:
    n = getattr(model, "context_length", None)
    if n is None:
        n = int(model.positional_embedding.shape[0])
    return int(n)


def verify_text(onnx_path: Path, tower: Any, ids: np.ndarray) -> dict[str, float]:
    """Parity of the ONNX text tower against torch on distinct captions.

    Fails when: min cosine < 0.99999, max abs > 1e-4 * max|ref|, or captions with
    different ids get (near-)identical embeddings (a collapsed model passes parity
    trivially).
    """
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = tower(torch.from_numpy(ids)).float().numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run([TEXT_OUTPUT], {TEXT_INPUT: ids[i : i + 3]})[0]
                          for i in range(0, len(ids), 3)])  # batches of 3 and 2: batch is dynamic
    max_abs = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    rn = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    gn = got / np.linalg.norm(got, axis=1, keepdims=True)
    min_cos = float(np.min(np.sum(rn * gn, axis=1)))
    sims = rn @ rn.T
    # Only pairs with different ids: a canonicalizing clean (SigLIP) maps "a cat." and
    # "a cat" to the same ids, and those must get the same embedding.
    differ = (ids[:, None, :] != ids[None, :, :]).any(axis=2)
    distinct = float(np.max(sims[differ])) if differ.any() else 1.0
    if not (min_cos >= MIN_COSINE and max_abs <= MAX_ABS_REL * scale):
        raise TextExportError(
            f"text tower parity failed: min cosine {min_cos:.7f} (need >= {MIN_COSINE}), "
            f"max abs {max_abs:.3g} (need <= {MAX_ABS_REL * scale:.3g})"
        )
    if distinct > 0.99999:
        raise TextExportError(
            f"distinct captions got the same text embedding (cosine {distinct:.6f}): "
            "the model collapsed; parity would be meaningless"
        )
    return {"max_abs": max_abs, "max_ref": scale, "min_cosine": min_cos,
            "max_cosine_between_texts": distinct, "n_texts": float(len(ids))}


def text_tokenizer_for(entry: catalogue.ModelEntry, model: Any,
                       tokenizer: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The simx tokenizer for ``entry``'s text tower and what the text spec records of it.

    CLIP BPE (shipped with simx) unless the model config names an ``hf_tokenizer_name``;
    then open_clip's HFTokenizer is loaded (``tokenizer`` folder, local HF cache or hub)
    as the reference, and simx's replay of it must give the same ids on every probe text.
    """
    import open_clip

    spec_id = f"{entry.id}-text"
    n_ctx = _context_length(model)
    vocab = _vocab_size(model)
    text_cfg = (open_clip.get_model_config(entry.variant) or {}).get("text_cfg", {})
    name = tokenizer_settings_of(text_cfg)[0]
    if not name:
        preflight_tokenizer(entry, tokenizer)  # the --tokenizer misuse error
        tok = get_tokenizer(n_ctx)
        if vocab != tok.vocab_size:
            raise TextExportError(f"{entry.id}: text vocabulary of {vocab} tokens is not "
                                  f"CLIP's BPE ({tok.vocab_size}); simx cannot tokenize for it")
        return tok, {"tokenizer": TOKENIZER_NAME, "vocab_sha256": tok.vocab_sha256}
    ref = open_clip_hf_tokenizer(entry.id, text_cfg, tokenizer)
    if int(ref.context_length) != n_ctx:
        raise TextExportError(f"{entry.id}: tokenizer context length {ref.context_length} != the "
                              f"text tower's {n_ctx}")
    tok = simx_hf_tokenizer(ref, name)
    check_tokenizer(tok, ref, entry.id)
    if tok.vocab_size > vocab:
        raise TextExportError(f"{entry.id}: the tokenizer has {tok.vocab_size} tokens, the text "
                              f"tower embeds only {vocab}: wrong tokenizer files?")
    return tok, {"tokenizer": f"hf:{name}", "vocab_sha256": tok.vocab_sha256,
                 "tokenizer_file": spec_id + TOKENIZER_SUFFIX,
                 "tokenizer_settings": tok.settings.to_dict()}


def preflight_tokenizer(entry: catalogue.ModelEntry, tokenizer: str | Path | None = None) -> None:
    """Fail early, before any export, when ``entry``'s text tokenizer cannot be had."""
    import open_clip

    text_cfg = (open_clip.get_model_config(entry.variant) or {}).get("text_cfg", {})
    if tokenizer_settings_of(text_cfg)[0]:
        open_clip_hf_tokenizer(entry.id, text_cfg, tokenizer)
    elif tokenizer is not None:
        raise TextExportError(f"{entry.id} uses CLIP's BPE tokenizer, shipped with simx; "
                              "--tokenizer is for models with a Hugging Face tokenizer")


def _vocab_size(model: Any) -> int:
    n = getattr(model, "vocab_size", None)
    if n is None:
        n = model.token_embedding.num_embeddings
    return int(n)


def export_text_tower(
    entry: catalogue.ModelEntry,
    *,
    weights: str,
    output_dir: Path,
    opset: int = 18,
    image_size: int | None = None,
    model: Any = None,
    weights_label: str | None = None,
    tokenizer: str | Path | None = None,
    image_spec_hash: str | None = None,
    text_layers: int | None = None,
) -> Path:
    """Export, verify and label ``entry``'s text tower; returns ``output_dir/<id>-text.onnx``.

    ``model``/``weights_label`` let the image exporter pass the open_clip model it
    already built (so both towers come from one load of the weights). ``tokenizer``: a
    folder with the Hugging Face tokenizer files, for models that use one (written beside
    the model as ``<id>-text.tokenizer.json``). ``image_spec_hash``: the spec hash of the
    image file exported with it, recorded in the text spec. Both files are paired by
    ``pair``: the image id, source and weights (``simx.search.pair_id``).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model, weights_label = build_clip(entry, weights, text_layers=text_layers)
    tower = _TextTower(model)
    tok, tok_extra = text_tokenizer_for(entry, model, tokenizer)
    ids = tok(list(PARITY_TEXTS))
    path = output_dir / f"{entry.id}-text.onnx"
    proto = _to_onnx(tower, ids, opset, entry.id)
    p = entry.preprocess(image_size)
    label = weights_label or weights
    spec = ModelSpec(
        id=f"{entry.id}-text",
        family=entry.family,
        variant=entry.variant,
        source=entry.source,
        weights=label,
        image_size=p.crop,
        dim=int(entry.dim),
        normalize=True,
        preprocess=p,
        precision="fp32",
        opset=opset,
        input_name=TEXT_INPUT,
        output_name=TEXT_OUTPUT,
        extra={
            "kind": "text",
            "image_model": entry.id,
            "pair": pair_id(entry.id, entry.source, label),
            **({"image_spec_hash": image_spec_hash} if image_spec_hash else {}),
            "context_length": _context_length(model),
            **tok_extra,
            "quick_gelu": entry.quick_gelu,
            **({"text_layers": int(text_layers)} if text_layers is not None else {}),
        },
    )
    if proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value not in (0, spec.dim):
        raise TextExportError(f"{entry.id}-text: output dim differs from the registry's {spec.dim}")
    # The image tower's pipeline from here: temp names (external data too), onnx.checker,
    # parity, the weights hash, one atomic rename. A failure leaves no file behind.
    external = writer.tensor_bytes(proto) > writer.EXTERNAL_DATA_THRESHOLD
    with writer.AtomicModelWriter(path, external) as w:
        writer.set_metadata(proto, METADATA_KEY, spec.to_json())
        tmp = w.write(proto)
        verify.check_graph(tmp, what=spec.id)
        parity = verify_text(tmp, tower, ids)
        spec = replace(spec, parity=parity, weights_sha256=weights_sha256(tmp))
        writer.set_metadata(proto, METADATA_KEY, spec.to_json())
        side = _write_tokenizer(output_dir, tok_extra.get("tokenizer_file"), getattr(tok, "json", None))
        try:
            path = w.commit(proto)
        except BaseException:
            if side is not None:
                side.unlink(missing_ok=True)
            raise
    writer.check_committed_weights(path, spec.weights_sha256)
    return path


def _write_tokenizer(folder: Path, name: str | None, text: str | None) -> Path | None:
    """The tokenizer.json beside the text model: temp name, fsync, rename (None: CLIP BPE)."""
    if not name or text is None:
        return None
    final = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        write_bytes_durably(tmp, text.encode("utf-8"))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return final


def _to_onnx(tower: Any, ids: np.ndarray, opset: int, what: str) -> Any:
    """The dynamo export of the text tower with a symbolic batch axis (an onnx ModelProto)."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    example = torch.from_numpy(ids[:2].copy())  # batch >= 2, or the batch axis gets fixed
    try:
        program = torch.onnx.export(
            tower, (example,), dynamo=True, input_names=[TEXT_INPUT], output_names=[TEXT_OUTPUT],
            dynamic_shapes={"input_ids": {0: batch}}, opset_version=opset, verbose=False,
        )
    except Exception as e:  # the exporter raises many types; keep the first line
        raise TextExportError(
            f"torch.onnx.export failed for {what}'s text tower: {first_line(e)}") from e
    proto = program.model_proto
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise TextExportError(f"{what}-text: the exported batch axis is fixed at {dim0.dim_value}")
    return proto
