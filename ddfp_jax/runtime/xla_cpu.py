"""XLA:CPU settings the entry points apply before JAX starts its CPU backend.

XLA:CPU's default convolution kernels (YNNPACK fusions) compute the weight gradient of a
k x k convolution as a convolution whose window is the whole image, and the model's
forward + backward spends most of its time there. With oneDNN's convolutions instead the
model's forward, forward + backward and whole DDFP step are 13-17 % faster on x86
(docs/speed.md). Two flags select them:
`--xla_cpu_use_onednn=true` and, so that YNNPACK stops claiming the convolutions first,
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`.

XLA aborts the process on a flag it does not know, and the second flag is experimental, so
the flags are added only for the jaxlib versions they were checked with, only on x86, and
never over a user's own setting of either flag. `DDFP_XLA_CPU_ONEDNN=0` keeps XLA's
defaults. The flags change nothing on GPU/TPU backends.

`main.py`, `benchmarks/model.py` and the tests (tests/conftest.py) call
`use_onednn_convolutions()` first thing; code that imports the library elsewhere gets XLA's
defaults unless it calls it before its first JAX computation.
"""
import os
import platform
from importlib import metadata
from typing import Mapping, Optional, Tuple

ONEDNN_FLAGS = ("--xla_cpu_use_onednn=true",
                "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
# jaxlib versions whose XLA knows both flags (checked by tests/test_xla_cpu.py, which runs
# a convolution under them in a fresh process).
CHECKED_JAXLIB = ("0.10.2",)
OPT_OUT = "DDFP_XLA_CPU_ONEDNN"
_X86 = ("x86_64", "amd64", "i686", "x86")


def onednn_flags(xla_flags: str, jaxlib_version: Optional[str], machine: str,
                 opt_out: Optional[str]) -> Tuple[str, str]:
  """(new XLA_FLAGS, why) for the given current XLA_FLAGS, jaxlib version, CPU
  architecture and value of DDFP_XLA_CPU_ONEDNN. XLA_FLAGS comes back unchanged when the
  flags do not apply; `why` says which case it was."""
  if opt_out is not None and opt_out.strip().lower() in ("0", "false", "no", "off"):
    return xla_flags, f"{OPT_OUT}={opt_out}: XLA's default CPU convolutions"
  if machine.lower() not in _X86:
    return xla_flags, f"{machine} CPU: oneDNN convolutions are used on x86 only"
  if jaxlib_version not in CHECKED_JAXLIB:
    return xla_flags, (f"jaxlib {jaxlib_version} is not one of {CHECKED_JAXLIB}, whose XLA "
                       "is known to accept the flags: XLA's default CPU convolutions")
  names = [flag.split("=")[0] for flag in ONEDNN_FLAGS]
  if any(name in xla_flags for name in names):
    return xla_flags, "XLA_FLAGS already sets the CPU convolution flags: left as they are"
  return " ".join([xla_flags.strip(), *ONEDNN_FLAGS]).strip(), "oneDNN CPU convolutions"


def use_onednn_convolutions(environ: Optional[Mapping[str, str]] = None) -> str:
  """Adds ONEDNN_FLAGS to XLA_FLAGS in `environ` (default os.environ) where they apply
  (see `onednn_flags`); returns why it did or did not. Takes effect only if called before
  JAX creates its CPU backend (the first computation or device query)."""
  environ = os.environ if environ is None else environ
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    version = None
  flags, why = onednn_flags(environ.get("XLA_FLAGS", ""), version, platform.machine(),
                            environ.get(OPT_OUT))
  if flags:
    environ["XLA_FLAGS"] = flags
  return why
