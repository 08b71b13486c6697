"""Shared fixtures: the CLI the package is compared with, and a seeded tiny model."""

import os
import subprocess
from pathlib import Path

import pytest

import tutti

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "examples" / "audio"
SPEECH = AUDIO / "speech.wav"
MUSIC = AUDIO / "music.wav"


def cli():
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/tutti/target"))
    path = Path(target) / "release" / "tutti"
    if not path.is_file():
        pytest.skip(f"{path} not built (cargo build --release -p tutti-cli)")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A seeded `tiny` model written by the CLI (no trained model ships yet)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([cli(), "init", "--preset", "tiny", "--seed", "3", "-o", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def enc(model_dir):
    return tutti.Encoder(model_dir, threads=2)
