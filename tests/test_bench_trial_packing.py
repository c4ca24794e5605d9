"""benchmarks/trial_packing.py end to end, tiny: every size measured both ways, ratios printed."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_packing_benchmark_measures_every_size_both_ways():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trial_packing.py"),
                           "--steps", "2", "--repeats", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = re.findall(r"^\| (\d+) x (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", proc.stdout, re.M)
    assert [(int(h), int(n)) for h, n, *_ in rows] == [(64, 1), (150, 1), (300, 1),
                                                       (64, 2), (150, 2), (300, 2)]
    for *_, alone, packed, ratio in rows:
        assert float(alone) > 0 and float(packed) > 0
        a, p, r = float(alone), float(packed), float(ratio)
        # the ratio is packed / alone before both were rounded to 0.1
        assert abs(r - p / a) <= r * (0.05 / a + 0.05 / p) + 0.006
    assert "median packed / alone over sizes" in proc.stdout
