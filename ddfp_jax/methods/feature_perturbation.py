"""Feature-level consistency: the student must still predict the pseudo label from
perturbed pixel features. The paper's Table 4 baselines are methods of this module;
DDFP (`ddfp.py`) is one more, whose perturbation descends the flow's density.

After the warm-up, and from the epoch after `schedule.flow_start_epoch` on (the release
perturbs from the epoch after its flow starts, and the baselines follow the same schedule
so that every method perturbs from the same step):

    L = CE(labeled) + semi.lambda_image · CE(strong) + semi.lambda_feature · CE(perturbed)

Before the branch starts the step is fixmatch's (strong-view weight lambda_image +
lambda_feature). Where the perturbation goes (`semi.site`): "feature" perturbs the pixel
features v (paper eq. 10-12); "classifier_input" perturbs the classifier input u and runs
the classifier block on it with the auxiliary BatchNorm (the release).

Methods here: `random` (Gaussian direction of norm eps per pixel), `cct_noise` (CCT's
multiplicative uniform noise), `channel_dropout` (UniMatch's Dropout2d on features),
`vat` (PS-MT / CCT's virtual adversarial direction).
"""
from typing import Callable, NamedTuple, Optional

import jax
import ml_collections

from ddfp_jax.methods import common, fixmatch
from ddfp_jax.methods.interface import Method
from ddfp_jax.methods.perturbations import PerturbationConfig, PerturbationSite, perturb
from ddfp_jax.models.resize import resize_nearest

SITES = ("feature", "classifier_input")


class FeaturePhase(NamedTuple):
  semi: bool       # pseudo labels and the strong view
  perturb: bool    # the perturbed-feature branch


def branch_started(config: ml_collections.ConfigDict, step: int) -> bool:
  start = max(config.schedule.flow_start_epoch, config.schedule.sup_only_epochs) + 1
  return common.semi_started(config, step) and common.epoch_of(config, step) >= start


def phase_at(config, step: int) -> FeaturePhase:
  return FeaturePhase(common.semi_started(config, step), branch_started(config, step))


def check_site(config) -> list:
  if config.semi.site not in SITES:
    return [f"semi.site must be 'feature' (paper: perturb v) or 'classifier_input' "
            f"(release: perturb u), got {config.semi.site!r}"]
  return []


def make_feature_loss(tools, perturbation: PerturbationConfig,
                      log_density: Optional[Callable] = None):
  """The loss of a feature-perturbation method.

  `log_density(extra, v)`, for perturbations that read a density (DDFP), gives the
  per-pixel log-density of features v under the method's extra state.
  """
  semi = tools.config.semi
  problems = check_site(tools.config)   # the config check says it first, in a paragraph
  if problems:
    raise ValueError(problems[0] + ".")
  ignore = tools.config.data.ignore_label
  run, model = tools.run, tools.model

  def loss(params, inputs, rng):
    if not inputs.phase.semi:
      return common.supervised_loss(tools, params, inputs, rng)
    if not inputs.phase.perturb:
      return fixmatch.image_consistency_loss(tools, params, inputs, rng,
                                             semi.lambda_image + semi.lambda_feature)
    k_encode, k_clean, k_attack, k_perturb, k_perturbed = jax.random.split(rng, 5)
    batch, targets = inputs.batch, inputs.targets
    n_l = batch["labeled_image"].shape[0]
    u, v, logits, stats = common.student_views(tools, params, inputs, (k_encode, k_clean))
    sup = tools.ce(logits[:n_l], batch["labeled_label"])
    image = tools.ce(logits[n_l:], targets.label)

    frozen_vars = {"params": jax.lax.stop_gradient(params), "batch_stats": stats}
    confident = resize_nearest(targets.label, v.shape[1:3]) != ignore
    to_logits = lambda f: model.apply(frozen_vars, f, method="classify")
    density = None
    if log_density is not None:
      density = lambda f: log_density(inputs.state.extra, f)
    if semi.site == "classifier_input":
      # The release's attack runs the classifier block in train mode with the auxiliary
      # BN; its statistics updates are discarded here (the release applies them twice).
      to_features = lambda x: run(frozen_vars, x, True, k_attack, "features", True)[0]
      site = PerturbationSite(to_features, to_logits, density, confident, tools.axis_name)
      u_perturbed = perturb(u[n_l:], site, perturbation, k_perturb)
      v_perturbed, stats = run({"params": params, "batch_stats": stats}, u_perturbed, True,
                               k_perturbed, "features", True)
    else:
      site = PerturbationSite(lambda f: f, to_logits, density, confident, tools.axis_name)
      v_perturbed = perturb(v[n_l:], site, perturbation, k_perturb)
    variables = {"params": params, "batch_stats": inputs.state.batch_stats}
    feature = tools.ce(model.apply(variables, v_perturbed, method="classify"), targets.label)
    total = sup + semi.lambda_image * image + semi.lambda_feature * feature
    return total, (stats, {"loss_sup": sup, "loss_image": image, "loss_feature": feature})
  return loss


def inference_views(config, model, student, images, log_density: Optional[Callable],
                    confident, kinds, rng):
  """The student's pixel features v of `images` in inference mode, clean and perturbed
  by each perturbation kind of `kinds` at `config.semi.site` (`ddfp.eps` for the kinds
  with a norm), as the diagnostics and the training images look at them.

  Args:
    config, model: the run's config and DeepLabV3+.
    student: the student's {"params", "batch_stats"}.
    images: (N, H, W, 3) normalised images.
    log_density: v -> (N, h, w) log-density, for kinds that read one (DDFP's flow).
    confident: (N, h, w) bool on the feature grid: the pixels that are perturbed.
    kinds: perturbation kinds (`perturbations.KINDS`).
    rng: one key, split over the kinds.

  Returns:
    ({"clean": v, kind: v_perturbed, ...}, to_logits): features (N, h, w, C) and the map
    from features to class logits. At the release's site the clean view also passes the
    auxiliary BatchNorm (delta = 0 on the same path).
  """
  u = model.apply(student, images, False, method="encode")
  if config.semi.site == "classifier_input":
    x = u
    to_features = lambda x: model.apply(student, x, False, True, method="features")
  else:
    x = model.apply(student, u, False, method="features")
    to_features = lambda f: f
  to_logits = lambda f: model.apply(student, f, method="classify")
  site = PerturbationSite(to_features, to_logits, log_density, confident)
  views = {"clean": to_features(x)}
  for kind, key in zip(kinds, jax.random.split(rng, len(kinds))):
    views[kind] = to_features(perturb(x, site, PerturbationConfig(kind, config.ddfp.eps), key))
  return views, to_logits


def _baseline(kind: str, block: Callable[[], ml_collections.ConfigDict],
              settings: Callable[[ml_collections.ConfigDict], dict]) -> Method:
  """A Table 4 baseline: perturbation `kind` with hyper-parameters from its block."""
  def make_loss(tools):
    return make_feature_loss(tools, PerturbationConfig(kind=kind, **settings(tools.config)))
  return Method(config_block=block, phase_at=phase_at, make_loss=make_loss,
                check_config=check_site)


def _random_block():
  b = ml_collections.ConfigDict()
  b.eps = 4.0                   # norm of the random direction per pixel (DDFP's eps)
  return b


def _cct_block():
  b = ml_collections.ConfigDict()
  b.uniform_range = 0.3         # r of CCT's x * (1 + U(-r, r)), one noise map per batch
  return b


def _dropout_block():
  b = ml_collections.ConfigDict()
  b.rate = 0.5                  # UniMatch's Dropout2d rate (whole channels)
  return b


def _vat_block():
  b = ml_collections.ConfigDict()
  b.eps = 4.0                   # norm of the adversarial direction per sample
  b.xi = 1e-6                   # size of the finite step of the power iteration (CCT/PS-MT)
  return b


RANDOM = _baseline("random", _random_block, lambda c: dict(eps=c.random.eps))
CCT_NOISE = _baseline("uniform_noise", _cct_block,
                      lambda c: dict(uniform_range=c.cct_noise.uniform_range))
CHANNEL_DROPOUT = _baseline("channel_dropout", _dropout_block,
                            lambda c: dict(dropout_rate=c.channel_dropout.rate))
VAT = _baseline("vat", _vat_block, lambda c: dict(eps=c.vat.eps, vat_xi=c.vat.xi))
