"""USSS's measurements for `ddfp_jax.tools.diagnose`: what its entropies see on the
validation images of each domain, in inference mode.

USSS trains no teacher; what it adds to joint training is the two entropies of the pixel
embeddings e against fixed label embeddings (methods/usss.py). Per domain d, over the
labeled pixels of d's validation set (scores brought to the label grid as the loss does):

- `embedding_norm`: mean ‖e‖. The rows are unit vectors and e is not normalised, so the
  entropies can fall by growing ‖e‖ alone (the spec notes the release has no guard).
- `within` / `cross`: the mean entropies the loss minimises, against d's label
  embeddings and (with `usss.temperature`) against every other domain's.
- `within_unit`: the within entropy of e / ‖e‖: what is left when the norm is taken away,
  i.e. how sharply the direction of e alone picks a class.
- `embedding_accuracy`: the share of pixels whose highest-scoring label embedding is
  their true class: whether the embedding space the entropies sharpen is the label space.
- `head_accuracy`: the same share for domain d's segmentation head (a pixel read as the
  "None" channel is a miss), for comparison.
- `embedding_top_class`, `embedding_top_share`: the class whose label embedding wins the
  most pixels, and the share it wins. One class winning nearly every pixel while the
  entropy is near 0 is a collapse: the entropies were minimised by sending every pixel to
  one row, which tells the encoder nothing about the classes.

The label embeddings are the ones stage 2 scores against (`usss.current_embeddings`): for
a run that never reached stage 2 (joint training, alpha = beta = 0) they are the fixed
random rows and the embedding head never took a gradient, so its numbers describe an
untrained projection, the baseline the entropies start from.
"""
from typing import Dict, Sequence

import numpy as np

TERMS = ("embedding_norm", "within", "cross", "within_unit", "embedding_accuracy",
         "head_accuracy", "embedding_top_class", "embedding_top_share")


def make_measure(config, state, index: int, domain: str):
  """A jitted fn(images, labels, keep) -> {term: (sum, count)} for domain `domain`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ddfp_jax.data.domains import domain_names  # pylint: disable=import-outside-toplevel
  from ddfp_jax.methods import entropy_module, usss  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  from ddfp_jax.tools.diagnose import masked_mean as mean  # pylint: disable=import-outside-toplevel

  model = builders.build_model(config)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  tables = usss.current_embeddings(state.extra)
  others = [o for o in domain_names(config) if o != domain]
  up = usss.upsampler(config.usss.upsample)
  u = config.usss

  @jax.jit
  def measure(images, labels, keep):
    size = labels.shape[1:3]
    f = model.apply(variables, images, False, method="encode")
    e = model.apply(variables, f, method="embed")
    scores = lambda x, t, temperature: up(
        entropy_module.class_scores(x, t, u.reduce, temperature), size)
    norm = jnp.linalg.norm(e, axis=-1, keepdims=True)
    within = scores(e, tables[domain], 1.0)
    out = {
        "embedding_norm": mean(up(norm, size)[..., 0], keep),
        "within": mean(entropy_module.entropy(within), keep),
        "within_unit": mean(entropy_module.entropy(
            scores(e / jnp.maximum(norm, 1e-12), tables[domain], 1.0)), keep),
        "embedding_accuracy": mean((within.argmax(-1) == labels).astype(jnp.float32), keep),
        # Pixels won by each label embedding (K,), over the same pixels.
        "wins": (jnp.sum(jnp.where(keep[..., None], jax.nn.one_hot(
            within.argmax(-1), within.shape[-1]), 0.0), axis=(0, 1, 2)),
                 jnp.sum(keep).astype(jnp.float32)),
        "head_accuracy": mean((up(model.apply(variables, f, index, method="classify"),
                                  size).argmax(-1) == labels).astype(jnp.float32), keep),
    }
    if others:
      cross = [mean(entropy_module.entropy(scores(e, tables[o], u.temperature)), keep)
               for o in others]
      out["cross"] = (sum(c[0] for c in cross) / len(cross), cross[0][1])
    return out
  return measure


def diagnose(config, state) -> Dict[str, Dict[str, float]]:
  """{domain: {term: mean}} over each domain's validation set (module docstring)."""
  from ddfp_jax.data import domains  # pylint: disable=import-outside-toplevel
  from ddfp_jax.tools.diagnose import validation_sums  # pylint: disable=import-outside-toplevel
  result = {}
  for index, (name, c) in enumerate(domains.domain_configs(config).items()):
    sums = validation_sums(c, make_measure(config, state, index, name))
    wins, pixels = sums.pop("wins")
    result[name] = {term: float(total / max(count, 1.0))
                    for term, (total, count) in sums.items()}
    result[name]["embedding_top_class"] = int(np.argmax(wins))
    result[name]["embedding_top_share"] = float(np.max(wins) / max(pixels, 1.0))
  return result


def markdown(rows: Sequence[dict]) -> list:
  """The lines of the USSS table of the diagnosis report."""
  lines = ["What USSS's entropies see on each domain's validation pixels (inference mode; "
           "ddfp_jax/tools/usss_diagnosis.py): mean ‖e‖; the within and cross entropies the "
           "loss minimises; the within entropy of e / ‖e‖; the share of pixels whose best "
           "label embedding, and whose head, gives their class; the class whose label "
           "embedding wins the most pixels and its share (%):", "",
           "| run | domain | ‖e‖ | H within | H cross | H within of e / ‖e‖ | embedding "
           "accuracy | head accuracy | top class: share |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for domain, d in r["diagnosis"]["usss"].items():
      cross = f"{d['cross']:.3f}" if "cross" in d else "-"
      lines.append(f"| {r['run']} | {domain} | {d['embedding_norm']:.1f} | {d['within']:.3f} "
                   f"| {cross} | {d['within_unit']:.3f} | "
                   f"{100 * d['embedding_accuracy']:.1f} | {100 * d['head_accuracy']:.1f} | "
                   f"{d['embedding_top_class']}: {100 * d['embedding_top_share']:.1f} |")
  return lines
