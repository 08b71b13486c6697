"""Parity fixtures for the tutti encoder: two tiny models (post-LN at 50 Hz, pre-LN at 25 Hz)
with seeded random weights, a batch of two waveforms of unequal length, and every hidden state
and FFN output of each item computed alone by the PyTorch reference (tutti_reference.py).

    /tmp/parity/bin/python tools/parity/make_tutti_fixtures.py

Writes fixtures/parity/tutti_<name>/{config.json,model.safetensors,expected.safetensors}.
"""

import copy
import json
import pathlib

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file

import tutti_reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]

BASE = json.loads((ROOT / "fixtures" / "parity" / "tiny_config.json").read_text())


def main() -> None:
    torch.manual_seed(20261124)
    speech, rate = sf.read(ROOT / "fixtures" / "audio" / "speech_16k.wav", dtype="float32")
    music, _ = sf.read(ROOT / "fixtures" / "audio" / "music_16k.wav", dtype="float32")
    waves = [torch.from_numpy(speech[:20000]), torch.from_numpy(music[:13457])]
    variants = {
        "postln_50hz": {},
        "preln_25hz": {"layer_norm_first": True, "conv_time_strides": [2, 2]},
    }
    for name, change in variants.items():
        cfg = copy.deepcopy(BASE)
        cfg.update(change)
        model = ref.TuttiEncoder(cfg)
        # Random LayerNorm affines too, so that a swapped weight/bias would show.
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
        model.eval()
        out_dir = ROOT / "fixtures" / "parity" / f"tutti_{name}"
        ref.save(model, out_dir)
        tensors = {}
        with torch.no_grad():
            for i, wave in enumerate(waves):
                tensors[f"waveform/{i}"] = wave
                feats = ref.fbank(wave, cfg)[None]
                hidden, ffns = model(feats)
                for layer, h in enumerate(hidden):
                    tensors[f"hidden/{i}/{layer}"] = h[0]
                for layer, f in enumerate(ffns):
                    tensors[f"ffn/{i}/{layer}"] = f[0]
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, out_dir / "expected.safetensors",
                  metadata={"generator": "tools/parity/make_tutti_fixtures.py", "torch": torch.__version__})
        print(name, {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("hidden/") and k.endswith("/0")})


if __name__ == "__main__":
    main()
