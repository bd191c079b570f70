r"""DGCL's class-memory computations beside the network's, in XLA's FLOPs at the paper's
shapes, and timed on this machine at a small shape.

    PYTHONPATH=. python -m benchmarks.memory_contrast              # VOC 732's shapes
    PYTHONPATH=. python -m benchmarks.memory_contrast --settings voc cityscapes

Per setting (the release's per-device batch and device count):

  contrastive_loss   the loss and its gradient w.r.t. the projections
                     (`methods.density_contrast.contrastive_loss`): per class the density
                     of up to 10 000 pixels against 10 000 memory entries, K classes, on
                     the labeled + weak unlabeled pixels of one device (2B images at the
                     stride-4 grid).
  memory_update      `methods.class_memory.update` on the pixels gathered from every
                     device: up to 1000 new entries per class, each scored against the
                     class's 10 000.
  network            the rest of a DGCL step's heavy part, for scale: the student's forward
                     and backward on 3B images (labeled, weak, strong) and the teacher's
                     forward on 2B, DeepLabV3+ / ResNet-101 at the crop.

FLOPs are XLA's cost analysis of each compiled program with all classes in one pass (XLA
counts a loop's body once, so the default one-class-at-a-time loop would be undercounted;
the arithmetic is the same), compiled for the shapes without running (so the paper's shapes cost only compile time here); the memory's share is
(loss + update) / (loss + update + network). Static shapes: XLA counts the whole 10 000 x
10 000 similarity of every class whatever the labels hold, the step's cost at the
worst case. `--time` also runs the two memory programs at the small `cpu` shape.
Written to OUT/memory_contrast_HOST.{json,md}.
"""
import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from ddfp_jax.runtime import hostinfo, xla_cpu


@dataclasses.dataclass(frozen=True)
class Setting:
  num_classes: int
  crop: int
  per_device: int        # B: labeled = unlabeled images per device
  devices: int           # the release's device count (the memory gathers from all)
  output_stride: int
  memory: int = 10_000
  max_pixels: int = 10_000
  per_class: int = 1000
  dim: int = 256
  note: str = ""

  @property
  def grid(self) -> int:
    return (self.crop - 1) // 4 + 1    # the stride-4 feature grid (129 for 513)


SETTINGS: Dict[str, Setting] = {
    "voc": Setting(21, 513, 4, 4, 16, note="VOC 732: crop 513, 4+4 per GPU, 4 GPUs"),
    "cityscapes": Setting(19, 769, 2, 8, 8, note="Cityscapes 372: crop 769, 2+2, 8 GPUs"),
    # Runs on a CPU in seconds: what --time measures.
    "cpu": Setting(21, 129, 2, 1, 16, memory=1000, max_pixels=1000, per_class=100,
                   note="small: crop 129, 2+2, memory 1000 per class"),
}


def _flops(fn, *args) -> Optional[float]:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _memory_args(s: Setting, pixels: int):
  from ddfp_jax.methods import class_memory  # pylint: disable=import-outside-toplevel
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  memory = jax.eval_shape(lambda: class_memory.init(s.num_classes, s.memory, s.dim, s.dim))
  return (spec((pixels, s.dim)), spec((pixels, s.dim)), spec((pixels,), jnp.int32), memory,
          jax.eval_shape(lambda: jax.random.key(0)))


def memory_programs(s: Setting):
  """(loss fn, loss args, update fn, update args) as abstract shapes."""
  from ddfp_jax.methods import class_memory  # pylint: disable=import-outside-toplevel
  from ddfp_jax.methods.density_contrast import (  # pylint: disable=import-outside-toplevel
      ContrastConfig, contrastive_loss)
  # Every class in one pass: XLA's cost analysis counts a loop's body once, so the
  # one-class-at-a-time program would be counted K times too low.
  cfg = ContrastConfig(max_pixels=s.max_pixels, classes_per_pass=s.num_classes)
  loss = jax.grad(lambda rep, fts, labels, memory, key: contrastive_loss(
      rep, fts, labels, memory, key, cfg)[0])
  update = lambda fts, rep, labels, memory, key: class_memory.update(
      memory, fts, rep, labels, key, per_class=s.per_class,
      classes_per_pass=s.num_classes)
  local = 2 * s.per_device * s.grid * s.grid
  gathered = local * s.devices
  return loss, _memory_args(s, local), update, _memory_args(s, gathered)


def network_flops(s: Setting) -> float:
  """Student forward + backward on 3B images and teacher forward on 2B (XLA FLOPs)."""
  from configs import base  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  config = base.get_config()
  config.data.num_classes = s.num_classes
  config.model.output_stride = s.output_stride
  config.model.multi_grid = (2, 2, 4)
  config.model.mixed_bn = False
  config.model.projection_dim = s.dim
  model = builders.build_model(config)
  variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 65, 65, 3)), False),
                             jax.random.key(0))

  def student(params, stats, x):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x, True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.mean(out)

  image = lambda n: jax.ShapeDtypeStruct((n, s.crop, s.crop, 3), jnp.float32)
  train = _flops(jax.grad(student), variables["params"], variables["batch_stats"],
                 image(3 * s.per_device))
  teacher = _flops(lambda v, x: model.apply(v, x, False), variables, image(2 * s.per_device))
  return train + teacher


def _concrete(args, seed=0):
  """Random arrays of the abstract args (labels in [0, K))."""
  rep, fts, labels, memory, _ = args
  k = jax.random.split(jax.random.key(seed), 4)
  num_classes, size = memory["density"].shape
  return (jax.random.normal(k[0], rep.shape), jax.random.normal(k[1], fts.shape),
          jax.random.randint(k[2], labels.shape, 0, num_classes),
          {"fts": jax.random.normal(k[3], memory["fts"].shape),
           "rep": jax.random.normal(k[3], memory["rep"].shape),
           "density": jax.random.uniform(k[3], memory["density"].shape),
           "count": jnp.full((num_classes,), size, jnp.int32),
           "next": jnp.zeros((num_classes,), jnp.int32)},
          jax.random.key(seed))


def run(settings: Sequence[str], with_time: bool) -> dict:
  from benchmarks import timing  # pylint: disable=import-outside-toplevel
  rows = []
  for name in settings:
    s = SETTINGS[name]
    loss, loss_args, update, update_args = memory_programs(s)
    row = {"setting": name, "note": s.note, **dataclasses.asdict(s),
           "loss_gflop": _flops(loss, *loss_args) / 1e9,
           "update_gflop": _flops(update, *update_args) / 1e9}
    if name != "cpu":
      row["network_gflop"] = network_flops(s) / 1e9
      memory = row["loss_gflop"] + row["update_gflop"]
      row["memory_share"] = memory / (memory + row["network_gflop"])
    if with_time and name == "cpu":
      for key, fn, args in (("loss", loss, loss_args), ("update", update, update_args)):
        m = timing.measure(fn, _concrete(args), repeats=5, warmup=1, label=key)
        row[f"{key}_ms"] = m.median_ms
    rows.append(row)
    print(json.dumps(row), flush=True)
  return {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
          "python": platform.python_version(), "device": jax.devices()[0].device_kind,
          "host_cpu": hostinfo.cpu_model(), "host_cpus": hostinfo.usable_cpus(),
          "rows": rows}


def markdown(results: dict, command: str) -> str:
  lines = [f"# DGCL's memory computations: {results['host_cpu']}", "",
           f"`{command}` ({results['date']}, jax {results['jax']}, "
           f"{results['host_cpus']} CPUs). GFLOP: XLA's cost analysis of each compiled "
           "program (benchmarks/memory_contrast.py); the network: the student's forward + "
           "backward on 3B images and the teacher's forward on 2B, DeepLabV3+ / ResNet-101.",
           "", "| setting | contrastive loss + grad GFLOP | memory update GFLOP | network "
           "GFLOP | memory share | CPU ms (loss / update) |", "|---|---:|---:|---:|---:|---|"]
  for r in results["rows"]:
    share = f"{100 * r['memory_share']:.1f} %" if "memory_share" in r else ""
    network = f"{r['network_gflop']:.0f}" if "network_gflop" in r else ""
    times = (f"{r['loss_ms']:.0f} / {r['update_ms']:.0f}" if "loss_ms" in r else "")
    lines.append(f"| {r['setting']}: {r['note']} | {r['loss_gflop']:.1f} | "
                 f"{r['update_gflop']:.1f} | {network} | {share} | {times} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_contrast",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--settings", nargs="+", default=["voc"], choices=sorted(SETTINGS))
  parser.add_argument("--time", action="store_true", help="also time the 'cpu' setting")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  xla_cpu.use_onednn_convolutions()
  settings = list(args.settings) + (["cpu"] if args.time and "cpu" not in args.settings else [])
  results = run(settings, args.time)
  command = "python -m benchmarks.memory_contrast " + " ".join(
      sys.argv[1:] if argv is None else argv)
  from benchmarks.model import device_slug  # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f"memory_contrast_{device_slug()}")
  with open(stem + ".json", "w") as f:
    json.dump({"command": command, **results}, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(results, command))
  print(f"results: {stem}.{{json,md}}")


if __name__ == "__main__":
  main()
