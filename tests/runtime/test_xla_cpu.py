"""The XLA:CPU oneDNN convolution flags: when they are added, and that this jaxlib accepts
them and computes the same convolutions under them."""
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest

from ddfp_jax.runtime import xla_cpu

CHECKED = xla_cpu.CHECKED_JAXLIB[0]


def test_flags_are_added_to_existing_ones():
  flags, why = xla_cpu.onednn_flags("--xla_force_host_platform_device_count=4", CHECKED,
                                    "x86_64", None)
  assert flags.split() == ["--xla_force_host_platform_device_count=4",
                           *xla_cpu.ONEDNN_FLAGS]
  assert "oneDNN" in why


@pytest.mark.parametrize("current,version,machine,opt_out,reason", [
    ("", "0.0.1", "x86_64", None, "jaxlib 0.0.1"),          # a version never checked
    ("", None, "x86_64", None, "jaxlib None"),              # jaxlib not installed
    ("", CHECKED, "aarch64", None, "x86 only"),
    ("", CHECKED, "x86_64", "0", "DDFP_XLA_CPU_ONEDNN=0"),
    ("--xla_cpu_use_onednn=false", CHECKED, "x86_64", None, "already sets"),
    ("--xla_cpu_experimental_ynn_fusion_type=", CHECKED, "AMD64", "1", "already sets"),
])
def test_flags_are_left_out(current, version, machine, opt_out, reason):
  flags, why = xla_cpu.onednn_flags(current, version, machine, opt_out)
  assert flags == current
  assert reason in why


def test_environment_is_updated_in_place():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", xla_cpu.OPT_OUT: "0"}
  assert "DDFP_XLA_CPU_ONEDNN=0" in xla_cpu.use_onednn_convolutions(environ)
  assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


# A fresh process (XLA reads XLA_FLAGS once, when the backend starts): a 3x3 convolution,
# its gradients and a 1x1 product; prints them as JSON.
_CONV = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 9, 9, 8).astype(np.float32))
    w = jnp.asarray(rng.randn(3, 3, 8, 4).astype(np.float32))
    def f(x, w):
      y = jax.lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(jnp.sin(y))
    grads = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
    print(json.dumps([float(f(x, w))] + [np.asarray(g).ravel().tolist() for g in grads]))
""")


def _run_conv(xla_flags):
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _CONV], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_this_jaxlib_runs_convolutions_under_the_flags():
  environ = {"XLA_FLAGS": ""}
  why = xla_cpu.use_onednn_convolutions(environ)
  if metadata.version("jaxlib") not in xla_cpu.CHECKED_JAXLIB:
    pytest.skip(f"the flags are not used with this jaxlib ({why})")
  if not environ["XLA_FLAGS"]:
    pytest.skip(why)
  default = _run_conv("")
  onednn = _run_conv(environ["XLA_FLAGS"])   # XLA would abort on an unknown flag
  np.testing.assert_allclose(onednn[0], default[0], rtol=1e-5)
  for a, b in zip(onednn[1:], default[1:]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
