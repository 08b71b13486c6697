"""Parity fixtures for the Whisper encoder: a seeded tiny WhisperModel (decoder included, so the
loader must skip it by name) built with transformers (no download), the feature extractor's
config, and every encoder hidden state for each clip. A clip longer than 30 s is cut into 30 s
windows, each featurised and encoded as the reference does, and the valid frames
(ceil(samples / 320) per window) concatenated.

    /tmp/parity/bin/python tools/parity/make_whisper_fixtures.py

Writes fixtures/parity/hf_whisper/{config.json,preprocessor_config.json,model.safetensors,expected.safetensors}.
"""

import math
import pathlib

import numpy as np
import soundfile as sf
import torch
import transformers
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
WINDOW = 480000


def main() -> None:
    torch.manual_seed(20261124)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )
    model = WhisperModel(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    out_dir = ROOT / "fixtures" / "parity" / "hf_whisper"
    model.save_pretrained(out_dir, safe_serialization=True)
    extractor = WhisperFeatureExtractor(feature_size=80)
    extractor.save_pretrained(out_dir)
    speech, _ = sf.read(ROOT / "fixtures" / "audio" / "speech_16k.wav", dtype="float32")
    music, _ = sf.read(ROOT / "fixtures" / "audio" / "music_16k.wav", dtype="float32")
    long = np.tile(music, 12)[: 35 * 16000]  # 35 s: two windows
    tensors = {}
    with torch.no_grad():
        for i, wave in enumerate([speech, long]):
            if i == 0:  # the long clip is rebuilt by the test: np.tile(music, 12)[: 35 * 16000]
                tensors[f"waveform/{i}"] = torch.from_numpy(wave)
            per_layer = None
            for start in range(0, len(wave), WINDOW):
                piece = wave[start:start + WINDOW]
                feats = extractor(piece, sampling_rate=16000, return_tensors="pt")["input_features"]
                states = model.encoder(feats, output_hidden_states=True).hidden_states
                valid = math.ceil(len(piece) / 320)
                chunk = [h[0, :valid] for h in states]
                per_layer = chunk if per_layer is None else [torch.cat([a, b]) for a, b in zip(per_layer, chunk)]
            for layer, h in enumerate(per_layer):
                tensors[f"hidden/{i}/{layer}"] = h
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, out_dir / "expected.safetensors",
              metadata={"generator": "tools/parity/make_whisper_fixtures.py", "transformers": transformers.__version__,
                        "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in tensors.items() if k.endswith("/0")})


if __name__ == "__main__":
    main()
