"""The PyTorch side of the model benchmarks: the reference model and flow of the parity
tests (tests/torch_reference.py) timed on the same shapes as the JAX cases."""
import contextlib
import importlib.util
import pathlib
from typing import Any, Dict, List, Tuple

from benchmarks.model_cases import Shapes, feature_dim
from benchmarks.timing import time_calls

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _torch_reference():
  """tests/torch_reference.py, the independent PyTorch model of the parity tests."""
  path = REPO_ROOT / "tests" / "torch_reference.py"
  spec = importlib.util.spec_from_file_location("ddfp_torch_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def torch_times(name: str, shapes: Shapes, dtype: str, repeats: int,
                warmup: int) -> Tuple[List[float], Dict[str, Any]]:
  """Milliseconds per call of the PyTorch version of benchmark `name`, and facts about the
  run (device, threads, version)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  ref = _torch_reference()
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
              else contextlib.nullcontext())
  gen = torch.Generator().manual_seed(0)
  # XLA:CPU runs with denormals flushed to zero; the same for PyTorch keeps the comparison
  # about the arithmetic, not about the CPU's slow path for denormal operands.
  torch.set_flush_denormal(True)
  info = {"version": torch.__version__, "device": str(device),
          "threads": torch.get_num_threads()}

  if name == "flow":
    flow = ref.ReleaseFlow(feature_dim(shapes), shapes.flow_hidden, shapes.num_classes).to(device)
    v = torch.randn(shapes.flow_samples, feature_dim(shapes), generator=gen).to(device)
    labels = torch.randint(-1, shapes.num_classes, (shapes.flow_samples,), generator=gen)
    labels = labels.to(device)

    def call():
      flow.zero_grad(set_to_none=True)
      flow.nll(v, labels).backward()
      sync()
    return time_calls(call, repeats, warmup), info

  # Random weights and BN statistics of unit scale (not PyTorch's defaults, under which the
  # inference forward of a deep net drifts into denormal numbers that the CPU computes
  # 100x slower; XLA flushes denormals to zero, and so does PyTorch here, see below).
  model = ref.randomize_(ref.DeepLabV3Plus(shapes.num_classes, depth=shapes.depth,
                                           width=shapes.width), seed=0).to(device)
  x = torch.randn(shapes.images, 3, shapes.crop, shapes.crop, generator=gen).to(device)
  if name == "model_forward":
    model.eval()

    def call():
      with torch.no_grad(), autocast:
        model(x)
      sync()
    return time_calls(call, repeats, warmup), info

  y = torch.randint(0, shapes.num_classes, (shapes.images, shapes.crop, shapes.crop),
                    generator=gen).to(device)
  model.train()

  def call():
    model.zero_grad(set_to_none=True)
    with autocast:
      logits = F.interpolate(model(x), size=(shapes.crop, shapes.crop), mode="bilinear",
                             align_corners=True)
      loss = F.cross_entropy(logits.float(), y, ignore_index=255)
    loss.backward()
    sync()
  return time_calls(call, repeats, warmup), info
