"""The Python package against the Rust CLI: the same clips give the same numbers bit for bit;
every input kind works; bad inputs raise tutti's exceptions with the file and the reason."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tutti
from conftest import AUDIO, MUSIC, SPEECH, cli


def test_info_and_the_default_lookup(enc, model_dir, monkeypatch, tmp_path):
    info = enc.info
    assert info["sample_rate"] == 16000 and info["threads"] == 2
    assert info["num_layers"] >= 1 and info["hidden_size"] > 0
    assert "layers x" in repr(enc)
    monkeypatch.setenv("TUTTI_MODEL", str(model_dir))
    assert tutti.default_model() == str(model_dir)
    np.testing.assert_array_equal(tutti.Encoder(threads=1).embed(SPEECH), enc.embed(SPEECH))
    monkeypatch.setenv("TUTTI_MODEL", str(tmp_path / "none"))
    with pytest.raises(tutti.ModelError, match="no default model"):
        tutti.Encoder()


def test_clip_and_frames_equal_the_cli(enc, tmp_path):
    for pool, layer in [("mean", "last"), ("none", "all"), ("mean", "1")]:
        out = tmp_path / f"{pool}-{layer}"
        subprocess.run(
            [cli(), "--threads", "2", "embed", str(SPEECH), "-o", str(out), "--model", enc.path,
             "--pool", pool, "--layer", layer],
            check=True, capture_output=True,
        )
        want = np.load(out / "speech.npy")
        got = enc.embed(SPEECH, layer=layer if layer in ("last", "all") else int(layer), pool=pool)
        if pool == "none":
            np.testing.assert_array_equal(got.values, want)
            np.testing.assert_array_equal(got.timestamps, np.load(out / "speech.timestamps.npy"))
        else:
            np.testing.assert_array_equal(got, want)


def test_arrays_of_every_kind(enc):
    samples, rate = tutti.load_audio(SPEECH)
    assert samples.dtype == np.float32 and rate == 16000
    from_file = enc.embed(SPEECH)
    np.testing.assert_array_equal(enc.embed(samples), from_file)
    np.testing.assert_array_equal(enc.embed(samples.astype(np.float64)), from_file)
    # Two identical channels mix to the same mono signal.
    np.testing.assert_array_equal(enc.embed(np.stack([samples, samples])), from_file)
    as_int = np.round(np.clip(samples, -1, 1 - 2**-15) * 32768).astype(np.int16)
    assert np.abs(enc.embed(as_int) - from_file).max() < 1e-2
    # Another rate is resampled as a file at that rate would be.
    native, native_rate = tutti.load_audio(MUSIC, sample_rate=None)
    if native_rate != 16000:
        np.testing.assert_allclose(enc.embed(native, sample_rate=native_rate), enc.embed(MUSIC), atol=1e-4)
    # A list gives a list, each item its own result.
    both = enc.embed([SPEECH, MUSIC])
    np.testing.assert_array_equal(both[0], from_file)
    np.testing.assert_array_equal(both[1], enc.embed(MUSIC))
    assert not np.array_equal(both[0], both[1])


def test_features_equal_the_cli(tmp_path):
    out = tmp_path / "fbank.npy"
    subprocess.run([cli(), "features", str(SPEECH), "-o", str(out), "--kind", "fbank"], check=True,
                   capture_output=True)
    np.testing.assert_array_equal(tutti.features(SPEECH), np.load(out))
    mel = tutti.features(SPEECH, kind="whisper-mel")
    assert mel.shape == (3000, 80)
    assert tutti.features(SPEECH, kind="whisper-mel", pad=False).shape[0] < 3000


def test_errors_name_the_file_and_the_reason(enc, tmp_path):
    with pytest.raises(tutti.AudioError, match="missing.wav"):
        enc.embed(tmp_path / "missing.wav")
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"this is not a wav file at all" * 10)
    with pytest.raises(tutti.AudioError, match="not_audio.wav"):
        enc.embed(bad)
    with pytest.raises(tutti.AudioError, match="NaN"):
        enc.embed(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(tutti.AudioError, match="empty"):
        enc.embed(np.zeros(0, dtype=np.float32))
    with pytest.raises(tutti.AudioError, match="dtype"):
        enc.embed(np.zeros(16000, dtype=np.int64))
    with pytest.raises(tutti.AudioError, match="too short"):
        enc.embed(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="layer"):
        enc.embed(SPEECH, layer="deepest")
    with pytest.raises(tutti.ModelError, match="layer 99"):
        enc.embed(SPEECH, layer=99)
    with pytest.raises(ValueError, match="pool"):
        enc.embed(SPEECH, pool="max")
    with pytest.raises(tutti.ModelError, match="nowhere"):
        tutti.Encoder(tmp_path / "nowhere")
    # Silence is valid audio.
    assert np.isfinite(enc.embed(np.zeros(16000, dtype=np.float32))).all()
