"""Front-end parity fixtures: Kaldi fbank (torchaudio) and Whisper log-mel (transformers).

Writes fixtures/audio/*.{wav,flac,ogg,mp3} and fixtures/parity/frontend.safetensors.
Regenerate (from the repository root, with the pinned stack of requirements.txt):

    python3 -m venv /tmp/parity && /tmp/parity/bin/pip install -r tools/parity/requirements.txt
    /tmp/parity/bin/python tools/parity/make_frontend_fixtures.py --speech-source PATH/hello-world.wav

`--speech-source` is Asterisk's `en_US_f_Allison/hello-world.wav` (Debian package
asterisk-core-sounds-en-wav, CC-BY-SA-3.0, Allison Smith); without it the committed
fixtures/audio/speech_16k.wav is reused.
"""

import argparse
import pathlib

import numpy as np
import soundfile as sf
import torch
import torchaudio
import transformers
from safetensors.numpy import save_file
from transformers import WhisperFeatureExtractor

ROOT = pathlib.Path(__file__).resolve().parents[2]
AUDIO = ROOT / "fixtures" / "audio"
PARITY = ROOT / "fixtures" / "parity"
RNG = np.random.default_rng(20261123)


def usad_fbank(waveform: np.ndarray) -> np.ndarray:
    """USAD's front end: mean removal, Kaldi fbank, fixed normalisation."""
    w = torch.from_numpy(waveform.astype(np.float32))[None]
    w = w - w.mean()
    fb = torchaudio.compliance.kaldi.fbank(
        w,
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    return ((fb - (-4.268)) / (4.569 * 2)).numpy()


def whisper_mel(waveform: np.ndarray, bins: int) -> np.ndarray:
    extractor = WhisperFeatureExtractor(feature_size=bins)
    out = extractor(waveform.astype(np.float32), sampling_rate=16000, return_tensors="np")
    return out["input_features"][0].T.astype(np.float32)  # [frames, bins]


def music(rate: int, secs: float, channels: int = 1) -> np.ndarray:
    """A short chord progression of harmonic tones with attack/decay envelopes."""
    t = np.arange(int(rate * secs)) / rate
    out = np.zeros((len(t), channels))
    chords = [[261.63, 329.63, 392.0], [220.0, 261.63, 329.63], [196.0, 246.94, 293.66], [174.61, 220.0, 261.63]]
    step = secs / len(chords)
    for i, chord in enumerate(chords):
        local = t - i * step
        envelope = np.where((local >= 0) & (local < step), np.exp(-3.0 * np.clip(local, 0, None)) * np.minimum(local / 0.01, 1.0), 0.0)
        for note in chord:
            for h in range(1, 6):
                for c in range(channels):
                    pan = 1.0 if channels == 1 else (0.6 if (c + h) % 2 else 0.4)
                    out[:, c] += pan * envelope * np.sin(2 * np.pi * note * h * t + c * 0.3) / (h * 6)
    out += 0.002 * RNG.standard_normal(out.shape)
    return out.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speech-source", type=pathlib.Path)
    args = parser.parse_args()
    AUDIO.mkdir(parents=True, exist_ok=True)
    PARITY.mkdir(parents=True, exist_ok=True)

    if args.speech_source:
        speech8k, rate = sf.read(args.speech_source, dtype="float32")
        assert rate == 8000
        speech16k = torchaudio.functional.resample(torch.from_numpy(speech8k), 8000, 16000).numpy()
        sf.write(AUDIO / "speech_16k.wav", speech16k, 16000, subtype="PCM_16")

    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(AUDIO / "music_16k.wav", music(16000, 3.0)[:, 0], 16000, subtype="PCM_16")
    sf.write(AUDIO / "tone_440hz_16k.wav", tone, 16000, subtype="PCM_16")
    sf.write(AUDIO / "silence_16k.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    speech, _ = sf.read(AUDIO / "speech_16k.wav", dtype="float32")
    loud = int(np.argmax(np.abs(speech)))
    start = max(0, loud - 400)
    sf.write(AUDIO / "speech_50ms_16k.wav", speech[start : start + 800], 16000, subtype="PCM_16")
    sf.write(AUDIO / "music_44k_stereo.wav", music(44100, 2.0, channels=2), 44100, subtype="PCM_16")

    # The same 0.5 s stereo signal in every format tutti decodes.
    base = music(22050, 0.5, channels=2)
    formats = {
        "fmt_u8.wav": ("WAV", "PCM_U8"),
        "fmt_s16.wav": ("WAV", "PCM_16"),
        "fmt_s24.wav": ("WAV", "PCM_24"),
        "fmt_s32.wav": ("WAV", "PCM_32"),
        "fmt_f32.wav": ("WAV", "FLOAT"),
        "fmt_s16.flac": ("FLAC", "PCM_16"),
        "fmt_vorbis.ogg": ("OGG", "VORBIS"),
        "fmt_mp3.mp3": ("MP3", "MPEG_LAYER_III"),
    }
    tensors: dict[str, np.ndarray] = {"formats/source": base}
    for name, (fmt, subtype) in formats.items():
        sf.write(AUDIO / name, base, 22050, format=fmt, subtype=subtype)
        decoded, rate = sf.read(AUDIO / name, dtype="float32", always_2d=True)
        assert rate == 22050
        tensors[f"formats/{name}"] = decoded.astype(np.float32)

    clips = ["speech_16k.wav", "music_16k.wav", "tone_440hz_16k.wav", "silence_16k.wav", "speech_50ms_16k.wav"]
    for clip in clips:
        waveform, rate = sf.read(AUDIO / clip, dtype="float32")
        assert rate == 16000
        tensors[f"waveform/{clip}"] = waveform
        tensors[f"fbank/{clip}"] = usad_fbank(waveform)
        for bins in (80, 128):
            mel = whisper_mel(waveform, bins)
            # Beyond the audio (plus the STFT's reach) the frames repeat the padding's value:
            # keep the informative head and a summary of the whole matrix.
            keep = min(mel.shape[0], len(waveform) // 160 + 8)
            tensors[f"whisper{bins}/{clip}"] = np.ascontiguousarray(mel[:keep])
            tensors[f"whisper{bins}_mean/{clip}"] = np.array([mel.mean()], np.float32)
            tensors[f"whisper{bins}_frames/{clip}"] = np.array([mel.shape[0]], np.float32)

    # 44.1 kHz stereo: mono mixdown, torchaudio's resampler, then fbank.
    stereo, rate = sf.read(AUDIO / "music_44k_stereo.wav", dtype="float32", always_2d=True)
    mono = stereo.mean(axis=1)
    resampled = torchaudio.functional.resample(torch.from_numpy(mono), rate, 16000).numpy()
    tensors["waveform_resampled/music_44k_stereo.wav"] = resampled
    tensors["fbank/music_44k_stereo.wav"] = usad_fbank(resampled)

    metadata = {
        "generator": "tools/parity/make_frontend_fixtures.py",
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, PARITY / "frontend.safetensors", metadata=metadata)
    print({k: v.shape for k, v in tensors.items()})


if __name__ == "__main__":
    main()
