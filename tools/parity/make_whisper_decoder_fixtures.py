"""Fixtures for tutti-lm's Whisper decoder: a seeded tiny WhisperForConditionalGeneration
(transformers 4.46.3) saved in the Hugging Face layout, and its logits for a token sequence
given random encoder states (the decoder alone: `encoder_outputs=` bypasses the encoder).

    /tmp/parity/bin/python tools/parity/make_whisper_decoder_fixtures.py

Writes fixtures/parity/whisper_decoder_tiny/{config.json, model.safetensors, expected.safetensors}.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import WhisperConfig, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "whisper_decoder_tiny"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    config = WhisperConfig(
        vocab_size=120,
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=4,
        decoder_layers=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=24,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
    model.model.save_pretrained(str(OUT), safe_serialization=True)
    states = torch.randn(1, 10, config.d_model)
    ids = torch.tensor([[1, 5, 9, 33, 77, 2, 64, 100]])
    with torch.no_grad():
        logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), decoder_input_ids=ids).logits
    save_file(
        {
            "encoder_states": states[0].numpy().astype(np.float32),
            "tokens": ids[0].numpy().astype(np.int64),
            "logits": logits[0].numpy().astype(np.float32),
        },
        str(OUT / "expected.safetensors"),
    )
    print("wrote", OUT)


if __name__ == "__main__":
    main()
