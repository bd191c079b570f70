"""A small PyTorch DeepLabV3+ / ResNet, written from the model description, for parity tests.

Test-only. Module names follow the state-dict layout of the segmentation literature's
PyTorch code, so that its `state_dict()` has the keys of real checkpoints:

* deep-stem ResNet (CPS / U2PL / UniMatch / DDFP `resnet101.pth`): `conv1.0`, `conv1.1`,
  `conv1.3`, `conv1.4`, `conv1.6` (conv, BN, ReLU, conv, BN, ReLU, conv), `bn1`,
  `layer1.0.conv1`, ..., `layer1.0.downsample.0` (conv) / `.1` (BN);
* plain-stem ResNet (torchvision): `conv1` is one 7x7 conv, the rest as above;
* DeepLabV3+ of the DDFP release: `encoder.*` (the ResNet) and `decoder.*`: `aspp.conv1.1/2`
  (image pooling conv/BN, index 0 is the pooling), `aspp.conv2..5.0/1` (1x1 and the three
  dilated 3x3 branches), `head.0/1`, `low_conv.0/1`, `classifier.0/1/4/5` (conv, mixed BN,
  conv, mixed BN) with the auxiliary BN of a mixed BN under `.aux_bn`, and `final`.

`width` multiplies every channel count so that tests can run narrow models.

`TorchDRND` is fyu/drn's DRN-D (arch "D"), with its names: `layer0`, `layer1`, `layer2`,
`layer7`, `layer8` Sequentials of (conv, BN, ReLU), residual `layer3` ... `layer6`, `fc`.

`ReleaseFlow` is the release's flow construction from FrEIA 0.2 (`GLOWCouplingBlock(clamp)`
+ `PermuteRandom(seed=k)` in a `ReversibleGraphNet` named `inn`, beside the GMM `means`),
with the spec's GMM log-densities (section 8) written in PyTorch. The benchmarks time this
model and this flow next to the JAX ones (benchmarks/model.py).
"""
import math
import warnings

import numpy as np
from flax import traverse_util
import torch
from torch import nn
from torch.nn import functional as F

from ddfp_jax.interop import names
from ddfp_jax.models.drn import DRN_LAYOUTS

LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3))}


def channels(c, width):
  return max(1, int(round(c * width)))


def conv3x3(cin, cout, stride=1, dilation=1, bias=False):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = conv3x3(cin, planes, stride, dilation)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, 1, dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(out + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 carrying the stride and dilation, 1x1 expand (x4)."""
  expansion = 4

  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, stride, dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(out + shortcut)


class ResNet(nn.Module):
  """Returns (stage-1 features, last-stage features).

  Output stride 16: the last stage keeps resolution and dilates by 2 instead. Its first
  block still uses the dilation of the stage before (1); the following blocks use 2.
  """

  def __init__(self, depth=101, width=1.0, deep_stem=True, output_stride=16):
    super().__init__()
    kind, blocks = LAYOUTS[depth]
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    w = lambda c: channels(c, width)
    self.deep_stem = deep_stem
    if deep_stem:
      self.conv1 = nn.Sequential(
          conv3x3(3, w(64), stride=2), nn.BatchNorm2d(w(64)), nn.ReLU(),
          conv3x3(w(64), w(64)), nn.BatchNorm2d(w(64)), nn.ReLU(),
          conv3x3(w(64), w(128)))
      cin = w(128)
    else:
      self.conv1 = nn.Conv2d(3, w(64), 7, stride=2, padding=3, bias=False)
      cin = w(64)
    self.bn1 = nn.BatchNorm2d(cin)
    # The deep stem's pool rounds its output size up (ceil mode); torchvision's does not.
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=deep_stem)
    dilated = {32: (), 16: (4,), 8: (3, 4)}[output_stride]
    dilation = 1
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
      stride = 1 if stage == 1 else 2
      first_dilation = dilation
      if stage in dilated:
        dilation, stride = dilation * stride, 1
      planes = w(planes)
      downsample = None
      if stride != 1 or cin != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(cin, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
      layers = [block(cin, planes, stride, first_dilation, downsample)]
      cin = planes * block.expansion
      layers += [block(cin, planes, 1, dilation, None) for _ in range(n - 1)]
      setattr(self, f"layer{stage}", nn.Sequential(*layers))
      if stage == 1:
        self.low_channels = cin
    self.out_channels = cin

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    low = self.layer1(x)
    return low, self.layer4(self.layer3(self.layer2(low)))


class MixBatchNorm2d(nn.BatchNorm2d):
  """BatchNorm with a second set of parameters and statistics (`aux_bn`) for perturbed
  inputs; `use_aux` picks which set a call goes through."""

  def __init__(self, num_features):
    super().__init__(num_features)
    self.aux_bn = nn.BatchNorm2d(num_features)
    self.use_aux = False

  def forward(self, x):
    return self.aux_bn(x) if self.use_aux else super().forward(x)


def _conv_bn_relu(cin, cout, kernel, dilation=1):
  return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                    bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ASPP(nn.Module):

  def __init__(self, cin, inner, rates):
    super().__init__()
    self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, inner, 1))
    self.conv2 = nn.Sequential(*_conv_bn_relu(cin, inner, 1))
    for i, rate in enumerate(rates):
      setattr(self, f"conv{i + 3}", nn.Sequential(*_conv_bn_relu(cin, inner, 3, rate)))

  def forward(self, x):
    size = x.shape[-2:]
    pooled = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=True)
    return torch.cat([pooled] + [getattr(self, f"conv{i}")(x) for i in range(2, 6)], dim=1)


class Decoder(nn.Module):

  def __init__(self, low_channels, high_channels, num_classes, width, rates, dropout):
    super().__init__()
    w = lambda c: channels(c, width)
    self.aspp = ASPP(high_channels, w(256), rates)
    self.head = nn.Sequential(*_conv_bn_relu(5 * w(256), w(256), 3), nn.Dropout2d(dropout))
    self.low_conv = nn.Sequential(nn.Conv2d(low_channels, w(48), 1), nn.BatchNorm2d(w(48)),
                                  nn.ReLU())
    self.classifier = nn.Sequential(
        conv3x3(w(48) + w(256), w(256), bias=True), MixBatchNorm2d(w(256)), nn.ReLU(),
        nn.Dropout2d(dropout),
        conv3x3(w(256), w(256), bias=True), MixBatchNorm2d(w(256)), nn.ReLU(),
        nn.Dropout2d(dropout))
    self.final = nn.Conv2d(w(256), num_classes, 1)

  def classifier_input(self, low, high):
    head = self.head(self.aspp(high))
    low = self.low_conv(low)
    head = F.interpolate(head, size=low.shape[-2:], mode="bilinear", align_corners=True)
    return torch.cat([low, head], dim=1)

  def features(self, u, perturbed=False):
    for m in self.classifier:
      if isinstance(m, MixBatchNorm2d):
        m.use_aux = perturbed
    return self.classifier(u)


class DeepLabV3Plus(nn.Module):
  """`encoder` + `decoder`; logits at stride 4, NCHW."""

  def __init__(self, num_classes, depth=101, width=1.0, deep_stem=True, output_stride=16,
               rates=(6, 12, 18), dropout=0.1):
    super().__init__()
    self.encoder = ResNet(depth, width, deep_stem, output_stride)
    self.decoder = Decoder(self.encoder.low_channels, self.encoder.out_channels, num_classes,
                           width, rates, dropout)

  def encode(self, x):
    return self.decoder.classifier_input(*self.encoder(x))

  def features(self, u, perturbed=False):
    return self.decoder.features(u, perturbed)

  def classify(self, v):
    return self.decoder.final(v)

  def forward(self, x):
    return self.classify(self.features(self.encode(x)))


def bilinear_deconv(channels, factor):
  """The frozen x`factor` upsampling of the USSS release: ConvTranspose2d(C, C, 2 factor,
  stride factor, padding factor // 2, one group per channel, no bias) with FCN's bilinear
  weights, w[i, j] = (1 - |i / f - c|) (1 - |j / f - c|), f = factor,
  c = (2 f - 1 - f mod 2) / (2 f)."""
  k = 2 * factor
  up = nn.ConvTranspose2d(channels, channels, k, stride=factor, padding=factor // 2,
                          groups=channels, bias=False)
  c = (2 * factor - 1 - factor % 2) / (2.0 * factor)
  taps = torch.tensor([1 - abs(i / factor - c) for i in range(k)], dtype=torch.float32)
  with torch.no_grad():
    up.weight.copy_((taps[:, None] * taps[None, :]).expand_as(up.weight))
  up.weight.requires_grad = False
  return up


# fyu/drn DRN-D channels of layer0 ... layer8 (before `width`).
DRN_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def _conv_units(cin, cout, count, stride=1, dilation=1):
  """fyu/drn's `_make_conv_layers`: one Sequential of (conv, BN, ReLU) per 3x3 conv."""
  modules = []
  for i in range(count):
    modules += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1,
                          padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()]
  return nn.Sequential(*modules)


class TorchDRND(nn.Module):
  """DRN-D without its avgpool: `forward` returns layer8's output, `fc` is only in the
  state dict. `dilations` are those of layers 5, 6 and 7; others are for the test that the
  comparison sees them."""

  def __init__(self, depth, width=1.0, num_classes=10, dilations=(2, 4, 2)):
    super().__init__()
    bottleneck, counts = DRN_LAYOUTS[depth]
    block = Bottleneck if bottleneck else BasicBlock
    c = [channels(k, width) for k in DRN_CHANNELS]
    self.layer0 = nn.Sequential(nn.Conv2d(3, c[0], 7, 1, padding=3, bias=False),
                                nn.BatchNorm2d(c[0]), nn.ReLU())
    self.layer1 = _conv_units(c[0], c[0], counts[0])
    self.layer2 = _conv_units(c[0], c[1], counts[1], stride=2)
    self.inplanes = c[1]
    self.layer3 = self._blocks(block, c[2], counts[2], stride=2)
    self.layer4 = self._blocks(block, c[3], counts[3], stride=2)
    self.layer5 = self._blocks(block, c[4], counts[4], dilation=dilations[0])
    self.layer6 = self._blocks(block, c[5], counts[5], dilation=dilations[1])
    self.layer7 = _conv_units(self.inplanes, c[6], counts[6], dilation=dilations[2])
    self.layer8 = _conv_units(c[6], c[7], counts[7])
    self.fc = nn.Conv2d(c[7], num_classes, 1, bias=True)

  def _blocks(self, block, planes, count, stride=1, dilation=1):
    out = planes * block.expansion
    downsample = None
    if stride != 1 or self.inplanes != out:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False),
                                 nn.BatchNorm2d(out))
    blocks = [block(self.inplanes, planes, stride, dilation, downsample)]
    blocks += [block(out, planes, 1, dilation, None) for _ in range(count - 1)]
    self.inplanes = out
    return nn.Sequential(*blocks)

  def forward(self, x):
    for i in range(9):
      x = getattr(self, f"layer{i}")(x)
    return x


class ReleaseFlow(nn.Module):
  """The release's flow module: FrEIA couplings under `inn`, the GMM `means` beside.

  Every trainable flow parameter is drawn as `scale * 0.05 * N(0, 1)` (the release's
  initialisation for scale 1; a larger scale moves the flow away from the identity, as
  training does) and the means as N(0, I), all from `seed`.
  """

  def __init__(self, dim, hidden, num_classes, num_blocks=2, clamp=2.0, scale=1.0, seed=0):
    super().__init__()
    from FrEIA import framework as Ff, modules as Fm  # pylint: disable=import-outside-toplevel

    def subnet(c_in, c_out):
      return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                           nn.ReLU(), nn.Linear(hidden, c_out))

    np_state = np.random.get_state()   # PermuteRandom reseeds NumPy's global generator
    try:
      nodes = [Ff.InputNode(dim, name="input")]
      for k in range(num_blocks):
        nodes.append(Ff.Node(nodes[-1], Fm.GLOWCouplingBlock,
                             {"subnet_constructor": subnet, "clamp": clamp},
                             name=f"coupling_{k}"))
        nodes.append(Ff.Node(nodes[-1], Fm.PermuteRandom, {"seed": k}, name=f"permute_{k}"))
      nodes.append(Ff.OutputNode(nodes[-1], name="output"))
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        self.inn = Ff.ReversibleGraphNet(nodes, verbose=False)
    finally:
      np.random.set_state(np_state)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
      for p in self.inn.parameters():
        if p.requires_grad:
          p.copy_(scale * 0.05 * torch.randn(p.shape, generator=gen))
    self.means = nn.Parameter(torch.randn(num_classes, dim, generator=gen))

  def forward(self, x, rev=False):
    """(z, log|det J|) of the couplings, as the release's `inn(x)`."""
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      return self.inn(x, rev=rev)

  def _components(self, v):
    """Per-class log N(z | mu_k, I) (N, K) and log|det J| (N,)."""
    z, log_det = self(v)
    sq = ((z[:, None, :] - self.means[None]) ** 2).sum(-1)
    return -0.5 * (z.shape[1] * math.log(2 * math.pi) + sq), log_det

  def log_density(self, v):
    """log p_V(v) under the mixture with uniform weights, v (N, D) -> (N,)."""
    comp, log_det = self._components(v)
    return torch.logsumexp(comp - math.log(comp.shape[1]), dim=1) + log_det

  def nll(self, v, labels):
    """The flow's loss: -mean log p(v | label) over rows labeled in [0, K) (their own
    component, no log pi) or -1 (the mixture); other rows are left out."""
    comp, log_det = self._components(v)
    num_classes = comp.shape[1]
    mixture = torch.logsumexp(comp - math.log(num_classes), dim=1)
    is_class = (labels >= 0) & (labels < num_classes)
    own = comp.gather(1, torch.where(is_class, labels, 0)[:, None])[:, 0]
    ll = torch.where(labels == -1, mixture, own) + log_det
    keep = is_class | (labels == -1)
    return -(ll * keep).sum() / keep.sum().clamp(min=1)


def randomize_(module, seed):
  """Draws every parameter and BN statistic at random (in place), far from the defaults so
  that a swapped or transposed tensor cannot go unnoticed. Conv weights are scaled by fan-in
  to keep activations finite through a hundred layers."""
  gen = torch.Generator().manual_seed(seed)
  randn = lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype)
  rand = lambda t: torch.rand(t.shape, generator=gen, dtype=t.dtype)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(randn(m.weight) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * randn(m.bias))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.5 + rand(m.weight))
        m.bias.copy_(0.2 * randn(m.bias))
        m.running_mean.copy_(0.2 * randn(m.running_mean))
        m.running_var.copy_(0.5 + rand(m.running_var))
        m.num_batches_tracked.fill_(7)
  return module


# --- comparing with the JAX model -------------------------------------------------------------


def rel_err(ours, theirs):
  """max |ours - theirs| / max |theirs|, in float64."""
  ours = np.asarray(ours, np.float64)
  theirs = np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def nhwc(t):
  """A torch NCHW tensor as a NumPy NHWC array."""
  return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(x):
  """An NHWC array as a torch NCHW tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def numpy_state_dict(module):
  """A module's state dict as NumPy arrays (copies)."""
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def record_batch_sizes(torch_model):
  """Pixels x batch seen by each BatchNorm that updates its statistics in a forward."""
  sizes, handles = {}, []
  for name, m in torch_model.named_modules():
    if isinstance(m, nn.BatchNorm2d):
      def hook(module, inputs, name=name):
        if not (isinstance(module, MixBatchNorm2d) and module.use_aux):
          sizes[name] = inputs[0].numel() // inputs[0].shape[1]
      handles.append(m.register_forward_pre_hook(hook))
  return sizes, handles


def compare_running_stats(new_stats, torch_model, old_state, sizes, kind="segmentation"):
  """Max relative error of every running mean / variance (variance per the biased rule)."""
  new_state = numpy_state_dict(torch_model)
  worst = 0.0
  for key, ours in traverse_util.flatten_dict(new_stats).items():
    name = names.torch_name("batch_stats", key, kind)
    theirs, old = new_state[name], old_state[name]
    module = name.rsplit(".", 1)[0]
    if name.endswith("running_var") and module in sizes:
      n = sizes[module]
      theirs = 0.9 * old + (theirs - 0.9 * old) * (n - 1) / n
    if module in sizes:
      assert not np.allclose(theirs, old), name  # the statistics did move
    else:
      np.testing.assert_array_equal(theirs, old)
    worst = max(worst, rel_err(ours, theirs))
  return worst
