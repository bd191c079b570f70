"""The input-pipeline benchmark end to end on a tiny fake Cityscapes (no speed asserted)."""
import json

from benchmarks import input_pipeline


def test_benchmark_reports_every_figure(tmp_path):
  result = input_pipeline.run_benchmark(
      "cityscapes", images=4, image_shape=(24, 40), crop=16, steps=2, warmup=1, window=1,
      stage_samples=3, workdir=tmp_path / "work", capacity_loop=100_000)
  json_path, md_path = input_pipeline.write_results(result, tmp_path / "out.json")
  run = json.loads(json_path.read_text())["runs"]["cityscapes"]

  for key in ("date", "host", "dataset", "fake_download", "crop", "batch_per_device",
              "examples_per_step", "counting", "timing", "one_core", "all_cores",
              "stages_one_core_ms_per_example", "stage_estimate_one_core", "gpu_feed"):
    assert key in run, key
  for key in ("cpu_model", "usable_cpus", "tensorflow", "parallel_capacity"):
    assert key in run["host"], key
  assert run["crop"] == 16 and run["examples_per_step"] == 8
  assert run["fake_download"]["image_size_hw"] == [24, 40]
  assert run["fake_download"]["labeled"] + run["fake_download"]["unlabeled"] == 4

  for config in ("one_core", "all_cores"):
    assert run[config]["examples_per_s"] > 0
    assert all(rate > 0 for rate in run[config]["window_examples_per_s"])
    assert run[config]["batch_shapes"]["unlabeled_strong"] == [1, 4, 16, 16, 3]
  one = run["one_core"]["settings"]
  assert len(one["cpu_affinity"]) == 1
  assert one["tf_inter_op_threads"] == one["tf_intra_op_threads"] == 1
  for stage in ("read_decode", "weak", "weak_rescale_crop", "strong"):
    assert run["stages_one_core_ms_per_example"][stage]["mean_ms"] > 0
  feed = run["gpu_feed"]
  assert feed["target_is_measured"] is False
  assert round(feed["examples_per_s_per_host"]) == 1067
  assert feed["cores_per_host_at_one_core_rate"] > 0

  md = md_path.read_text()
  assert "## cityscapes" in md and "no GPU was measured" in md

  # A second dataset's run is added next to the first, not over it.
  other = dict(result, dataset="pascal_blended")
  input_pipeline.write_results(other, json_path)
  assert sorted(json.loads(json_path.read_text())["runs"]) == ["cityscapes", "pascal_blended"]
