"""The contract run of a method: what the method tests of this folder read.

`ContractRun(name)` trains method `name` of `ddfp_jax.methods.METHODS` through every phase
of its run (on 2 devices; unless `light`, its last phase's steps also on 1, and a step
after a checkpoint round trip) and keeps what it saw, so that many tests read one compiled run.
tests/methods/conftest.py serves it as the fixture `contract_run`.
"""
import jax

from ddfp_jax.data.domains import domain_key
from ddfp_jax.methods import usss
from ddfp_jax.training.checkpoint import Checkpointer
from ddfp_jax.training.state import create_train_state
from ddfp_jax.training.step import pmap_train_step, replicate, run_phases
from tiny import synthetic_batch, tiny_config

# What makes a method's step depend on how the batch is split over devices: randomness
# drawn per device (dropout masks, CutMix boxes, the flow's noise and pixel sample, and
# the noise of the random / CCT / dropout / VAT perturbations). The device-count check
# switches it off, as the release's results would depend on the split too.
SPLIT_INVARIANT = {
    "model.dropout_rate": 0.0, "semi.cutmix_prob": 0.0, "ddfp.flow.noise_std": 0.0,
    "ddfp.flow.num_samples": 4096, "random.eps": 0.0, "cct_noise.uniform_range": 0.0,
    "channel_dropout.rate": 0.0, "vat.eps": 0.0,
    # CSS's strong view is drawn per device: identity geometry, no colour, no CutMix.
    "css.strong.scale_range": (1.0, 1.0), "css.strong.cutmix_prob": 0.0,
    "css.strong.color_prob": 0.0, "css.strong.blur_prob": 0.0, "css.strong.flip_prob": 0.0,
}


# What a method needs of the tiny setting beyond its defaults.
# DGCL: a class memory that fills in one step (every class's ~50 pixels of a step), so
# the contrastive loss runs in the second step of its last phase. DGCL chooses pixels by
# density rank, and a rank flip between two near-equal densities (float rounding differs
# between 1 and 2 devices) sends the gradient through other pixels: every pixel of a
# class is an anchor (num_anchors above the pixel count) and the memory's positives are
# all its rows (num_positives = memory_size), which leaves only the batch's positives
# ranked (their gradient is stopped; a flip among them moves the update by about 3e-4
# of its size, tests/methods/test_method_contract.py). The projection is 32 wide: at 8
# (its hidden width too) a pixel whose 8 hidden units are all off has a zero
# representation, and l2 normalisation's derivative there is 1 / eps, which blew the
# second step's gradient norm up to 5e9 once that pixel was an anchor.
# CSS: its representation head and fewer draws. CSS draws anchors and negatives by index
# into per-class pools, so one pixel whose pseudo label or threshold test flips by float
# rounding between 1 and 2 devices moves many draws to neighbouring pixels: here every
# valid pixel is an anchor (delta_s = 1), L_u keeps every pseudo label (delta_u = 0), and
# L_c and the prototypes see the labeled pixels only (delta_w = 1), whose labels cannot
# flip. Its gradient is 2-3x the other methods' (three losses over two forward passes),
# so at the tiny LR (0.05) float32 reordering in the stem's sums grows past 1e-5 within
# the two compared steps; at 0.02 it stays at the others' level.
METHOD_SETTINGS = {
    "dgcl": {"model.projection_dim": 32, "dgcl.memory_size": 40,
             "dgcl.memory_per_class": 40, "dgcl.num_anchors": 10_000, "dgcl.num_positives": 40,
             "dgcl.num_negatives": 32},
    "css": {"model.projection_dim": 8, "model.projection_on": "decoder_input",
            "css.num_queries": 16, "css.num_negatives": 32, "css.hard_threshold": 1.0,
            "css.weak_threshold": 1.0, "css.unsup_threshold": 0.0,
            "optim.learning_rate": 0.02},
    # USSS: two supervised epochs, the second collecting the centroids, then the entropies
    # (every stage of its recipe compiled); a DRN-D-22 at the tiny width.
    "usss": {"schedule.sup_only_epochs": 2, "usss.embedding_dim": 8},
}


def contract_config(name):
  return tiny_config(method=name, **SPLIT_INVARIANT, **{
      "semi.ema_decay": 0.9, "total_steps": 100, "optim.lr_scaling": "none",
      "data.labeled_per_device": 2, "data.unlabeled_per_device": 2},
                     **METHOD_SETTINGS.get(name, {}))


def contract_batch(config, labeled: int, unlabeled: int, num_devices: int, seed: int = 0):
  """A synthetic batch for `config`'s method (`tiny.synthetic_batch`): for usss, one per
  domain with its classes, keys "<domain>/..." as `data.domains.MergedBatches` makes."""
  sizes = {"data.labeled_per_device": labeled, "data.unlabeled_per_device": unlabeled}
  if config.method != "usss":
    return synthetic_batch(tiny_config(**sizes), num_devices, seed=seed)
  merged = {}
  for i, (d, k) in enumerate(zip(usss.domain_names(config), usss.num_classes(config))):
    part = synthetic_batch(tiny_config(**sizes, **{"data.num_classes": k}), num_devices,
                           seed=seed + 100 * i)
    merged.update({domain_key(d, key): v for key, v in part.items()})
  return merged


def labeled_image_keys(config):
  """The batch keys of the labeled images (one per domain for usss)."""
  if config.method != "usss":
    return ["labeled_image"]
  return [domain_key(d, "labeled_image") for d in usss.domain_names(config)]


class ContractRun:
  """One method's steps through every phase of its run, on 2 devices and on 1."""

  def __init__(self, name, tmp_dir, light=False):
    self.name = name
    self.config = config = contract_config(name)
    self.phases = run_phases(config)
    devices = jax.local_devices()
    self.p2 = pmap_train_step(config, devices=devices[:2])
    p1 = pmap_train_step(config, devices=devices[:1])
    # The 1-device batch holds both devices' examples, labeled and unlabeled in order.
    self.batch2 = {k: v.reshape(2, v.shape[1] // 2, *v.shape[2:])
                   for k, v in contract_batch(config, 4, 4, 1, seed=3).items()}
    batch1 = {k: v.reshape(1, -1, *v.shape[2:]) for k, v in self.batch2.items()}
    initial = create_train_state(config, jax.random.key(0))
    s2 = replicate(initial, devices[:2])
    self.steps = []   # (phase, state before, state after, metrics) of the 2-device run
    for phase in self.phases:
      for _ in range(2):   # a second step in the same phase must not trace again
        new, metrics = self.p2(s2, self.batch2, phase)
        self.steps.append((phase, s2, new, jax.device_get(metrics)))
        s2 = new
    self.final_2 = s2
    if light:
      return
    # The last phase's two steps (every branch of the method) again on one device, each
    # from the same state as its 2-device step: the second step sees the memory / pools
    # the first wrote. Each step starts from a common state because the methods choose
    # pixels by rank (DGCL's lowest-density anchors, highest-density positives): a
    # state carried over from a step computed in another summation order can reorder
    # two near-equal densities and send the gradient through other pixels, which is the
    # selection's discontinuity, not a dependence on the split.
    # (state before, 2-device metrics, 1-device metrics, 2-device state, 1-device state)
    self.split = []
    for phase, before, after, metrics in self.steps[-2:]:
      s1, m1 = p1(replicate(jax.device_get(before), devices[:1]), batch1, phase)
      self.split.append((before, metrics, jax.device_get(m1), after, s1))
    # Saved and restored into a fresh process's target (the initial state: the optimiser
    # is the same object, so the compiled step is reused): the next step must be the
    # same, bit for bit.
    with Checkpointer(str(tmp_dir / name)) as ckpt:
      ckpt.save(int(s2.step), s2, force=True)
      ckpt.wait()
      restored = ckpt.restore(initial)
    self.resumed = (self.p2(s2, self.batch2, self.phases[-1]),
                    self.p2(replicate(restored, devices[:2]), self.batch2, self.phases[-1]))
