"""Test set-up: fake several CPU devices *before* JAX is imported anywhere.

Every test module imports JAX after this file has run, so pmap / cross-replica code paths are
exercised with 4 host devices on a CPU-only machine.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
# The CPU convolution flags main.py and the benchmarks use (ddfp_jax/xla_cpu.py): tests in
# this process and the processes they start run the same XLA program.
from ddfp_jax import xla_cpu  # noqa: E402

xla_cpu.use_onednn_convolutions()
# TensorFlow (used only by the input pipeline) must never grab an accelerator in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import jax  # noqa: E402

import ddfp_jax  # noqa: E402,F401  (loads distrax before any test imports TensorFlow)

# Threefry key derivation dominates XLA:CPU compile time of `model.init` (about 4x slower
# than "rbg" here). No test depends on which generator produces the random bits.
jax.config.update("jax_default_prng_impl", "rbg")

# Several tests build the same train step anew (each trainer run makes its own pmap):
# a compilation cache for the session lets them reuse the compiled programs.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="ddfp_jax_xla_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
# The same settings for the processes tests start (main.py runs, multi-process runs): JAX
# reads its options from JAX_* variables, and they inherit this environment, so the many
# short training runs of the CLI tests share one cache too.
os.environ.update(
    JAX_DEFAULT_PRNG_IMPL="rbg",
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1.0")
