"""Reference outputs of the real multilingual Whisper base decoder (on demand; not in git): on
fixtures/audio/speech_fr_16k.wav, CTranslate2's greedy transcription (French, no timestamps) from
the fetched model.bin, and transformers' encoder states and decoder logits from the directory
`tutti convert ct2-whisper --with-decoder` wrote ($TUTTI_HOME/teachers/whisper-base).

    /tmp/parity/bin/python tools/parity/make_whisper_base_decoder_fixture.py

Writes $TUTTI_HOME/parity/whisper_base_decoder.safetensors (+ .json with the texts).
"""

import json
import os
from pathlib import Path

import ctranslate2
import numpy as np
import soundfile as sf
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("TUTTI_HOME", Path.home() / ".cache" / "tutti"))
MODEL = HOME / "teachers" / "whisper-base"
CT2 = HOME / "downloads" / "whisper-base"


def main():
    audio, sr = sf.read(ROOT / "fixtures" / "audio" / "speech_fr_16k.wav", dtype="float32")
    assert sr == 16000
    fe = WhisperFeatureExtractor(feature_size=80)
    mel = fe(audio, sampling_rate=16000, return_tensors="np").input_features
    tok = WhisperTokenizerFast.from_pretrained(str(MODEL))
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>"])
    ct2 = ctranslate2.models.Whisper(str(CT2))
    res = ct2.generate(ctranslate2.StorageView.from_array(mel), [prompt], beam_size=1, max_length=120,
                       suppress_blank=False, suppress_tokens=[])
    ct2_ids = res[0].sequences_ids[0]
    # The converted file carries no {"format": "pt"} header metadata, which from_pretrained
    # insists on: load its tensors by hand (WhisperModel names under `model.`, head tied).
    model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(str(MODEL))).eval()
    weights = {f"model.{k}": v for k, v in load_file(str(MODEL / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert unexpected == [] and set(missing) <= {"proj_out.weight"}, (missing, unexpected)
    model.tie_weights()
    with torch.no_grad():
        states = model.model.encoder(torch.from_numpy(mel)).last_hidden_state
        ids = torch.tensor([prompt + ct2_ids])
        logits = model(encoder_outputs=(states,), decoder_input_ids=ids).logits[0]
    out = HOME / "parity"
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "encoder_states": states[0].numpy().astype(np.float32),
            "prompt": np.array(prompt, dtype=np.int64),
            "ct2_tokens": np.array(ct2_ids, dtype=np.int64),
            "logits": logits.numpy().astype(np.float32),
        },
        str(out / "whisper_base_decoder.safetensors"),
    )
    text = tok.decode(ct2_ids)
    (out / "whisper_base_decoder.json").write_text(json.dumps({"ct2_text": text}, ensure_ascii=False))
    print("ctranslate2:", text)


if __name__ == "__main__":
    main()
