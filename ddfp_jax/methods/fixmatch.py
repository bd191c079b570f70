"""`fixmatch`: image-level weak-to-strong consistency, the baseline every feature
perturbation of the paper is added to (Table 4, "none").

After the warm-up: L = CE(labeled) + (semi.lambda_image + semi.lambda_feature) ·
CE(strong view, pseudo labels), the release's weight of its branch without perturbation,
so that the unlabeled images weigh as much as in the methods with a feature branch.
"""
import jax

from ddfp_jax.methods import common
from ddfp_jax.methods.interface import Method, Phase


def phase_at(config, step: int) -> Phase:
  return Phase(semi=common.semi_started(config, step))


def image_consistency_loss(tools, params, inputs, rng, weight):
  """CE(labeled) + weight · CE(strong view): a semi-supervised step without a feature
  branch (also the step of feature-perturbation methods before their branch starts)."""
  k_encode, k_features = jax.random.split(rng)
  n_l = inputs.batch["labeled_image"].shape[0]
  _, _, logits, stats = common.student_views(tools, params, inputs, (k_encode, k_features))
  sup = tools.ce(logits[:n_l], inputs.batch["labeled_label"])
  image = tools.ce(logits[n_l:], inputs.targets.label)
  return sup + weight * image, (stats, {"loss_sup": sup, "loss_image": image})


def make_loss(tools):
  semi = tools.config.semi
  weight = semi.lambda_image + semi.lambda_feature

  def loss(params, inputs, rng):
    if not inputs.phase.semi:
      return common.supervised_loss(tools, params, inputs, rng)
    return image_consistency_loss(tools, params, inputs, rng, weight)
  return loss


METHOD = Method(phase_at=phase_at, make_loss=make_loss)
