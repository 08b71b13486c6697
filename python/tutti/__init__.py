"""tutti: one audio encoder for speech, environmental sound and music, from a Rust core.

    >>> import tutti
    >>> enc = tutti.Encoder("models/small")   # any model directory; None: $TUTTI_MODEL or $TUTTI_HOME/models/default
    >>> clip = enc.embed("speech.wav")        # numpy float32 [dim], mean over frames
    >>> frames = enc.embed(samples, sample_rate=44100, pool="none")
    >>> frames.values.shape, frames.timestamps[:3]

Inputs: a path, a 1-D array (samples) or 2-D array (channels x samples) of float32, float64 or
int16 (int16 is scaled by 1/32768; channels are averaged, as the file decoder does), or a list of
them. Arrays are taken at `sample_rate` (default: the model's) and resampled as files are.
Long inputs are embedded in the same windows as `tutti embed`, and the results equal the CLI's
bit for bit. The GIL is released while Rust computes; errors are `tutti.AudioError` (bad or
unreadable audio) and `tutti.ModelError` (models), with the file and the reason.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence, Union

import numpy as np

from . import _tutti
from ._tutti import AudioError, ModelError, __version__

__all__ = [
    "AudioError",
    "Encoder",
    "Frames",
    "ModelError",
    "__version__",
    "default_model",
    "features",
    "load_audio",
]

PathLike = Union[str, "os.PathLike[str]"]
AudioInput = Union[PathLike, np.ndarray]


class Frames(NamedTuple):
    """Frame embeddings: `values` [frames, dim] (or [layers, frames, dim] with layer="all") and
    each frame's start time in seconds."""

    values: np.ndarray
    timestamps: np.ndarray


def default_model() -> str:
    """The default model directory: $TUTTI_MODEL, else $TUTTI_HOME/models/default."""
    return os.fspath(_tutti.default_model())


def _mono_f32(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype in (np.float32, np.float64):
        x = x.astype(np.float32, copy=False)
    else:
        raise AudioError(f"{what}: dtype {x.dtype} is not audio (float32, float64 or int16)")
    if x.ndim == 2:
        # channels x samples, averaged like the file decoder's mix-down.
        x = x.mean(axis=0, dtype=np.float32)
    elif x.ndim != 1:
        raise AudioError(f"{what}: {x.ndim}-D array; expected samples or channels x samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def load_audio(path: PathLike, sample_rate: int | None = 16000) -> tuple[np.ndarray, int]:
    """Decode a file (wav, flac, ogg, mp3) to mono float32 at `sample_rate` (None keeps the
    file's). Returns (samples, rate)."""
    samples, rate = _tutti.load_audio_file(os.fspath(path), sample_rate)
    return samples, rate


def features(x: AudioInput, kind: str = "fbank", sample_rate: int | None = None, pad: bool = True) -> np.ndarray:
    """Front-end features [frames, bins] of a path or array (at `sample_rate`, default 16 kHz):
    "fbank" (Kaldi fbank, 128 bins, 100 Hz, as the tutti encoder uses) or "whisper-mel" (80 bins,
    padded to 30 s windows unless pad=False)."""
    if _is_path(x):
        samples, _ = load_audio(x, 16000)
        what = os.fspath(x)
    else:
        what = "array"
        samples = _mono_f32(x, what)
        rate = 16000 if sample_rate is None else int(sample_rate)
        if rate != 16000:
            samples = _resample(samples, rate, what)
    return _tutti.features_samples(samples, kind, pad, what)


def _resample(samples: np.ndarray, rate: int, what: str) -> np.ndarray:
    return _tutti.resample_samples(samples, rate, 16000, what)


class Encoder:
    """An audio encoder: `model` is a model directory (tutti, a Hugging Face checkpoint, a
    teacher) or None for the default ($TUTTI_MODEL, else $TUTTI_HOME/models/default); `threads` the worker threads (None: all cores);
    `precision` "f32", "int8" or "bf16" (CPUs with AMX or AVX512-BF16)."""

    def __init__(self, model: PathLike | None = None, threads: int | None = None, precision: str = "f32"):
        self._inner = _tutti.Encoder(None if model is None else os.fspath(model), threads, precision)

    @property
    def info(self) -> dict:
        """name, sample_rate, hop_samples, frame_rate_hz, num_layers, hidden_size, threads."""
        return dict(self._inner.info)

    @property
    def path(self) -> str:
        return os.fspath(self._inner.path)

    def __repr__(self) -> str:
        return repr(self._inner)

    def embed(
        self,
        x: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        layer: Union[int, str] = "last",
        pool: str = "mean",
    ):
        """Embed one input or a list of them (a list gives a list, each item exactly its own
        result). `layer`: a number (0 = input to the first block), "last" or "all". `pool`:
        "mean" gives [dim] ([layers, dim] with layer="all"); "none" gives `Frames`."""
        if isinstance(x, (list, tuple)):
            return [self.embed(item, sample_rate, layer, pool) for item in x]
        layer = str(layer)
        if _is_path(x):
            out = self._inner.embed_file(os.fspath(x), layer, pool)
        else:
            samples = _mono_f32(x, "array")
            rate = self.info["sample_rate"] if sample_rate is None else int(sample_rate)
            out = self._inner.embed_samples(samples, rate, layer, pool, "array")
        if pool == "none":
            return Frames(out["values"], out["timestamps"])
        return out["values"]
