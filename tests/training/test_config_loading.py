"""Configs rebuilt from a file and overrides, as the tools rebuild a run's config."""
from ddfp_jax.config import loading
from configs import demo


def test_overrides_apply_as_main_applies_them():
  config = loading.load("configs/demo.py:fixmatch",
                        ["--config.ddfp.eps=3", "--config.data.scale_range=(0.8,1.2)"])
  want = demo.get_config("fixmatch")
  want.ddfp.eps = 3.0
  want.data.scale_range = (0.8, 1.2)
  assert config.to_dict() == want.to_dict()


def test_the_fingerprint_is_of_the_values_not_of_how_they_were_written():
  base = loading.fingerprint(loading.load("configs/demo.py"))
  assert loading.fingerprint(loading.load("configs/demo.py:ddfp")) == base
  assert loading.fingerprint(loading.load(
      "configs/demo.py", [f"--config.ddfp.eps={demo.get_config().ddfp.eps:g}"])) == base
  assert loading.fingerprint(loading.load("configs/demo.py", ["--config.seed=1"])) != base
  assert loading.fingerprint(loading.load("configs/demo.py", ["--config.ddfp.eps=3"])) != base
  # Pictures change no number of a run; a run without the key hashes as one with it.
  assert loading.fingerprint(loading.load("configs/demo.py",
                                          ["--config.train.num_images=0"])) == base
  without = loading.load("configs/demo.py")
  with without.unlocked():
    del without.train["num_images"]
    # Keys added later, at the value that keeps the older behaviour, hash as absent.
    del without.model["multi_grid"]
    del without.model["projection_dim"]
  assert loading.fingerprint(without) == base
  assert loading.fingerprint(loading.load(
      "configs/demo.py", ["--config.model.multi_grid=(1,2)"])) != base
  # How the dilated convolutions are computed changes no number: every form hashes as
  # "dilated", the value runs had before the other forms existed.
  for impl in ("dilated", "shifted", "space_to_batch", "auto"):
    assert loading.fingerprint(loading.load(
        "configs/demo.py", [f"--config.model.atrous_impl={impl}"])) == base
