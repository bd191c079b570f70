"""The model microbenchmarks (benchmarks/model.py and its modules): what they count, what they time, and
what they write. Timings themselves are not asserted (they are benchmarks, not tests)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import model as bm
from benchmarks import model_cases, timing


def _conv_flops_closed_form(n, h, w, cin, cout, k, rate):
  """2 x the multiply-adds of a zero-padded 'same' convolution that reach real pixels:
  along a side of length s, the tap at offset d reads s - |d| outputs' worth of input."""
  taps = lambda size: sum(max(0, size - abs(d * rate)) for d in range(-(k // 2), k // 2 + 1))
  return 2 * n * cin * cout * taps(h) * taps(w)


@pytest.mark.parametrize("rate", [1, 2, 6])
def test_measure_reports_xla_flops_of_a_convolution_in_closed_form(rate):
  x = jnp.ones((2, 17, 19, 8))
  kernel = jnp.ones((3, 3, 8, 16))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((rate, rate), (rate, rate)), rhs_dilation=(rate, rate),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  m = timing.measure(conv, (x, kernel), repeats=3, warmup=1)
  assert m.flops == _conv_flops_closed_form(2, 17, 19, 8, 16, 3, rate)
  assert len(m.times_ms) == 3 and min(m.times_ms) > 0
  assert m.median_ms == sorted(m.times_ms)[1]
  # Arguments + output, float32 (XLA may add temporaries, never less).
  assert m.program_bytes >= 4 * (x.size + kernel.size + 2 * 17 * 19 * 16)


def test_peak_table_matches_device_kinds():
  assert timing.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert timing.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert timing.peak_tflops("NVIDIA H200", "float32") == 494.7
  assert timing.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert timing.peak_tflops("cpu", "float32") is None


def test_unknown_benchmark_is_refused_with_the_valid_names():
  with pytest.raises(SystemExit, match="unknown benchmark.*aspp_undilated"):
    bm.parse_args(["--benchmarks", "aspp,asp"])


def test_cli_writes_json_and_markdown_with_the_pytorch_ratio_and_a_trace(tmp_path,
                                                                         monkeypatch):
  pytest.importorskip("torch")
  pytest.importorskip("FrEIA")
  # The results are written after every case (a run cut short keeps what it measured):
  # record how many entries each write held.
  written = []
  real_write = bm.write_results

  def counting_write(*args):
    written.append(len(args[-1]))
    return real_write(*args)
  monkeypatch.setattr(bm, "write_results", counting_write)
  out = tmp_path / "results"
  common = ["--shapes", "tiny", "--dtypes", "float32", "--repeats", "2", "--warmup", "1",
            "--out_dir", str(out)]
  bm.main(common + ["--benchmarks", "aspp_undilated,flow", "--torch",
                    "--profile", str(tmp_path / "trace")])
  (json_path,) = out.glob("model_*.json")
  entries = json.loads(json_path.read_text())["entries"]
  got = {(e["benchmark"], e["framework"]) for e in entries}
  assert got == {("aspp_undilated", "jax"), ("flow", "jax"), ("flow", "torch")}
  flow = {e["framework"]: e for e in entries if e["benchmark"] == "flow"}
  assert flow["jax"]["gflops"] > 0 and flow["jax"]["compile_s"] > 0
  assert flow["torch"]["torch_device"] == "cpu"
  ratio = flow["jax"]["median_ms"] / flow["torch"]["median_ms"]
  table = json_path.with_suffix(".md").read_text()
  flow_row = next(line for line in table.splitlines() if line.startswith("| flow |"))
  assert flow_row.rstrip(" |").endswith(f"{ratio:.2f}")
  assert list((tmp_path / "trace").rglob("*.xplane.pb"))
  assert written == [1, 2, 3, 3]   # after each of the three cases, then once at the end
  assert not list(out.glob("*.partial"))

  # A second run adds its rows and keeps the first run's.
  bm.main(common + ["--benchmarks", "perturbation"])
  entries = json.loads(json_path.read_text())["entries"]
  assert {(e["benchmark"], e["framework"]) for e in entries} == got | {("perturbation", "jax")}


def test_train_step_benchmark_runs_the_trainers_step():
  """The one-device shard_map the benchmark times computes what the trainer's pmap does."""
  from ddfp_jax.methods import ddfp  # pylint: disable=import-outside-toplevel
  from ddfp_jax.training import step as train_step  # pylint: disable=import-outside-toplevel
  shapes = model_cases.SHAPES["tiny"]
  fn, (state, batch) = model_cases.make_train_step(shapes, "float32")
  ours_state, ours = jax.jit(fn)(state, batch)
  config = model_cases.bench_config(shapes, "float32")
  p_step = train_step.pmap_train_step(config, devices=jax.local_devices()[:1], max_traces=1)
  theirs_state, theirs = p_step(train_step.replicate(state, jax.local_devices()[:1]),
                                jax.tree.map(lambda x: x[None], batch),
                                ddfp.Phase(True, True, True))
  assert {"loss_feature", "loss_flow", "loss_image", "loss_sup"} <= set(ours)
  for key in ("loss", "loss_feature", "loss_flow", "grad_norm"):
    np.testing.assert_allclose(np.asarray(ours[key]).reshape(()),
                               np.asarray(theirs[key]).reshape(()), rtol=1e-5)
  leaves = zip(jax.tree.leaves(ours_state.params), jax.tree.leaves(theirs_state.params))
  for a, b in leaves:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
