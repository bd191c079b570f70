"""Throughput of the training input pipeline on the host CPU, at the paper's crop sizes.

    PYTHONPATH=. python -m benchmarks.input_pipeline --dataset cityscapes
    PYTHONPATH=. python -m benchmarks.input_pipeline --dataset pascal_blended

What it does:

1. Writes a fake download in the real layout and at the real image sizes (Cityscapes:
   1024x2048 PNGs; VOC: 500x375 JPEGs, see `ddfp_jax.data.fake_layouts`) into a work
   directory, reused when it is already there, and prepares its TFDS files.
2. Runs `ddfp_jax.data.pipeline.train_batches` for ONE device (4 labeled + 4 unlabeled
   examples per step) at the paper's crop (769 Cityscapes, 513 VOC) and measures examples
   per second: after a few warm-up steps, the median over several timed windows.
   (a) One core, in a fresh subprocess: the process is pinned to one CPU
       (`os.sched_setaffinity`), TensorFlow's inter- and intra-op pools are set to one
       thread before any op runs, and the dataset gets the tf.data options
       `threading.private_threadpool_size = 1` and `threading.max_intra_op_parallelism = 1`.
   (b) All cores: TensorFlow's defaults, every CPU this process may use.
3. Times the per-example stages separately on one core, each a `tf.function` called on
   in-memory inputs: read+decode (`Source.load`: file read, image and label decode), weak
   augmentation (random rescale, crop/pad, flip, normalise; both streams), strong
   augmentation (colour jitter, grayscale, blur, normalise; unlabeled stream only), in
   wall-clock and in process CPU time (the latter is not inflated by other load on a
   shared host, and its per-step sum can be checked against the pipeline's CPU time).
4. Writes JSON and a markdown table (one entry per dataset; a run replaces its dataset's
   entry and keeps the others), including how many host cores it would take to feed a
   GPU at a given step time.

Counting: an "example" is one labeled or one unlabeled example; a step consumes 4 + 4 = 8
per device. An unlabeled example yields two views (weak and strong) of one decoded image:
it is counted once, its strong view's cost is included.

The data are fake (smooth colour fields plus noise): decode costs are close to, not equal
to, real photographs'. The files sit in the page cache, so storage I/O is not measured.
"""
import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ddfp_jax.runtime import hostinfo

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# One DDFP step per device: 4 labeled + 4 unlabeled examples (ddfp-algorithm.md, section 2).
LABELED_PER_DEVICE = 4
UNLABELED_PER_DEVICE = 4
EXAMPLES_PER_STEP = LABELED_PER_DEVICE + UNLABELED_PER_DEVICE
# GPU side of the feed estimate: a target step time, not a measurement.
TARGET_STEP_MS = 60.0
GPUS_PER_HOST = 8


class DatasetSpec(NamedTuple):
  num_classes: int
  crop: int
  image_shape: Tuple[int, int]   # (H, W) of the fake download, the real datasets' size
  image_format: str
  default_images: int           # training images of the fake download
  real_files: str               # size of the real files, for comparison


DATASETS: Dict[str, DatasetSpec] = {
    "cityscapes": DatasetSpec(
        19, 769, (1024, 2048), "PNG", 16,
        "real leftImg8bit PNGs average about 2 MB: 11 GB for 5000 images"),
    # VOC images are at most 500 pixels on a side; 500x375 (landscape) is the commonest.
    "pascal_blended": DatasetSpec(
        21, 513, (375, 500), "JPEG", 32,
        "real VOC JPEGs average about 0.1 MB; JPEG decode time follows the pixel count "
        "more than the file size"),
}


# --- host facts -----------------------------------------------------------------------------


def usable_cpus() -> List[int]:
  return sorted(os.sched_getaffinity(0))


def host_slug() -> str:
  """A short file-name tag of this host: CPU model and number of usable CPUs."""
  slug = re.sub(r"[^a-z0-9]+", "-", hostinfo.cpu_model().lower()).strip("-") or "cpu"
  return f"{slug}-{len(usable_cpus())}cpu"


def host_info() -> Dict[str, object]:
  import tensorflow as tf   # noqa: PLC0415  (late: the one-core worker sets threads first)
  return {"cpu_model": hostinfo.cpu_model(), "usable_cpus": len(usable_cpus()),
          "os_cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
          "python": platform.python_version(), "platform": platform.platform()}


_PROBE = ("import time\nt = time.perf_counter()\ns = 0\nfor i in range({n}): s += i * i\n"
          "print(time.perf_counter() - t)")


def parallel_capacity(processes: Optional[int] = None, loop: int = 10_000_000,
                      rounds: int = 2) -> Dict[str, float]:
  """How many cores' worth of CPU the host really gives: a pure-Python loop timed alone and
  in `processes` concurrent processes (virtual CPUs may share physical cores), alternated
  `rounds` times; medians."""
  processes = processes or len(usable_cpus())
  code = _PROBE.format(n=loop)

  def run(n: int) -> List[float]:
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]

  alone, together = [], []
  for _ in range(rounds):
    alone.append(run(1)[0])
    together.append(statistics.fmean(run(processes)))
  alone, together = statistics.median(alone), statistics.median(together)
  return {"processes": processes, "loop_s_alone": alone, "loop_s_concurrent": together,
          "effective_cores": processes * alone / together}


# --- fake download and config ---------------------------------------------------------------


def _voc_ids(n: int) -> List[str]:
  return [f"2008_{i:06d}" for i in range(n)]


def write_fake_download(dataset: str, root: pathlib.Path, images: int,
                        shape: Tuple[int, int]) -> Dict[str, object]:
  """Writes the fake download (once: a marker file records what was written)."""
  from ddfp_jax.data import fake_layouts   # noqa: PLC0415
  marker = root / "benchmark_download.json"
  wanted = {"dataset": dataset, "images": images, "shape": list(shape)}
  if marker.exists() and json.loads(marker.read_text()) == wanted:
    return {"reused": True}
  root.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  if dataset == "cityscapes":
    fake_layouts.write_cityscapes(root, {"train": {"aachen": images}, "val": {"frankfurt": 1}},
                                  shape=shape)
  else:
    ids = _voc_ids(images + 1)
    # Blended train = every SegmentationClassAug PNG outside val.txt: train + aug-only ids.
    half = images // 2
    fake_layouts.write_voc(root, ids[:half], ids[images:], ids[half:images], shape=shape)
  marker.write_text(json.dumps(wanted))
  return {"reused": False, "write_seconds": round(time.perf_counter() - start, 1)}


def image_files(dataset: str, root: pathlib.Path) -> List[pathlib.Path]:
  if dataset == "cityscapes":
    return sorted((root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))
  return sorted(root.rglob("JPEGImages/*.jpg"))


def make_config(dataset: str, workdir: pathlib.Path, images: int, crop: int):
  """A base config reading the fake download of `workdir`, one labeled image in four."""
  sys.path.insert(0, str(REPO_ROOT))
  from configs import base   # noqa: PLC0415
  spec = DATASETS[dataset]
  c = base.get_config()
  c.data.name = dataset
  c.data.num_classes = spec.num_classes
  c.data.data_dir = str(workdir / "tfds")
  c.data.manual_dir = str(workdir / "download")
  c.data.num_labeled = max(1, images // 4)
  c.data.crop_size = int(crop)
  c.data.labeled_per_device = LABELED_PER_DEVICE
  c.data.unlabeled_per_device = UNLABELED_PER_DEVICE
  c.steps_per_epoch = 1000
  return c


# --- measurements ---------------------------------------------------------------------------


@contextlib.contextmanager
def tf_data_options(options):
  """Applies `options` to the dataset behind any `as_numpy_iterator()` called inside.

  `train_batches` builds its dataset and returns its NumPy iterator in one call, with no
  hook for tf.data options, so they are applied where that iterator is made.
  """
  import tensorflow as tf   # noqa: PLC0415
  original = tf.data.Dataset.as_numpy_iterator

  def with_options(self):
    return original(self.with_options(options))

  tf.data.Dataset.as_numpy_iterator = with_options
  try:
    yield
  finally:
    tf.data.Dataset.as_numpy_iterator = original


def _cpu_seconds() -> float:
  return time.process_time()   # CPU time of every thread of this process


def measure_pipeline(config, steps: int, warmup: int, window: int,
                     options=None) -> Dict[str, object]:
  """Examples/s of `train_batches` for one device: median over windows of `window` steps."""
  from ddfp_jax.data import pipeline   # noqa: PLC0415
  start = time.perf_counter()
  with tf_data_options(options) if options is not None else contextlib.nullcontext():
    batches = pipeline.train_batches(config, local_device_count=1)
  crop = int(config.data.crop_size)
  first = next(batches)
  shapes = {k: list(v.shape) for k, v in first.items()}
  expected = [1, LABELED_PER_DEVICE, crop, crop, 3]
  if shapes["labeled_image"] != expected or shapes["unlabeled_strong"] != expected:
    raise RuntimeError(f"Unexpected batch shapes {shapes}")
  first_step_s = time.perf_counter() - start
  for _ in range(max(0, warmup - 1)):
    next(batches)
  windows, cpu = [], []
  for _ in range(max(1, steps // window)):
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(window):
      next(batches)
    wall, used = time.perf_counter() - t0, _cpu_seconds() - c0
    windows.append(window * EXAMPLES_PER_STEP / wall)
    cpu.append(used / (window * EXAMPLES_PER_STEP))
  rate = statistics.median(windows)
  return {
      "examples_per_s": rate,
      "steps_per_s": rate / EXAMPLES_PER_STEP,
      "ms_per_step": 1000.0 * EXAMPLES_PER_STEP / rate,
      "window_examples_per_s": windows,
      # Process CPU time (all threads) per example: > wall time per example when several
      # cores work; also what one example costs in core-seconds on this host.
      "cpu_seconds_per_example": statistics.median(cpu),
      "cores_busy": statistics.median(cpu) * rate,
      "first_batch_s": first_step_s,
      "batch_shapes": shapes,
  }


def _time_interleaved(stages: Dict[str, Tuple[object, Sequence[tuple]]],
                      warmup: int = 2) -> Dict[str, Dict[str, float]]:
  """Wall-clock and process CPU ms per call of each stage; example i of every stage is
  timed before example i + 1 of any, so that load from elsewhere on the host affects all
  stages alike (and the CPU time not at all)."""
  for fn, inputs in stages.values():
    for args in inputs[:warmup]:
      fn(*args)
  times = {name: [] for name in stages}
  cpu = {name: [] for name in stages}
  for i in range(min(len(inputs) for _, inputs in stages.values())):
    for name, (fn, inputs) in stages.items():
      t0, c0 = time.perf_counter(), _cpu_seconds()
      fn(*inputs[i])   # CPU eager execution returns finished tensors
      cpu[name].append(1000.0 * (_cpu_seconds() - c0))
      times[name].append(1000.0 * (time.perf_counter() - t0))
  return {name: {"mean_ms": statistics.fmean(t), "median_ms": statistics.median(t),
                 "cpu_mean_ms": statistics.fmean(cpu[name]), "calls": len(t)}
          for name, t in times.items()}


def measure_stages(config, samples: int) -> Dict[str, Dict[str, float]]:
  """ms per example of each stage, each a tf.function on in-memory inputs (this process's
  threads; call it in the one-core worker)."""
  import tensorflow as tf   # noqa: PLC0415
  from ddfp_jax.data import augment   # noqa: PLC0415
  from ddfp_jax.data import pipeline   # noqa: PLC0415
  from ddfp_jax.data import sources   # noqa: PLC0415
  data = config.data
  crop = int(data.crop_size)
  mean, std = tuple(data.mean), tuple(data.std)
  source, _ = sources.train_sources(config)
  ids = [tf.constant(i % source.size, tf.int32) for i in range(samples)]
  seeds = [tf.constant([7, i], tf.int64) for i in range(samples)]

  load = tf.function(source.load, input_signature=[tf.TensorSpec([], tf.int32)])

  # The stages of ddfp_jax.data.pipeline's labeled_fn / unlabeled_fn.
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([None, None], tf.uint8),
                                tf.TensorSpec([2], tf.int64)])
  def rescale(image, label, seed):
    s_rescale, s_crop, _ = augment.split_seed(seed, 3)
    return augment.random_rescale_crop(image, label, None, s_rescale, s_crop,
                                       data.scale_range, crop)[:2]

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([None, None], tf.uint8),
                                tf.TensorSpec([2], tf.int64)])
  def weak_raw(image, label, seed):
    return pipeline.weak_augment(image, label, seed, data)[:2]

  @tf.function(input_signature=weak_raw.input_signature)
  def weak(image, label, seed):
    image, label = weak_raw(image, label, seed)
    return augment.normalize(image, mean, std), tf.cast(label, tf.int32)

  @tf.function(input_signature=[tf.TensorSpec([crop, crop, 3], tf.float32),
                                tf.TensorSpec([2], tf.int64)])
  def strong(image, seed):
    out = augment.strong_augment(
        image, seed, color_jitter_prob=float(data.color_jitter_prob),
        brightness=float(data.brightness), contrast=float(data.contrast),
        saturation=float(data.saturation), hue=float(data.hue),
        grayscale_prob=float(data.grayscale_prob), blur_prob=float(data.blur_prob),
        blur_sigma=tuple(data.blur_sigma))
    return augment.normalize(out, mean, std)

  decoded = [load(i) for i in ids]
  weak_views = [weak_raw(img, lab, s)[0] for (img, lab), s in zip(decoded, seeds)]
  strong_seeds = [tf.constant([11, i], tf.int64) for i in range(samples)]
  pairs = [(img, lab, s) for (img, lab), s in zip(decoded, seeds)]
  return _time_interleaved({
      "read_decode": (load, [(i,) for i in ids]),
      "weak": (weak, pairs),
      "weak_rescale_crop": (rescale, pairs),
      "strong": (strong, list(zip(weak_views, strong_seeds))),
  })


# --- the one-core worker --------------------------------------------------------------------


def _one_core_env() -> Dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + (
      [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env.update({"TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
              "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
              "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"})
  return env


def run_one_core_worker(spec: Dict[str, object]) -> Dict[str, object]:
  """In a fresh process: pin to one CPU, one TF thread, then pipeline + stage timings."""
  cpu = usable_cpus()[0]
  os.sched_setaffinity(0, {cpu})
  import ddfp_jax   # noqa: F401,PLC0415  (distrax before TensorFlow)
  import tensorflow as tf   # noqa: PLC0415
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  config = make_config(spec["dataset"], pathlib.Path(spec["workdir"]), spec["images"],
                       spec["crop"])
  result = measure_pipeline(config, spec["steps"], spec["warmup"], spec["window"], options)
  result["settings"] = {
      "cpu_affinity": [cpu],
      "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
      "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
      "tf_data_private_threadpool_size": 1, "tf_data_max_intra_op_parallelism": 1}
  stages = measure_stages(config, spec["stage_samples"])
  return {"one_core": result, "stages_one_core": stages}


def _spawn_one_core(spec: Dict[str, object]) -> Dict[str, object]:
  out = pathlib.Path(spec["workdir"]) / "one_core_result.json"
  if out.exists():
    out.unlink()
  cmd = [sys.executable, "-m", "benchmarks.input_pipeline", "--one-core-worker",
         json.dumps(spec), "--out", str(out)]
  proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=_one_core_env(), capture_output=True,
                        text=True, check=False)
  if proc.returncode != 0 or not out.exists():
    raise RuntimeError(f"The one-core worker failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
  return json.loads(out.read_text())


# --- the benchmark --------------------------------------------------------------------------


def gpu_feed(per_core_rate: float, cpu_seconds_per_example: float, all_cores_rate: float,
             cores: int, effective_cores: float) -> Dict[str, object]:
  """Cores to feed GPUs at TARGET_STEP_MS: from the one-core wall-clock rate, and from the
  one-core CPU time per example (what a core that is never taken away would do)."""
  per_gpu = EXAMPLES_PER_STEP / (TARGET_STEP_MS / 1000.0)
  per_host = per_gpu * GPUS_PER_HOST
  return {
      "target_ms_per_step": TARGET_STEP_MS,
      "target_is_measured": False,
      "examples_per_step_per_gpu": EXAMPLES_PER_STEP,
      "examples_per_s_per_gpu": per_gpu,
      "gpus_per_host": GPUS_PER_HOST,
      "examples_per_s_per_host": per_host,
      "cores_per_gpu_at_one_core_rate": per_gpu / per_core_rate,
      "cores_per_host_at_one_core_rate": per_host / per_core_rate,
      "cores_per_gpu_at_cpu_time_cost": per_gpu * cpu_seconds_per_example,
      "cores_per_host_at_cpu_time_cost": per_host * cpu_seconds_per_example,
      # Measured scaling from 1 to `cores` cores; 1.0 = linear.
      "scaling_efficiency_all_cores": all_cores_rate / (cores * per_core_rate),
      # The same against the cores' worth of CPU the host gives (`parallel_capacity`).
      "scaling_efficiency_effective_cores": all_cores_rate / (effective_cores * per_core_rate),
      "gpu_step_ms_one_core_can_feed": 1000.0 * EXAMPLES_PER_STEP / per_core_rate,
      "gpu_step_ms_all_cores_can_feed": 1000.0 * EXAMPLES_PER_STEP / all_cores_rate,
  }


def run_benchmark(dataset: str, *, images: Optional[int] = None, steps: int = 20,
                  warmup: int = 3, window: int = 4, stage_samples: int = 32,
                  workdir=None, image_shape: Optional[Tuple[int, int]] = None,
                  crop: Optional[int] = None,
                  capacity_loop: int = 10_000_000) -> Dict[str, object]:
  """Writes/prepares the fake download, measures one core and all cores; returns a dict.

  `image_shape` and `crop` default to the real image size and the paper's crop (smaller
  ones, and a shorter `capacity_loop`, are for tests).
  """
  spec_ds = DATASETS[dataset]
  images = int(images or spec_ds.default_images)
  shape = tuple(image_shape or spec_ds.image_shape)
  crop = int(crop or spec_ds.crop)
  workdir = pathlib.Path(workdir or os.path.join(
      "/tmp", "ddfp_input_bench", f"{dataset}_{images}_{shape[0]}x{shape[1]}")).resolve()
  import ddfp_jax   # noqa: F401,PLC0415  (distrax before TensorFlow)
  from ddfp_jax.data import pipeline   # noqa: PLC0415

  download = write_fake_download(dataset, workdir / "download", images, shape)
  files = image_files(dataset, workdir / "download")
  config = make_config(dataset, workdir, images, crop)
  start = time.perf_counter()
  pipeline.prepare(config)
  prepare_s = time.perf_counter() - start
  labeled, unlabeled = pipeline.num_train_examples(config)

  spec = {"dataset": dataset, "workdir": str(workdir), "images": images, "crop": crop,
          "steps": steps, "warmup": warmup, "window": window,
          "stage_samples": stage_samples}
  capacity = parallel_capacity(loop=capacity_loop)
  one = _spawn_one_core(spec)
  cores = len(usable_cpus())
  all_cores = measure_pipeline(config, steps, warmup, window)
  all_cores["settings"] = {"cpu_affinity": usable_cpus(), "tf_threads": "TensorFlow defaults"}

  # The stage estimate of a step, in CPU time (contention from elsewhere on the host
  # inflates wall-clock times, not CPU times), against the pipeline's CPU time per step.
  stages = one["stages_one_core"]
  cost = {name: stages[name]["cpu_mean_ms"] for name in ("read_decode", "weak", "strong")}
  per_example_ms = {"labeled": cost["read_decode"] + cost["weak"],
                    "unlabeled": cost["read_decode"] + cost["weak"] + cost["strong"]}
  step_ms = (LABELED_PER_DEVICE * per_example_ms["labeled"]
             + UNLABELED_PER_DEVICE * per_example_ms["unlabeled"])
  step_share = {
      "read_decode": EXAMPLES_PER_STEP * cost["read_decode"] / step_ms,
      "weak": EXAMPLES_PER_STEP * cost["weak"] / step_ms,
      "strong": UNLABELED_PER_DEVICE * cost["strong"] / step_ms}
  per_core = one["one_core"]["examples_per_s"]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": {**host_info(), "parallel_capacity": capacity},
      "dataset": dataset,
      "fake_download": {
          "images": images, "labeled": labeled, "unlabeled": unlabeled,
          "image_size_hw": list(shape), "format": spec_ds.image_format,
          "mean_image_file_bytes": (int(statistics.fmean(f.stat().st_size for f in files))
                                    if files else 0),
          "content": "smooth colour fields plus noise (ddfp_jax.data.fake_layouts)",
          "real_files": spec_ds.real_files,
          **download, "prepare_seconds": round(prepare_s, 1)},
      "crop": crop,
      "batch_per_device": {"labeled": LABELED_PER_DEVICE, "unlabeled": UNLABELED_PER_DEVICE},
      "examples_per_step": EXAMPLES_PER_STEP,
      "counting": ("examples = labeled + unlabeled; an unlabeled example yields a weak and a "
                   "strong view of one decoded image and counts once"),
      "timing": {"warmup_steps": warmup, "timed_steps": max(1, steps // window) * window,
                 "window_steps": window, "statistic": "median over windows"},
      "one_core": one["one_core"],
      "all_cores": {**all_cores, "cores": cores},
      "stages_one_core_ms_per_example": stages,
      "stage_estimate_one_core": {
          "basis": "process CPU time", "cpu_ms_per_example": per_example_ms,
          "cpu_ms_per_step": step_ms, "share_of_step": step_share,
          "measured_pipeline_cpu_ms_per_step": (1000.0 * EXAMPLES_PER_STEP
                                                * one["one_core"]["cpu_seconds_per_example"]),
          "measured_pipeline_wall_ms_per_step": one["one_core"]["ms_per_step"]},
      "gpu_feed": gpu_feed(per_core, one["one_core"]["cpu_seconds_per_example"],
                           all_cores["examples_per_s"], cores,
                           capacity["effective_cores"]),
  }


# --- report ---------------------------------------------------------------------------------


def _f(x: float, digits: int = 1) -> str:
  return f"{x:,.{digits}f}"


def _stage(timed: Dict[str, float]) -> str:
  return f"{_f(timed['cpu_mean_ms'])} | {_f(timed['mean_ms'])}"


def _range(measured: Dict[str, object]) -> str:
  windows = measured["window_examples_per_s"]
  return f"{_f(min(windows), 2)}-{_f(max(windows), 2)}"


def _rounded(x, digits: int = 4):
  if isinstance(x, float):
    return float(f"{x:.{digits}g}")
  if isinstance(x, dict):
    return {k: _rounded(v, digits) for k, v in x.items()}
  if isinstance(x, list):
    return [_rounded(v, digits) for v in x]
  return x


def render_markdown(runs: Dict[str, Dict[str, object]]) -> str:
  lines = ["# Input pipeline throughput (host CPU)", "",
           "`python -m benchmarks.input_pipeline --dataset DATASET` (benchmarks/input_pipeline.py "
           "describes the method). One device's batch per step: 4 labeled + 4 unlabeled "
           "examples at the paper's crop. An example is one labeled or one unlabeled example; "
           "an unlabeled example yields both its weak and its strong view and counts once. "
           "Fake downloads at the real image sizes (decode costs close to, not equal to, real "
           "photographs'); files in the page cache, so storage I/O is not measured. "
           "Figures are medians over timed windows after a warm-up. On a shared host the "
           "wall-clock rates vary between runs (the windows column shows the spread within "
           "one); CPU time per example is the steadier figure.", ""]
  for name, r in runs.items():
    host, fake, one, allc = r["host"], r["fake_download"], r["one_core"], r["all_cores"]
    cap = host["parallel_capacity"]
    top = max(r["stage_estimate_one_core"]["share_of_step"].items(), key=lambda kv: kv[1])[0]
    st, est, feed = (r["stages_one_core_ms_per_example"], r["stage_estimate_one_core"],
                     r["gpu_feed"])
    lines += [
        f"## {name}: {fake['image_size_hw'][1]}x{fake['image_size_hw'][0]} "
        f"{fake['format']} images, crop {r['crop']}", "",
        f"Host: {host['cpu_model']}, {host['usable_cpus']} usable CPUs, TensorFlow "
        f"{host['tensorflow']}, {r['date']}. Fake download: {fake['images']} training images "
        f"({fake['labeled']} labeled, {fake['unlabeled']} unlabeled), mean file "
        f"{fake['mean_image_file_bytes'] / 1e6:.2f} MB; {fake['real_files']}. "
        f"{r['timing']['timed_steps']} timed "
        f"steps in windows of {r['timing']['window_steps']}, after "
        f"{r['timing']['warmup_steps']} warm-up steps.", "",
        f"Parallel capacity of this host: {cap['processes']} concurrent single-thread "
        f"processes each ran at {cap['loop_s_alone'] / cap['loop_s_concurrent']:.0%} of "
        f"their solo speed, i.e. the {cap['processes']} CPUs give about "
        f"{cap['effective_cores']:.1f} cores' worth of compute (virtual CPUs on shared "
        "physical cores); the all-cores figure is bounded by that.", "",
        "| configuration | examples/s | windows min-max | ms per step (8 examples) "
        "| CPU-s per example | cores busy |",
        "|---|---:|---:|---:|---:|---:|",
        f"| one core (pinned; TF and tf.data 1 thread) | {_f(one['examples_per_s'], 2)} | "
        f"{_range(one)} | "
        f"{_f(one['ms_per_step'], 0)} | {_f(one['cpu_seconds_per_example'], 3)} | "
        f"{_f(one['cores_busy'], 2)} |",
        f"| all cores ({allc['cores']}, TF defaults) | {_f(allc['examples_per_s'], 2)} | "
        f"{_range(allc)} | "
        f"{_f(allc['ms_per_step'], 0)} | {_f(allc['cpu_seconds_per_example'], 3)} | "
        f"{_f(allc['cores_busy'], 2)} |", "",
        "CPU-s per example: process CPU time (all threads) per example; cores busy: CPU "
        "time / wall time (below 1 on the pinned run when other load took the core).", "",
        "Stages on one core (each a tf.function on in-memory inputs; mean over "
        f"{st['read_decode']['calls']} examples with random augmentation draws; shares from "
        "CPU time):", "",
        "| stage | applies to | CPU ms per example | wall ms per example | share of a step |",
        "|---|---|---:|---:|---:|",
        f"| read + decode (image and label) | 8 of 8 | {_stage(st['read_decode'])} | "
        f"{est['share_of_step']['read_decode']:.0%} |",
        f"| weak: rescale, crop/pad, flip, normalise | 8 of 8 | {_stage(st['weak'])} | "
        f"{est['share_of_step']['weak']:.0%} |",
        f"| ... of which the random rescale + crop (window only) | 8 of 8 | "
        f"{_stage(st['weak_rescale_crop'])} | |",
        f"| strong: colour jitter, grayscale, blur, normalise | 4 of 8 (unlabeled) | "
        f"{_stage(st['strong'])} | {est['share_of_step']['strong']:.0%} |",
        f"| sum per step (4 labeled + 4 unlabeled) | | {_f(est['cpu_ms_per_step'], 0)} | | "
        f"pipeline: {_f(est['measured_pipeline_cpu_ms_per_step'], 0)} CPU ms |", "",
        f"Largest stage: **{top}** ({est['share_of_step'][top]:.0%} of the stages' CPU time "
        "per step).", "",
        "Keeping GPUs fed. One DDFP step consumes 8 examples per GPU (4 labeled + 4 "
        f"unlabeled). At the GPU target of <= {TARGET_STEP_MS:.0f} ms per step per H100 (a "
        "target: no GPU was measured here) a GPU needs >= "
        f"{_f(feed['examples_per_s_per_gpu'], 0)} examples/s, so {GPUS_PER_HOST} GPUs on one "
        f"host need >= {_f(feed['examples_per_s_per_host'], 0)} examples/s. At the measured "
        f"{_f(one['examples_per_s'], 2)} examples/s per core that is "
        f"**{_f(feed['cores_per_gpu_at_one_core_rate'], 0)} cores per GPU, "
        f"{_f(feed['cores_per_host_at_one_core_rate'], 0)} cores per {GPUS_PER_HOST}-GPU "
        "host** (from the one-core CPU time, "
        f"{_f(one['cpu_seconds_per_example'], 3)} s per example, i.e. on a core never taken "
        f"away by other load: {_f(feed['cores_per_gpu_at_cpu_time_cost'], 0)} per GPU, "
        f"{_f(feed['cores_per_host_at_cpu_time_cost'], 0)} per host), "
        "assuming linear scaling (measured here from 1 to "
        f"{allc['cores']} CPUs: {feed['scaling_efficiency_all_cores']:.0%} of linear, "
        f"{feed['scaling_efficiency_effective_cores']:.0%} of the "
        f"{cap['effective_cores']:.1f} cores' worth they give). "
        f"One core alone feeds a {_f(feed['gpu_step_ms_one_core_can_feed'], 0)} ms step; "
        f"all {allc['cores']} cores of this host a "
        f"{_f(feed['gpu_step_ms_all_cores_can_feed'], 0)} ms step.", ""]
  return "\n".join(lines)


def write_results(result: Dict[str, object], out: pathlib.Path) -> Tuple[pathlib.Path,
                                                                          pathlib.Path]:
  """Adds `result` to the JSON at `out` (replacing its dataset's entry) and rewrites the
  markdown next to it."""
  out = pathlib.Path(out)
  runs = {}
  if out.exists():
    runs = json.loads(out.read_text()).get("runs", {})
  runs[result["dataset"]] = result
  runs = {k: runs[k] for k in sorted(runs)}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"benchmark": "input_pipeline", "runs": _rounded(runs)},
                            indent=1) + "\n")
  md = out.with_suffix(".md")
  md.write_text(render_markdown(runs))
  return out, md


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=sorted(DATASETS))
  parser.add_argument("--images", type=int, default=None,
                      help="training images of the fake download (default per dataset)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="warm-up steps")
  parser.add_argument("--window", type=int, default=4, help="steps per timed window")
  parser.add_argument("--stage-samples", type=int, default=32,
                      help="examples timed per stage")
  parser.add_argument("--workdir", default=None,
                      help="fake download + TFDS files (reused if present)")
  parser.add_argument("--out", default=None,
                      help="JSON path (default results/input_pipeline_<host>.json); the "
                      "markdown is written next to it")
  parser.add_argument("--one-core-worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one_core_worker:
    result = run_one_core_worker(json.loads(args.one_core_worker))
    pathlib.Path(args.out).write_text(json.dumps(result))
    return
  if not args.dataset:
    parser.error("--dataset is required")
  result = run_benchmark(args.dataset, images=args.images, steps=args.steps,
                         warmup=args.warmup, window=args.window,
                         stage_samples=args.stage_samples, workdir=args.workdir)
  out = pathlib.Path(args.out or REPO_ROOT / "results" / f"input_pipeline_{host_slug()}.json")
  json_path, md_path = write_results(result, out)
  one, allc = result["one_core"], result["all_cores"]
  print(f"{args.dataset}: one core {one['examples_per_s']:.2f} examples/s, all "
        f"{allc['cores']} cores {allc['examples_per_s']:.2f} examples/s; "
        f"stages (ms/example) " + ", ".join(
            f"{k} {v['mean_ms']:.1f}" for k, v in
            result["stages_one_core_ms_per_example"].items()))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  main()
