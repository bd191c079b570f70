r"""CSS's prototype contrastive loss: its two ways of computing the negatives'
similarities, and the negative-class draw, timed on this machine.

    PYTHONPATH=. python -m benchmarks.prototype_contrast                 # N 4096 .. 65536
    PYTHONPATH=. python -m benchmarks.prototype_contrast --pixels 4096 --dim 256

Per pixel count N (the gathered [labeled, strong] pixels at the representation grid;
the demo has 4096 at D = 64): the loss and its gradient w.r.t. the representations
(`methods.prototypes.contrastive_loss`, K classes, 256 anchors x 512 negatives each) in
the "dense" form (the anchors' similarities to every pixel, one matmul, negatives picked
from it) and the "gather" form (the negatives' representations gathered, Q x M x D), and
the negative-class draw of one step (K x 256 x 512 classes) by inverse CDF (the loss's)
and by `jax.random.categorical` (K Gumbels per draw). Median of synchronised calls after
a warm-up. `DENSE_PIXELS_PER_NEGATIVE` in prototypes.py picks the form from these.
Written to OUT/prototype_contrast_HOST.{json,md}.
"""
import argparse
import json
import os
import platform
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from benchmarks import timing
from ddfp_jax.methods import prototypes as pt
from ddfp_jax.runtime import hostinfo


def loss_program(n: int, dim: int, num_classes: int, dense: bool):
  key = jax.random.key(0)
  rep = jax.random.normal(key, (n, dim))
  labels = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, num_classes)
  everywhere = jnp.ones((n,), bool)
  prototypes = jax.random.normal(jax.random.fold_in(key, 2), (num_classes, dim))
  settings = pt.ContrastSettings()

  def fn(r, k):
    return jax.value_and_grad(lambda x: pt.contrastive_loss(
        x, labels, everywhere, everywhere, prototypes, k, settings, dense=dense)[0])(r)
  return fn, (rep, jax.random.key(3))


def draw_program(num_classes: int, categorical: bool):
  settings = pt.ContrastSettings()
  shape = (settings.num_queries, settings.num_negatives)
  probs = jax.nn.softmax(jnp.linspace(0.0, 2.0, num_classes))

  def fn(key):
    def one(k):
      if categorical:
        return jax.random.categorical(k, jnp.log(probs), shape=shape)
      return pt.inverse_cdf(probs, jax.random.uniform(k, shape))
    return jax.lax.map(one, jax.random.split(key, num_classes))
  return fn, (jax.random.key(4),)


def run(pixels: Sequence[int], dim: int, num_classes: int, repeats: int) -> dict:
  rows = []
  for n in pixels:
    row = {"pixels": n, "dim": dim, "classes": num_classes}
    for form in ("dense", "gather"):
      fn, args = loss_program(n, dim, num_classes, form == "dense")
      row[f"{form}_ms"] = timing.measure(fn, args, repeats, 1, form).median_ms
    rows.append(row)
    print(json.dumps(row), flush=True)
  draws = {}
  for name in ("inverse_cdf", "categorical"):
    fn, args = draw_program(num_classes, name == "categorical")
    draws[f"{name}_ms"] = timing.measure(fn, args, repeats, 1, name).median_ms
  print(json.dumps(draws), flush=True)
  return {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
          "python": platform.python_version(), "device": jax.devices()[0].device_kind,
          "host_cpu": hostinfo.cpu_model(), "host_cpus": hostinfo.usable_cpus(),
          "rows": rows, "draws": draws}


def markdown(results: dict, command: str) -> str:
  lines = [f"# CSS's prototype contrastive loss: {results['host_cpu']}", "",
           f"`{command}` ({results['date']}, jax {results['jax']}, {results['host_cpus']} "
           f"CPUs, device {results['device']}). Loss + gradient, 256 anchors x 512 "
           "negatives per class, median ms (benchmarks/prototype_contrast.py).", "",
           "| pixels N | D | classes | dense ms | gather ms |", "|---:|---:|---:|---:|---:|"]
  for r in results["rows"]:
    lines.append(f"| {r['pixels']} | {r['dim']} | {r['classes']} | {r['dense_ms']:.0f} | "
                 f"{r['gather_ms']:.0f} |")
  d = results["draws"]
  lines += ["", f"Negative-class draw of one step (classes x 256 x 512): inverse CDF "
                f"{d['inverse_cdf_ms']:.0f} ms, jax.random.categorical "
                f"{d['categorical_ms']:.0f} ms."]
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.prototype_contrast",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--pixels", type=int, nargs="+", default=[4096, 16384, 65536])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--classes", type=int, default=11)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  results = run(args.pixels, args.dim, args.classes, args.repeats)
  command = "python -m benchmarks.prototype_contrast " + " ".join(
      sys.argv[1:] if argv is None else argv)
  from benchmarks.model import device_slug  # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f"prototype_contrast_{device_slug()}")
  with open(stem + ".json", "w") as f:
    json.dump({"command": command.strip(), **results}, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(results, command.strip()))
  print(f"results: {stem}.{{json,md}}")


if __name__ == "__main__":
  main()
