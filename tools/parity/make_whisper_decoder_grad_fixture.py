"""Fixture for tutti-lm's frozen backward through Whisper's decoder
(`WhisperDecoder::loss_and_states_grad`): the committed seeded tiny decoder
(fixtures/parity/whisper_decoder_tiny, made by make_whisper_decoder_fixtures.py) loaded by
transformers 4.46.3, random encoder states, a token sequence with next-token targets at some
positions, the mean cross-entropy over those positions and its gradient with respect to the
encoder states by PyTorch autograd (the decoder's weights frozen).

    /tmp/parity/bin/python tools/parity/make_whisper_decoder_grad_fixture.py

Writes fixtures/parity/whisper_decoder_tiny/grad.safetensors.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import WhisperModel
from transformers.modeling_outputs import BaseModelOutput

DIR = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "whisper_decoder_tiny"


def main():
    torch.manual_seed(11)
    model = WhisperModel.from_pretrained(str(DIR), attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    states = torch.randn(1, 12, model.config.d_model, requires_grad=True)
    ids = torch.tensor([[1, 7, 19, 3, 44, 91, 5, 60, 2, 17]])
    # Targets: the answer part only (positions 4..8 predict tokens 5..9), -1 elsewhere.
    targets = torch.full_like(ids, -1)
    targets[0, 4:9] = ids[0, 5:10]
    out = model.decoder(input_ids=ids, encoder_hidden_states=states).last_hidden_state
    logits = out @ model.decoder.embed_tokens.weight.T
    mask = targets[0] >= 0
    loss = torch.nn.functional.cross_entropy(logits[0][mask], targets[0][mask])
    loss.backward()
    save_file(
        {
            "encoder_states": states[0].detach().numpy().astype(np.float32),
            "tokens": ids[0].numpy().astype(np.int64),
            "targets": targets[0].numpy().astype(np.int64),
            "loss": np.array([loss.item()], dtype=np.float32),
            "grad": states.grad[0].numpy().astype(np.float32),
        },
        str(DIR / "grad.safetensors"),
    )
    print("wrote", DIR / "grad.safetensors", "loss", loss.item())


if __name__ == "__main__":
    main()
