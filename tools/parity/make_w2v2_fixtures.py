"""Parity fixtures for the wav2vec 2.0 / HuBERT encoders: seeded tiny random models built with
transformers (no download), saved in Hugging Face layout, with every hidden state of each input
computed alone (unpadded, as the model expects) and the preprocessor's output.

    /tmp/parity/bin/python tools/parity/make_w2v2_fixtures.py

Writes fixtures/parity/hf_<name>/{config.json,preprocessor_config.json,model.safetensors,expected.safetensors}.
Variants (WavLM too, with its gated relative position bias): wav2vec2 with group-norm feature extractor and post-LN encoder (wav2vec2-base style),
wav2vec2 with layer-norm feature extractor and stable-layer-norm encoder (large-lv60 style), and
HuBERT in both styles. Weight-norm positional convolutions are saved as torch saves them
(parametrizations.weight.original0/1).
"""

import pathlib

import numpy as np
import soundfile as sf
import torch
import transformers
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WavLMConfig, WavLMModel

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 4, 4),
    conv_kernel=(10, 4, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    vocab_size=8,
    mask_time_prob=0.05,
)

VARIANTS = {
    "wav2vec2_group": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)),
    "wav2vec2_layer": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)),
    "hubert_group": (HubertConfig, HubertModel, dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)),
    "hubert_layer": (HubertConfig, HubertModel, dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_proj_layer_norm=True)),
    # Few buckets and a short maximum distance, so that clips of ~100 frames reach the
    # logarithmic buckets and the clamp.
    "wavlm_group": (WavLMConfig, WavLMModel, dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_buckets=32, max_bucket_distance=40)),
    "wavlm_layer": (WavLMConfig, WavLMModel, dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_buckets=32, max_bucket_distance=40)),
}


def main() -> None:
    speech, _ = sf.read(ROOT / "fixtures" / "audio" / "speech_16k.wav", dtype="float32")
    music, _ = sf.read(ROOT / "fixtures" / "audio" / "music_16k.wav", dtype="float32")
    waves = [speech[:16000], music[5000:14321]]
    for name, (config_cls, model_cls, extra) in VARIANTS.items():
        torch.manual_seed(20261124)
        config = config_cls(**TINY, **extra)
        model = model_cls(config).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
            for param_name, param in model.named_parameters():
                if "gru_rel_pos_const" in param_name or "rel_attn_embed" in param_name:
                    param.uniform_(-1.0, 1.0)  # the defaults (ones, N(0, 1)) would hide a swapped gate
        out_dir = ROOT / "fixtures" / "parity" / f"hf_{name}"
        model.save_pretrained(out_dir, safe_serialization=True)
        if name == "wav2vec2_group":
            # The same weights as pytorch_model.bin (torch.save), for the .bin loading path.
            model.save_pretrained(ROOT / "fixtures" / "parity" / "hf_wav2vec2_group_bin", safe_serialization=False)
        normalize = extra["feat_extract_norm"] == "layer"
        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                             do_normalize=normalize, return_attention_mask=normalize)
        extractor.save_pretrained(out_dir)
        if name == "wav2vec2_group":
            extractor.save_pretrained(ROOT / "fixtures" / "parity" / "hf_wav2vec2_group_bin")
        tensors = {}
        with torch.no_grad():
            for i, wave in enumerate(waves):
                inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
                tensors[f"waveform/{i}"] = torch.from_numpy(wave)
                tensors[f"input_values/{i}"] = inputs["input_values"][0]
                out = model(inputs["input_values"], output_hidden_states=True)
                for layer, h in enumerate(out.hidden_states):
                    tensors[f"hidden/{i}/{layer}"] = h[0]
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, out_dir / "expected.safetensors",
                  metadata={"generator": "tools/parity/make_w2v2_fixtures.py", "transformers": transformers.__version__,
                            "torch": torch.__version__})
        keys = sorted(model.state_dict().keys())
        print(name, len(keys), [k for k in keys if "pos_conv" in k or "masked" in k], tuple(out.hidden_states[-1].shape))


if __name__ == "__main__":
    main()
