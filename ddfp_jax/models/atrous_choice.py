"""`model.atrous_impl = "auto"`: which form of the dilated convolutions a run computes.

The forms (`layers.ATROUS_IMPLS`) give the same numbers from the same parameters; their
speed depends on the backend. XLA:GPU legalises a dilated kernel by materialising it with
its zeros (a 3 x 3 kernel at ASPP's rate 18 becomes 37 x 37), so the dilated form can be
many times slower there; on XLA:CPU with the oneDNN convolutions it takes the time of the
undilated convolutions (docs/speed.md, results/model_amd-epyc-2cpu.md). So:

- a backend in `KNOWN` takes the form measured best there ("cpu": "dilated");
- any other (a GPU, a TPU, a backend not measured yet) times every form once, at start-up,
  on the run's own device and shapes: ASPP's branches (3 x 3 at the config's rates) over
  the last backbone stage's features of one device's batch, forward + backward, median
  of a few synchronised calls; the fastest wins.

The choice is made once per process and shape (`choose` is cached): `builders.build_model`
and the trainer, which logs it and writes it to the workdir (`record`), see the same one.
The form does not enter the run's fingerprint (`config.loading.SAME_NUMBERS`).
"""
import dataclasses
import functools
import json
import math
import os
import time
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from ddfp_jax.models import layers

AUTO = "auto"
KNOWN = {"cpu": "dilated"}
RECORD_FILE = "atrous_impl.json"


@dataclasses.dataclass(frozen=True)
class Choice:
  impl: str                        # one of layers.ATROUS_IMPLS
  backend: str
  how: str                         # "given" | "known for the backend" | "timed"
  timings_ms: Tuple[Tuple[str, float], ...] = ()   # (form, median ms) when timed

  def describe(self) -> str:
    text = f"model.atrous_impl: {self.impl} ({self.how}, backend {self.backend})"
    if self.timings_ms:
      text += "; fwd + bwd of ASPP's dilated branches: " + ", ".join(
          f"{name} {ms:.2f} ms" for name, ms in self.timings_ms)
    return text


def _median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))          # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return sorted(times)[len(times) // 2]


def time_forms(batch: int, size: int, channels: int, features: int, rates: Sequence[int],
               dtype=jnp.float32, repeats: int = 3) -> Dict[str, float]:
  """Median ms of forward + backward of 3 x 3 convolutions at `rates` (summed) over a
  (batch, size, size, channels) input, for each form of `layers.ATROUS_IMPLS`."""
  x = jax.random.normal(jax.random.key(0), (batch, size, size, channels)).astype(dtype)
  result = {}
  for impl in layers.ATROUS_IMPLS:
    convs = [layers.conv(features, 3, 1, r, dtype=dtype, atrous_impl=impl) for r in rates]
    params = [c.init(jax.random.key(i), x) for i, c in enumerate(convs)]

    def loss(params, x, convs=convs):
      return sum(jnp.sum(c.apply(p, x).astype(jnp.float32)) for c, p in zip(convs, params))
    result[impl] = _median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x), repeats)
  return result


@functools.lru_cache(maxsize=None)
def choose(backend: str, batch: int, size: int, channels: int, features: int,
           rates: Tuple[int, ...], dtype_name: str = "float32") -> Choice:
  """The form for these shapes on `backend` (module docstring)."""
  if backend in KNOWN:
    return Choice(KNOWN[backend], backend, "known for the backend")
  timings = time_forms(batch, size, channels, features, rates, jnp.dtype(dtype_name))
  best = min(timings, key=timings.get)
  return Choice(best, backend, "timed", tuple(timings.items()))


def resolve(config: ml_collections.ConfigDict, backend: Optional[str] = None) -> Choice:
  """The form `config.model.atrous_impl` names, or for "auto" the one `choose` picks
  for the config's ASPP on `backend` (default: JAX's default backend)."""
  m = config.model
  backend = backend or jax.default_backend()
  if m.atrous_impl != AUTO:
    return Choice(m.atrous_impl, backend, "given")
  # ResNet-18/34 end with 512 channels, the bottleneck depths with 2048.
  last_stage = 512 if m.depth in (18, 34) else 2048
  batch = max(1, config.data.labeled_per_device + config.data.unlabeled_per_device)
  return choose(backend, batch, math.ceil(config.data.crop_size / m.output_stride),
                layers.scaled(last_stage, m.width), layers.scaled(256, m.width),
                tuple(int(r) for r in m.aspp_rates), m.dtype)


def record(choice: Choice, workdir: str) -> str:
  """Writes `choice` to workdir/RECORD_FILE (JSON); returns the path."""
  path = os.path.join(workdir, RECORD_FILE)
  with open(path, "w") as f:
    json.dump({"impl": choice.impl, "backend": choice.backend, "how": choice.how,
               "timings_ms": dict(choice.timings_ms)}, f, indent=1)
  return path
