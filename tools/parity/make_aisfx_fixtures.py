"""Parity fixtures for aiSFX (PyPI aisfx 0.1.2, the reference implementation), its librosa front
end and its EmbeddingNet.

    /tmp/parity/bin/python tools/parity/make_aisfx_fixtures.py [--real]

The aisfx wheel is fetched with `pip download --no-deps` (or taken from $AISFX_WHEEL) and imported
from an unpacked copy; its code runs as shipped except one thing: the package's librosa front end
returns `[mels, frames]` and its blocking then cuts along the mel axis (a bug of the librosa path;
the Essentia path it defaults to returns `[frames, mels]`), so the spectrogram is transposed to
`[frames, mels]` before blocking, as the model was trained.

Writes
- fixtures/audio/sfx_44k.flac: a deterministic 5 s synthetic sound-effect clip (44.1 kHz mono);
- fixtures/parity/aisfx_tiny_random.pth: `CrossNet(EmbeddingNet('max', 3, 1, 4), ds_dict)` with
  seeded weights and random BatchNorm statistics, saved as `(state_dict, ds_dict)` like the real
  checkpoint.pth;
- fixtures/parity/aisfx_expected.safetensors: for sfx_44k.flac and music_44k_stereo.wav, the
  normalised spectrogram `[frames, 96]` (`mel/i`), and through the tiny model the pooled output of
  block 4's first convolution and the embedding (`random/i/block4_conv1`, `random/i/embedding`);
  with --real, the same two for the real checkpoint on sfx_44k.flac (`real/...`).
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def import_aisfx():
    wheel = os.environ.get("AISFX_WHEEL")
    work = pathlib.Path(tempfile.mkdtemp(prefix="aisfx-"))
    if not wheel:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "aisfx==0.1.2", "-d", str(work)], check=True)
        wheel = next(work.glob("aisfx-0.1.2-*.whl"))
    zipfile.ZipFile(wheel).extractall(work / "pkg")
    sys.path.insert(0, str(work / "pkg"))
    import aisfx.inference as inference
    return inference, work / "pkg" / "aisfx" / "models" / "checkpoint.pth"


def make_clip(path: pathlib.Path) -> None:
    rate, seconds = 44100, 5.0
    rng = np.random.default_rng(20261124)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.2 * np.sin(2 * np.pi * (300 + 900 * t) * t)                    # rising chirp
    x += 0.3 * rng.standard_normal(t.size) * ((t % 1.0) < 0.15)           # noise bursts each second
    for onset in (0.5, 1.7, 2.2, 3.9):                                    # decaying clicks
        k = t >= onset
        x[k] += 0.6 * np.exp(-40 * (t[k] - onset)) * np.sin(2 * np.pi * 2500 * (t[k] - onset))
    x += 0.1 * np.sin(2 * np.pi * 80 * t) * (t > 3.0)                     # low hum in the tail
    sf.write(path, (x / np.max(np.abs(x)) * 0.8).astype(np.float32), rate, subtype="PCM_16")


def spectrogram(inference, path):
    from aisfx.spectrogram import spectrogram_librosa
    spec = spectrogram_librosa.compute_spectrogram(
        filename=str(path), sr=inference.SAMPLE_RATE, block_size=inference.SPEC_BLOCK_LENGTH,
        hop_size=inference.SPEC_HOP_LENGTH, n_mels=inference.MEL_BINS, f_min=inference.F_MIN, f_max=inference.F_MAX)
    spec = inference.spectrogram_normalize(spec.T, spec_norm="original")
    return spec.astype(np.float32)


def run(inference, model, spec):
    blocks = inference.blocking(spec, block_size=inference.EMB_BLOCK_LENGTH,
                                hop_size=inference.compute_hopSize(inference.EMB_BLOCK_LENGTH, 0.5, spec),
                                drop_partial_block=True)
    data = torch.Tensor(blocks)
    net = model.embedding_net
    with torch.no_grad():
        x = data[:, None]
        x = net.conv_block1(x, pool_size=(2, 2), pool_type="max")
        x = net.conv_block2(x, pool_size=(2, 2), pool_type="max")
        x = net.conv_block3(x, pool_size=(2, 2), pool_type="max")
        b = net.conv_block4
        first = torch.relu(b.bn1(b.conv1(x)))
        first = first.mean(dim=3).max(dim=2).values
        embedding = model.get_embedding(data)
    return first, embedding


def main() -> None:
    inference, checkpoint = import_aisfx()
    from aisfx.models.cnn2d import CrossNet, EmbeddingNet
    clip = ROOT / "fixtures" / "audio" / "sfx_44k.flac"
    make_clip(clip)
    clips = [clip, ROOT / "fixtures" / "audio" / "music_44k_stereo.wav"]
    torch.manual_seed(20261124)
    ds_dict = {"ds_a": (0, 5), "ds_b": (1, 3)}
    model = CrossNet(EmbeddingNet("max", 3, 1, 4), ds_dict, "cpu").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    torch.save((model.state_dict(), ds_dict), ROOT / "fixtures" / "parity" / "aisfx_tiny_random.pth")
    tensors = {}
    for i, path in enumerate(clips):
        spec = spectrogram(inference, path)
        tensors[f"mel/{i}"] = torch.from_numpy(spec)
        first, embedding = run(inference, model, spec)
        tensors[f"random/{i}/block4_conv1"] = first
        tensors[f"random/{i}/embedding"] = embedding
    if "--real" in sys.argv:
        weights, real_ds = inference.load_weights("cpu")
        real = inference.load_bestModel(weights, real_ds, "cpu")
        first, embedding = run(inference, real, spectrogram(inference, clip))
        tensors["real/block4_conv1"] = first
        tensors["real/embedding"] = embedding
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, ROOT / "fixtures" / "parity" / "aisfx_expected.safetensors",
              metadata={"generator": "tools/parity/make_aisfx_fixtures.py", "aisfx": "0.1.2", "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
