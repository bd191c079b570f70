"""benchmarks/prototype_contrast.py: both forms of the loss time the same loss, and the
command writes its files."""
import json

import jax
import numpy as np

from benchmarks import prototype_contrast


def test_both_forms_compute_the_same_loss_and_gradient():
  dense, args = prototype_contrast.loss_program(300, 8, 3, dense=True)
  gather, _ = prototype_contrast.loss_program(300, 8, 3, dense=False)
  (a, ga), (b, gb) = jax.jit(dense)(*args), jax.jit(gather)(*args)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_cli_writes_json_and_markdown(tmp_path):
  prototype_contrast.main(["--pixels", "256", "--dim", "8", "--classes", "3", "--repeats",
                           "1", "--out", str(tmp_path)])
  written = sorted(p.name for p in tmp_path.iterdir())
  assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".md")
  results = json.loads((tmp_path / written[0]).read_text())
  assert results["rows"][0]["pixels"] == 256 and results["rows"][0]["dense_ms"] > 0
  assert results["draws"]["inverse_cdf_ms"] > 0
  assert "| 256 | 8 | 3 |" in (tmp_path / written[1]).read_text()
