"""Jit-profiled microbenchmarks of the model, the flow, the perturbation and one DDFP step,
with the PyTorch reference model and flow timed side by side.

    PYTHONPATH=. python -m benchmarks.model                       # paper shapes: 513, 4+4
    PYTHONPATH=. python -m benchmarks.model --shapes paper_769    # Cityscapes: 769, 4+4
    PYTHONPATH=. python -m benchmarks.model --shapes cpu --torch  # CPU-sized, with PyTorch
    PYTHONPATH=. python -m benchmarks.model --benchmarks aspp,aspp_space_to_batch,aspp_shifted,aspp_undilated
    PYTHONPATH=. python -m benchmarks.model --profile /tmp/ddfp_trace   # + a jax.profiler trace

Every benchmark runs on ONE device with the per-device batch of the shapes (B = labeled +
unlabeled images; the paper: 4 + 4 per GPU):

  backbone             ResNet forward, inference mode, B images.
  aspp                 ASPP forward + backward (train-mode BN) on the stride-16 features of B
                       images; dilations 6/12/18 as a dilated-kernel convolution.
  aspp_space_to_batch  the same ASPP with model.atrous_impl = "space_to_batch".
  aspp_shifted         the same ASPP with model.atrous_impl = "shifted".
  aspp_undilated       the same convolutions with dilation 1: the floor the two above are
                       compared with (same FLOPs, no dilation).
  decoder              forward + backward from the backbone outputs: ASPP, projections,
                       upsampling, classifier block, classifier.
  model_forward        the whole DeepLabV3+ forward, inference mode, B images.
  model_train          forward + backward of the supervised loss (bilinear upsampling to the
                       crop, cross-entropy), train-mode BN and dropout, B images.
  flow                 the flow's NLL forward + gradient w.r.t. its parameters on
                       num_samples x D features (20 480 x 256 in the paper).
  perturbation         the density-descending delta of the unlabeled images' features (the
                       paper's site, v): the flow's log-density and its gradient w.r.t. v.
  train_step           one whole DDFP step (perturbation phase): teacher, CutMix, student
                       forward + backward with the perturbed branch, flow update, EMA.

How each is measured: the function is jitted; compile time = lowering + XLA compilation
(wall clock, no persistent compilation cache); FLOPs = XLA's cost analysis of the compiled
program; step time = median of --repeats calls after --warmup calls, each call synchronised
with `block_until_ready` (p10/p90 in the JSON); TFLOP/s = FLOPs / median; utilisation =
TFLOP/s / the device's peak for that dtype (`PEAK_TFLOPS`, or --peak_tflops); memory: XLA's
memory analysis of the program (arguments + outputs + temporaries - aliased) and, on
GPU/TPU, the allocator's peak so far in the process (monotone over the run).

The flow and the perturbation compute in float32 whatever model.dtype (as in the train
step): they run in float32 only.

--torch times the PyTorch reference of the parity tests (tests/torch_reference.py:
DeepLabV3+ and the release's FrEIA flow) on the same shapes: model_forward, model_train
(autograd backward of the same loss) and flow; on CUDA when PyTorch sees a GPU, else on the
CPU, bfloat16 through autocast. The report shows JAX time / PyTorch time.

Code: the cases in benchmarks/model_cases.py, the measuring in benchmarks/timing.py, the
PyTorch side in benchmarks/torch_side.py; this module is the command line and the report.

Results: results/model_<device>.json and .md. A run replaces its own entries (same shapes,
benchmark, dtype, framework) and keeps the others, so CPU and GPU runs, or 513 and 769,
add up in one file per device.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from benchmarks.model_cases import (ALL_BENCHMARKS, DTYPES, FLOAT32_ONLY, MAKERS, SHAPES,
                                    TORCH_BENCHMARKS, Shapes)
from benchmarks.timing import Measurement, measure, peak_tflops
from benchmarks.torch_side import torch_times
from ddfp_jax.runtime import hostinfo, xla_cpu

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"


def device_slug() -> str:
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    kind = hostinfo.cpu_model()
    count = hostinfo.usable_cpus()
    return f"{re.sub(r'[^a-z0-9]+', '-', kind.lower()).strip('-') or 'cpu'}-{count}cpu"
  return re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-")


def run_info() -> Dict[str, Any]:
  device = jax.local_devices()[0]
  info = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
          "platform": device.platform, "device_kind": device.device_kind,
          "python": platform.python_version(), "host_cpu": hostinfo.cpu_model(),
          "host_cpus": hostinfo.usable_cpus(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "command": "python -m benchmarks.model " + " ".join(sys.argv[1:])}
  return info


def _round(value: Optional[float], digits: int) -> Optional[float]:
  return None if value is None else round(value, digits)


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
  return float(np.percentile(np.asarray(values), q)) if len(values) else None


def jax_entry(name: str, shapes_name: str, dtype: str, m: Measurement,
              peak: Optional[float]) -> Dict[str, Any]:
  timed = m.flops is not None and m.median_ms is not None
  tflops = m.flops / (m.median_ms * 1e-3) / 1e12 if timed else None
  return {
      "framework": "jax", "benchmark": name, "shapes": shapes_name, "dtype": dtype,
      "compile_s": round(m.compile_s, 3), "median_ms": _round(m.median_ms, 3),
      "p10_ms": _round(_percentile(m.times_ms, 10), 3),
      "p90_ms": _round(_percentile(m.times_ms, 90), 3), "repeats": len(m.times_ms),
      "gflops": None if m.flops is None else round(m.flops / 1e9, 3),
      "tflops_per_s": None if tflops is None else round(tflops, 4),
      "utilisation": None if (tflops is None or not peak) else round(tflops / peak, 4),
      "peak_tflops": peak, "program_mib": None if m.program_bytes is None else round(
          m.program_bytes / 2**20, 1),
      "allocator_peak_mib": None if m.allocator_peak_bytes is None else round(
          m.allocator_peak_bytes / 2**20, 1),
  }


def torch_entry(name: str, shapes_name: str, dtype: str, times: List[float],
                info: Dict[str, Any]) -> Dict[str, Any]:
  return {"framework": "torch", "benchmark": name, "shapes": shapes_name, "dtype": dtype,
          "median_ms": round(statistics.median(times), 3),
          "p10_ms": round(_percentile(times, 10), 3), "p90_ms": round(_percentile(times, 90), 3),
          "repeats": len(times), **{f"torch_{k}": v for k, v in info.items()}}


def _key(entry) -> Tuple[str, str, str, str]:
  return entry["shapes"], entry["benchmark"], entry["dtype"], entry["framework"]


def merge(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """`old` with every entry of the same (shapes, benchmark, dtype, framework) as one in
  `new` replaced; in the order of ALL_BENCHMARKS."""
  replaced = {_key(e) for e in new}
  entries = [e for e in old if _key(e) not in replaced] + list(new)
  order = {name: i for i, name in enumerate(ALL_BENCHMARKS)}
  return sorted(entries, key=lambda e: (e["shapes"], e["dtype"], order.get(e["benchmark"], 99),
                                        e["framework"]))


def _fmt(value, digits=1) -> str:
  if value is None:
    return ""
  return f"{value:,.{digits}f}"


def markdown(results: Dict[str, Any]) -> str:
  info = results["info"]
  device = info["host_cpu"] if info["platform"] == "cpu" else info["device_kind"]
  lines = [f"# Model microbenchmarks: {device} ({info['platform']})", "",
           f"Host CPU: {info['host_cpu']}, {info['host_cpus']} usable CPUs. Produced by "
           "`python -m benchmarks.model` (see its docstring for what each row times); the "
           "command of each run is in the JSON. One device, per-device batch.", ""]
  torch_ms = {(e["shapes"], e["benchmark"], e["dtype"]): e["median_ms"]
              for e in results["entries"] if e["framework"] == "torch"}
  by_shapes: Dict[str, List[Dict[str, Any]]] = {}
  for e in results["entries"]:
    by_shapes.setdefault(e["shapes"], []).append(e)
  for shapes_name, entries in by_shapes.items():
    run = results["runs"].get(shapes_name, {})
    lines += [f"## {shapes_name}: {run.get('note', '')}", "",
              f"Run {run.get('date', '?')}, jax {run.get('jax', '?')}: `{run.get('command', '')}`",
              ""]
    if run.get("xla_flags"):
      lines += [f"XLA_FLAGS: `{run['xla_flags']}`", ""]
    lines += ["| benchmark | dtype | compile s | median ms | p10-p90 ms | GFLOP (XLA) | "
              "TFLOP/s | util. | program MiB | PyTorch ms | JAX / PyTorch |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
      if e["framework"] != "jax":
        continue
      theirs = torch_ms.get((e["shapes"], e["benchmark"], e["dtype"]))
      ratio = "" if theirs is None or e["median_ms"] is None else (
          f"{e['median_ms'] / theirs:.2f}")
      spread = "" if e["p10_ms"] is None else f"{_fmt(e['p10_ms'])}-{_fmt(e['p90_ms'])}"
      util = "" if e["utilisation"] is None else f"{100 * e['utilisation']:.1f} %"
      lines.append(
          f"| {e['benchmark']} | {e['dtype']} | {_fmt(e['compile_s'])} | "
          f"{_fmt(e['median_ms'])} | {spread} | "
          f"{_fmt(e['gflops'])} | {_fmt(e['tflops_per_s'], 3)} | {util} | "
          f"{_fmt(e['program_mib'])} | {_fmt(theirs)} | {ratio} |")
    lines.append("")
  return "\n".join(lines)


def write_results(out_dir: pathlib.Path, slug: str, info: Dict[str, Any], shapes_name: str,
                  shapes: Shapes, entries: List[Dict[str, Any]]) -> Tuple[pathlib.Path,
                                                                           pathlib.Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  json_path, md_path = out_dir / f"model_{slug}.json", out_dir / f"model_{slug}.md"
  results = {"info": info, "runs": {}, "entries": []}
  if json_path.exists():
    results = json.loads(json_path.read_text())
  results["info"] = {k: info[k] for k in ("platform", "device_kind", "host_cpu", "host_cpus")}
  results["runs"][shapes_name] = {**info, "shapes": dataclasses.asdict(shapes),
                                  "note": shapes.note}
  results["entries"] = merge(results["entries"], entries)
  # Each file replaced whole: a run cut mid-write (a timeout's SIGTERM) leaves the last
  # complete one.
  for path, text in ((json_path, json.dumps(results, indent=1) + "\n"),
                     (md_path, markdown(results))):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
  return json_path, md_path


# --- command line ------------------------------------------------------------------------------


def _names(text: str, valid: Sequence[str], what: str) -> List[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  if names == ["all"]:
    return list(valid)
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise SystemExit(f"error: unknown {what} {', '.join(unknown)}; choose from "
                     f"{', '.join(valid)} (comma-separated) or 'all'.")
  return names


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default="paper", choices=sorted(SHAPES))
  parser.add_argument("--benchmarks", default="all",
                      help=f"comma-separated subset of {', '.join(ALL_BENCHMARKS)}")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--repeats", type=int, default=20,
                      help="timed calls per benchmark; 0: compile only (compile time, FLOPs, "
                      "memory), e.g. to count the paper shapes' FLOPs on a CPU")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--torch", action="store_true",
                      help="also time the PyTorch reference (model_forward, model_train, flow)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the device's peak TFLOP/s for utilisation (default: PEAK_TFLOPS)")
  parser.add_argument("--profile", default=None, help="write a jax.profiler trace here")
  parser.add_argument("--out_dir", default=str(RESULTS_DIR))
  args = parser.parse_args(argv)
  args.benchmark_names = _names(args.benchmarks, ALL_BENCHMARKS, "benchmark(s)")
  args.dtype_names = _names(args.dtypes, DTYPES, "dtype(s)")
  if args.repeats < 0 or args.warmup < 0:
    parser.error("--repeats and --warmup must be >= 0")
  return args


def run(args: argparse.Namespace,
        on_entry: Callable[[List[Dict[str, Any]]], Any] = lambda entries: None
        ) -> List[Dict[str, Any]]:
  """The entries of every case of `args`; `on_entry(entries so far)` after each."""
  shapes = SHAPES[args.shapes]
  kind = jax.local_devices()[0].device_kind
  entries = []
  trace = (jax.profiler.trace(args.profile) if args.profile else contextlib.nullcontext())
  with trace:
    for dtype in args.dtype_names:
      peak = args.peak_tflops or peak_tflops(kind, dtype)
      for name in args.benchmark_names:
        if dtype != "float32" and name in FLOAT32_ONLY:
          continue
        fn, fn_args = MAKERS[name](shapes, dtype)
        m = measure(fn, fn_args, args.repeats, args.warmup, label=f"{name}/{dtype}")
        entry = jax_entry(name, args.shapes, dtype, m, peak)
        entries.append(entry)
        on_entry(entries)
        print(f"{name:>20} {dtype:>8}  compile {entry['compile_s']:7.1f} s  "
              f"median {_fmt(entry['median_ms'], 2):>10} ms  {_fmt(entry['gflops'])} GFLOP",
              flush=True)
        del fn, fn_args
        if args.torch and args.repeats and name in TORCH_BENCHMARKS:
          times, info = torch_times(name, shapes, dtype, args.repeats, args.warmup)
          entries.append(torch_entry(name, args.shapes, dtype, times, info))
          on_entry(entries)
          print(f"{'torch ' + name:>20} {dtype:>8}  median {statistics.median(times):10.2f} ms "
                f"(JAX / PyTorch {entry['median_ms'] / statistics.median(times):.2f})",
                flush=True)
  return entries


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  print(f"XLA:CPU convolutions: {xla_cpu.use_onednn_convolutions()}.")
  info = run_info()

  def write(entries):
    return write_results(pathlib.Path(args.out_dir), device_slug(), info, args.shapes,
                         SHAPES[args.shapes], entries)
  # The results are written after every case, so a run cut short keeps what it measured.
  json_path, md_path = write(run(args, on_entry=write))
  print(f"Wrote {json_path} and {md_path}.")
  if args.profile:
    print(f"Trace in {args.profile} (open with TensorBoard's profile plugin or Perfetto).")


if __name__ == "__main__":
  main()
