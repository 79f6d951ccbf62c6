"""`bench/gpu.py` is run on a lent GPU whose minutes are few: its every step must run to the end. Here it runs on
the CPU at toy sizes (`--device cpu --smoke`), and what it prints is checked against what must hold on any device."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_runs_to_its_end_on_a_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for section in ("[precision]", "[tiles]", "[capture]", "statistics flush", "[budget]", "measured peak"):
        assert section in text, text
    assert "nan" not in text.lower(), text
    # bf16 and fp16 states agree with float32 to their precision, and stay finite
    errors = {m[0]: float(m[1]) for m in re.findall(r"torch\.(bfloat16|float16)\s+max (\S+)", text)}
    assert set(errors) == {"bfloat16", "float16"} and errors["bfloat16"] < 3e-2 and errors["float16"] < 5e-3, errors
    assert text.count("all finite: True") == 2
    # two tile sizes on the same device count the same pairs; the budget's prediction bounds what it measures
    diff = int(re.search(r"sum \|count diff\| = (\d+)", text)[1])
    assert diff <= 2, text
    ratio = float(re.search(r"\(([\d.]+) x predicted", text)[1])
    assert 0.5 < ratio <= 1.0, text
    assert len(re.findall(r"budget\s+[\d,]+ tokens:", text)) == 2
    assert "same counts: True" in text  # the replicated bincount of the tile split counts as the plain one
    assert int(re.search(r"sum \|count diff\| (\d+), ties", text)[1]) <= 16  # histc: edge ties of 160,000 only
    # the split model's sampled states and statistics equal the whole one's
    split = re.search(r"sampled states max \|diff\| (\S+), statistics max rel diff (\S+);", text)
    assert split and float(split[1]) <= 1e-5 and float(split[2].rstrip(";")) <= 1e-5, text


def test_gpu_bench_refuses_a_machine_without_cuda():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--device cpu" in out.stderr and "Traceback" not in out.stderr
