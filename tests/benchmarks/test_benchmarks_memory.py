"""benchmarks/memory_contrast.py: its FLOP count is the arithmetic of every class (not one
loop body), and it writes its files."""
import json

from benchmarks import memory_contrast


def test_update_flops_count_every_class(monkeypatch):
  small = memory_contrast.Setting(3, 33, 1, 1, 16, memory=200, max_pixels=200, per_class=50,
                                  dim=64)
  _, _, update, args = memory_contrast.memory_programs(small)
  flops = memory_contrast._flops(update, *args)   # pylint: disable=protected-access
  # The density of 50 new entries against 200 per class: 3 x 50 x 200 x 64 multiply-adds.
  matmul = 3 * 50 * 200 * 64 * 2
  assert matmul <= flops <= 1.5 * matmul


def test_cli_writes_json_and_markdown(monkeypatch, tmp_path):
  monkeypatch.setitem(memory_contrast.SETTINGS, "cpu", memory_contrast.Setting(
      3, 33, 1, 1, 16, memory=64, max_pixels=64, per_class=16, dim=16, note="test"))
  memory_contrast.main(["--settings", "cpu", "--time", "--out", str(tmp_path)])
  written = sorted(p.name for p in tmp_path.iterdir())
  assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".md")
  rows = json.loads((tmp_path / written[0]).read_text())["rows"]
  assert rows[0]["loss_gflop"] > 0 and rows[0]["loss_ms"] > 0
  assert "| cpu: test |" in (tmp_path / written[1]).read_text()
