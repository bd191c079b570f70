"""What a results file says about the machine that produced it."""
import os
import platform


def cpu_model() -> str:
  """The CPU's model name (e.g. "AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
  """How many CPUs this process may run on (its affinity mask, not the machine's count)."""
  return len(os.sched_getaffinity(0))
