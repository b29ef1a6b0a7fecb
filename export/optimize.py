"""Graph fusions for onnxruntime: ONNX in, ONNX out, no file I/O.

Why onnxscript's ``optimize_for_ort`` and not onnxruntime's ``transformers.optimizer``:
on the dynamo exports of DINOv2 and OpenCLIP, onnxruntime's optimizer (model_type ``vit``
or ``clip``) fuses only SkipLayerNormalization and BiasGelu and never the attention;
onnxscript's rewriter also fuses DINOv2's attention into ``MultiHeadAttention``.

Neither fuses OpenCLIP's attention as exported: ``nn.MultiheadAttention`` transposes the
key as a 3D ``(batch*heads, seq, dim)`` tensor, and onnxscript's pre-optimisation folds
the two reshapes around it into one, so its SDPA pattern never sees a 4D key. The rule
below recognises that form and emits the same ``MultiHeadAttention`` node onnxscript
emits for DINOv2.

What the fusions buy, measured here (``benchmarks/results/precision.md``; onnxruntime 1.32,
CPU provider, single thread, batch 8, round-robin against the plain export):

- MultiHeadAttention + BiasGelu: parity-safe (max abs difference ~1e-6 of the output's
  scale) and no measurable CPU change (DINOv2-S 1.00x, ViT-B-32 0.98x). On CUDA fused
  attention is where the time goes, so these are always applied.
- SkipLayerNormalization is *slower* on the CPU than the Add + LayerNormalization it
  replaces: fp32 0.93x (DINOv2-S) and 0.96x (ViT-B-32); int8 2.04x -> 2.39x and
  2.54x -> 2.82x over fp32 when it is left unfused. So by default it is undone after
  onnxscript's pass (standard ``LayerNormalization`` stays, which every provider runs);
  ``skip_layer_norm=True`` keeps it, for files meant for CUDA (fp16).
"""

from __future__ import annotations

from collections import Counter

import onnx

#: Node types (domain com.microsoft) counted as fusions in the returned dict.
FUSED_DOMAIN = "com.microsoft"


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) else None


def _scalar(value: object) -> float | None:
    """The float in a one-element constant, or None."""
    const = getattr(value, "const_value", None)
    if const is None:
        return None
    arr = const.numpy()
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _ints(value: object) -> list[int] | None:
    const = getattr(value, "const_value", None)
    return None if const is None else [int(v) for v in const.numpy().reshape(-1)]


def _mha_3d_key_rule():  # -> onnxscript RewriteRule (import kept lazy: onnxscript is heavy)
    """``nn.MultiheadAttention``'s scaled dot product -> com.microsoft MultiHeadAttention.

    Pattern (after onnxscript's pre-optimisation), q and v 4D ``[B, H, S, d]``::

        k4t   = Reshape(Transpose(Reshape(k3, s3), perm=[0, 2, 1]), s4)   # s4 = [-1, H, d, S]
        out   = MatMul(Softmax(MatMul(q * a, k4t * b)), v)
    """
    from onnxscript.rewriter import pattern

    class _MHA3DKey(pattern.RewriteRuleClassBase):
        def pattern(self, op, q, k3, v, s3, s4, q_scale, k_scale):  # type: ignore[no-untyped-def]
            k4t = op.Reshape(op.Transpose(op.Reshape(k3, s3), perm=[0, 2, 1]), s4)
            scores = op.MatMul(op.Mul(q, q_scale), op.Mul(k4t, k_scale))
            return op.MatMul(op.Softmax(scores, axis=-1), v)

        def check(self, context, q, k3, v, s3, s4, q_scale, k_scale, **_):  # type: ignore[no-untyped-def]
            if q.shape is None or v.shape is None or k3.shape is None:
                return False
            if q.shape.rank() != 4 or v.shape.rank() != 4 or k3.shape.rank() != 3:
                return False
            h, s, d = (_static(x) for x in list(q.shape)[1:])
            if None in (h, s, d):
                return False
            if _static(v.shape[1]) != h or _static(v.shape[2]) != s:
                return False
            if _static(k3.shape[1]) != s or _static(k3.shape[2]) != d:
                return False
            s3v, s4v = _ints(s3), _ints(s4)
            # The 3D reshape keeps (seq, dim); the 4D one splits batch*heads and keeps the
            # transposed (dim, seq): only then is this K^T of a [B, H, S, d] key.
            if s3v is None or len(s3v) != 3 or s3v[1:] != [s, d]:
                return False
            if s4v is None or len(s4v) != 4 or s4v[1:] != [h, d, s]:
                return False
            a, b = _scalar(q_scale), _scalar(k_scale)
            if a is None or b is None:
                return False
            self._heads, self._seq, self._dim, self._scale = h, s, d, a * b
            return True

        def rewrite(self, op, q, k3, v, **_):  # type: ignore[no-untyped-def]
            to_3d = op.Constant(value_ints=[0, 0, -1])
            k4 = op.Reshape(k3, op.Constant(value_ints=[-1, self._heads, self._seq, self._dim]))
            q_bsd = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3]), to_3d)
            k_bsd = op.Reshape(op.Transpose(k4, perm=[0, 2, 1, 3]), to_3d)
            v_bsd = op.Reshape(op.Transpose(v, perm=[0, 2, 1, 3]), to_3d)
            out = op.MultiHeadAttention(
                q_bsd, k_bsd, v_bsd, num_heads=self._heads, scale=self._scale, _domain=FUSED_DOMAIN
            )
            out4 = op.Reshape(out, op.Constant(value_ints=[0, 0, self._heads, -1]))
            return op.Transpose(out4, perm=[0, 2, 1, 3])

    return _MHA3DKey.rule()


def require_loaded_data(model: onnx.ModelProto) -> None:
    """The rewriter and the converters work on tensors in memory, not on pointers to files
    elsewhere: external data must be loaded first (``onnx.load`` does by default)."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(
                f"initializer {t.name!r} is stored as external data that is not loaded; "
                "load the model with onnx.load(..., load_external_data=True) first"
            )


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node counts per com.microsoft op type (the fusions), sorted by name."""
    c = Counter(n.op_type for n in model.graph.node if n.domain == FUSED_DOMAIN)
    return dict(sorted(c.items()))


def _unfuse_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Replace com.microsoft SkipLayerNormalization by Add (+ bias Add) + LayerNormalization,
    in place; nodes whose mean / inv-std outputs are used stay fused. Returns the count."""
    from onnx import helper

    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    nodes: list[onnx.NodeProto] = []
    done = 0
    for n in model.graph.node:
        outs = list(n.output) + [""] * (4 - len(n.output))
        stats_used = any(o and o in used for o in outs[1:3])
        if n.op_type != "SkipLayerNormalization" or n.domain != FUSED_DOMAIN or stats_used:
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        x, skip, gamma, beta, bias = ins[:5]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        total = outs[3] or f"{n.name or outs[0]}__sum"
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{total}__biased"]))
            x = f"{total}__biased"
        nodes.append(helper.make_node("Add", [x, skip], [total]))
        ln_inputs = [total, gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node("LayerNormalization", ln_inputs, [outs[0]], axis=-1, epsilon=eps))
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done


def fuse_for_ort(
    model: onnx.ModelProto, *, skip_layer_norm: bool = False
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Fuse attention and GELU (and, with ``skip_layer_norm``, residual + layer norm) for
    onnxruntime; return the new model and the fused-op counts, e.g.
    ``{"BiasGelu": 12, "MultiHeadAttention": 12}`` (plus ``"SkipLayerNormalization": 24``).

    The input proto is not modified. Works in memory, so protos over 2 GB are fine as long
    as their tensors are loaded (they are never serialized here). Graph inputs, outputs,
    opsets and metadata are kept; the result needs onnxruntime (com.microsoft ops).
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    require_loaded_data(model)
    irm = ir.from_proto(model)
    # Same pre-optimisation optimize_for_ort starts with; the OpenCLIP rule needs its
    # folded reshapes and constant shapes.
    common_passes.ShapeInferencePass()(irm)
    optimizer.optimize(irm)
    _mha_3d_key_rule().apply_to_model(irm)
    irm, _ = optimize_for_ort(irm)
    out = ir.to_proto(irm)
    if not skip_layer_norm:
        _unfuse_skip_layer_norm(out)
    # optimize_for_ort's own counts name intermediate rules (sdpa, sdpa_via_mha, ...);
    # what the graph ends up with is what the metadata should say.
    return out, fused_op_counts(out)
