"""``simx bench``: the throughput benchmark and the CI regression gate.

Modules, each importing only those listed before it: ``schema`` (the ``simx-bench/1``
result: check, load, write), ``render`` (text tables), ``gate`` (a run against a
baseline), ``flops`` (GFLOP/image from the ONNX graph), ``reference`` (same-run compute
references: numpy sgemm, a MatMul in the model's precision, cold start), ``timing``
(latencies, the model / sgemm interleaving), ``stages`` (``--images``: decode,
preprocess, end to end), ``run`` (``BenchConfig`` and ``run_bench``).

Code outside this package imports the names below from ``simx.bench``; modules inside
it import their siblings directly.
"""

from simx.bench.flops import count_gflops, model_gflops
from simx.bench.gate import GateReport, GateRow, compare, precheck, render_gate
from simx.bench.reference import cold_start, gemm_gflops, sgemm_gflops
from simx.bench.render import format_table, render
from simx.bench.run import DEFAULT_BATCH_SIZES, BenchConfig, run_bench
from simx.bench.schema import SCHEMA, BaselineError, load_result, validate_result, write_result
from simx.bench.timing import latency_ms, time_calls

__all__ = [
    "DEFAULT_BATCH_SIZES", "SCHEMA", "BaselineError", "BenchConfig", "GateReport", "GateRow",
    "cold_start", "compare", "count_gflops", "format_table", "gemm_gflops", "latency_ms",
    "load_result", "model_gflops", "precheck", "render", "render_gate", "run_bench",
    "sgemm_gflops", "time_calls", "validate_result", "write_result",
]
