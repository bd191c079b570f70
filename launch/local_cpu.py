r"""Start a multi-process run on this machine's CPU, for testing the multi-host paths.

    python launch/local_cpu.py --num_processes 2 --devices_per_process 2 -- \
        --config configs/demo.py --workdir /tmp/ddfp_mp --config.total_steps=20

starts `python main.py ARGS --coordinator 127.0.0.1:PORT --num_processes N
--process_id i` for i = 0..N-1, each with K fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=K, JAX_PLATFORMS=cpu) and gloo
collectives between the processes, so a run has N x K devices in N processes, as on N
hosts. Every line a process prints is shown with its prefix `[p<i>]` (and written to
`--log_dir/process_<i>.log` if given).

If a process exits with an error, the others are given `--grace` seconds to stop on their
own (main.py stops them with a message when their peer is gone), then terminated. The exit
status is 0 if every process succeeded, else the first non-zero status.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "main.py")


def free_port() -> int:
  """A TCP port that is free on 127.0.0.1 now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int, base: Optional[dict] = None) -> dict:
  """The environment of one process: K fake CPU devices, CPU only, gloo collectives."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def commands(main_args: Sequence[str], num_processes: int, port: int,
             python: str = sys.executable, main: str = MAIN) -> List[List[str]]:
  """The command line of every process."""
  return [[python, main, *main_args, f"--coordinator=127.0.0.1:{port}",
           f"--num_processes={num_processes}", f"--process_id={i}"]
          for i in range(num_processes)]


def start_processes(main_args: Sequence[str], num_processes: int, devices_per_process: int,
                    port: Optional[int] = None, log_dir: Optional[str] = None,
                    env: Optional[dict] = None, cwd: str = REPO,
                    main: str = MAIN) -> List[subprocess.Popen]:
  """Starts the processes and returns them (stdout and stderr merged, text mode).

  With `log_dir`, process i writes to `log_dir/process_<i>.log` and its `stdout` is None;
  otherwise `stdout` is a pipe the caller reads.
  """
  port = free_port() if port is None else port
  procs = []
  for i, cmd in enumerate(commands(main_args, num_processes, port, main=main)):
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"process_{i}.log"), "w")  # pylint: disable=consider-using-with
    else:
      out = subprocess.PIPE
    procs.append(subprocess.Popen(cmd, cwd=cwd, env=process_env(devices_per_process, env),
                                  stdout=out, stderr=subprocess.STDOUT, text=True))
    if log_dir:
      out.close()
  return procs


def _stream(index: int, proc: subprocess.Popen, log_dir: Optional[str]) -> None:
  log = open(os.path.join(log_dir, f"process_{index}.log"), "w") if log_dir else None  # pylint: disable=consider-using-with
  for line in proc.stdout:   # keep draining even if our own stdout is gone
    try:
      sys.stdout.write(f"[p{index}] {line}")
      sys.stdout.flush()
    except (OSError, ValueError):
      pass
    if log:
      log.write(line)
      log.flush()
  if log:
    log.close()


def wait_all(procs: Sequence[subprocess.Popen], grace: float) -> int:
  """Waits for every process; once one fails, the others get `grace` seconds, then are
  terminated. Returns 0 or the first non-zero exit status."""
  first_failure = None
  deadline = None
  while True:
    codes = [p.poll() for p in procs]
    for i, code in enumerate(codes):
      if code not in (None, 0) and first_failure is None:
        first_failure = code
        deadline = time.monotonic() + grace
        print(f"[launch] process {i} exited with status {code}; waiting up to {grace:.0f} s "
              "for the others to stop.", file=sys.stderr, flush=True)
    if all(c is not None for c in codes):
      return first_failure or 0
    if deadline is not None and time.monotonic() > deadline:
      for i, p in enumerate(procs):
        if p.poll() is None:
          print(f"[launch] terminating process {i} (pid {p.pid}).", file=sys.stderr,
                flush=True)
          p.terminate()
      for p in procs:
        try:
          p.wait(timeout=10)
        except subprocess.TimeoutExpired:
          p.kill()
      return first_failure
    time.sleep(0.2)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description="Run main.py as N local CPU processes with K fake devices each.",
      usage="%(prog)s [options] -- MAIN_PY_ARGS")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a "
                      "free one)")
  parser.add_argument("--log_dir", default=None, help="also write process_<i>.log here")
  parser.add_argument("--grace", type=float, default=120.0, help="seconds the others get to "
                      "stop after one process fails, before they are terminated")
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    split = argv.index("--")
    ours, main_args = argv[:split], argv[split + 1:]
  else:
    ours, main_args = argv, []
  args = parser.parse_args(ours)
  if not main_args:
    parser.error("pass main.py's arguments after --, e.g. -- --config configs/demo.py "
                 "--workdir /tmp/ddfp_mp")
  if args.log_dir:
    os.makedirs(args.log_dir, exist_ok=True)
  procs = start_processes(main_args, args.num_processes, args.devices_per_process,
                          port=args.port)
  threads = [threading.Thread(target=_stream, args=(i, p, args.log_dir), daemon=True)
             for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  try:
    code = wait_all(procs, args.grace)
  except KeyboardInterrupt:
    for p in procs:
      p.terminate()
    code = 130
  for t in threads:
    t.join(timeout=5)
  return code


if __name__ == "__main__":
  sys.exit(main())
