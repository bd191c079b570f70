"""Test set-up: fake several CPU devices *before* JAX is imported anywhere.

Every test module imports JAX after this file has run, so pmap / cross-replica code paths are
exercised with 4 host devices on a CPU-only machine.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
# LLVM's -O0 for XLA:CPU's generated code: the suite's programs are tiny, so their run time
# stays what it was while compiling them (most of the suite's time) takes about 35 % less.
# The processes tests start inherit it, so they run the same programs as this one.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# The CPU convolution flags main.py and the benchmarks use (ddfp_jax/runtime/xla_cpu.py): tests in
# this process and the processes they start run the same XLA program.
from ddfp_jax.runtime import xla_cpu  # noqa: E402

xla_cpu.use_onednn_convolutions()
# TensorFlow (used only by the input pipeline) must never grab an accelerator in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

import jax  # noqa: E402

import ddfp_jax  # noqa: E402,F401  (loads distrax before any test imports TensorFlow)

# Threefry key derivation dominates XLA:CPU compile time of `model.init` (about 4x slower
# than "rbg" here). No test depends on which generator produces the random bits.
jax.config.update("jax_default_prng_impl", "rbg")

# The processes tests start (main.py runs, multi-process runs) share one compilation
# cache: JAX reads its options from JAX_* variables, and they inherit this environment,
# so the many short training runs of the CLI tests compile each program once. This
# process itself does not use it: loading a large cached train step back into a process
# that already holds many compiled programs has aborted XLA:CPU here (in
# `deserialize_executable`), and such a crash would end the whole test session.
os.environ.update(
    JAX_DEFAULT_PRNG_IMPL="rbg",
    JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="ddfp_jax_xla_"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1.0")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops the programs a test module compiled once it is done: this process runs the
  whole suite, and compiled train steps held to the end would exhaust its memory."""
  yield
  gc.collect()
  jax.clear_caches()
