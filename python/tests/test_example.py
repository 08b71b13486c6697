"""examples/python/probe_and_plot.py runs end to end on the quick suite with a tiny model: the
folder's embeddings are the encoder's, the probe scores a real accuracy, the plot is written."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tutti
from conftest import ROOT, cli

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_probe_and_plot(model_dir, tmp_path):
    suite = tmp_path / "quick"
    subprocess.run([cli(), "suite", "build", "--quick", "-o", str(suite)], check=True,
                   capture_output=True)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples/python/probe_and_plot.py"), "--suite", str(suite),
         "--task", "quick-vowel", "--model", str(model_dir), "--threads", "2", "--per-task", "12",
         "-o", str(out)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] > 0 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["points"] >= 12 and "PCA" in summary["views"]
    assert (out / "embeddings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wav = sorted((suite / "quick-vowel" / "audio").glob("*.wav"))[0]
    np.testing.assert_array_equal(np.load(out / "folder" / f"{wav.stem}.npy"),
                                  tutti.Encoder(model_dir, threads=1).embed(wav))
