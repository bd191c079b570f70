"""Timing, FLOP counting and memory of one jitted function (the model benchmarks' method).

`measure` compiles `jax.jit(fn)` for concrete arguments (lowering + XLA compilation, timed
together), takes the FLOPs of XLA's cost analysis of the compiled program (XLA counts the
multiply-adds that reach real input, not those against padding), XLA's memory analysis of
the program, and the median of synchronised calls after a warm-up.
"""
import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax

# Dense peak TFLOP/s per chip from the vendors' data sheets. NVIDIA "float32" is the TF32
# tensor-core peak: XLA's default precision runs float32 convolutions and matmuls as TF32
# on Ampere and newer. TPUs: bfloat16 (float32 at default precision also runs in bfloat16
# passes, but its cost depends on the precision setting: left out). First match wins.
PEAK_TFLOPS: Sequence[Tuple[str, Dict[str, float]]] = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0}),
    ("TPU v5", {"bfloat16": 459.0}),
    ("TPU v6", {"bfloat16": 918.0}),
)


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  for pattern, peaks in PEAK_TFLOPS:
    if pattern.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


@dataclasses.dataclass
class Measurement:
  compile_s: float
  times_ms: List[float]
  flops: Optional[float]
  program_bytes: Optional[int]
  allocator_peak_bytes: Optional[int]

  @property
  def median_ms(self) -> Optional[float]:
    return statistics.median(self.times_ms) if self.times_ms else None


def _cost_flops(compiled) -> Optional[float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older JAX: one dict per computation
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def _program_bytes(compiled) -> Optional[int]:
  try:
    mem = compiled.memory_analysis()
  except (NotImplementedError, AttributeError):
    return None
  if mem is None:
    return None
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def _allocator_peak() -> Optional[int]:
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def measure(fn: Callable, args: Sequence[Any], repeats: int, warmup: int,
            label: str = "") -> Measurement:
  """Compiles `jax.jit(fn)` for `args` and times it (see the module docstring)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup if repeats else 0):
    jax.block_until_ready(compiled(*args))
  times = []
  with jax.profiler.TraceAnnotation(f"timed/{label}"):
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(1e3 * (time.perf_counter() - start))
  return Measurement(compile_s, times, _cost_flops(compiled), _program_bytes(compiled),
                     _allocator_peak())


def time_calls(fn: Callable[[], None], repeats: int, warmup: int) -> List[float]:
  """Milliseconds of `repeats` synchronous calls of `fn` after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return times
