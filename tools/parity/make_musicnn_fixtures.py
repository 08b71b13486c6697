"""Reference values for musicnn in tutti, computed by the PyPI package's own code (musicnn 0.1.0:
extractor.batch_data for the spectrogram patches, models.define_model for the network) on
TensorFlow 2.15 (tf.compat.v1 graph mode).

    python3 -m venv /tmp/tfref && /tmp/tfref/bin/pip install -r tools/parity/requirements-tf.txt
    /tmp/tfref/bin/pip install --no-deps ~/.cache/tutti/downloads/musicnn-0.1.0-py3-none-any.whl
    /tmp/tfref/bin/python tools/parity/make_musicnn_fixtures.py                 # CI fixtures
    /tmp/tfref/bin/python tools/parity/make_musicnn_fixtures.py --real ~/.cache/tutti/teachers/musicnn-mtt

Writes
- fixtures/parity/musicnn_tiny/: a seeded checkpoint of build_musicnn with a small mid- and
  back-end (num_filt_midend 8, num_units_backend 16, 5 classes; the front end is fixed by the
  package), config.json, and expected.safetensors: the package's patches of the music clip and,
  per patch, the dense layer after its ReLU, the penultimate features (after its BatchNorm) and
  the logits;
- fixtures/parity/musicnn_frontend.safetensors: waveforms and the package's log-mel spectrograms;
- with --real DIR: fixtures/parity/musicnn_real.safetensors: the same outputs of the real MTT
  model on the music and speech clips.
"""

import argparse
import json
import pathlib

import numpy as np
import soundfile as sf
import tensorflow as tf
from musicnn import extractor, models
from safetensors.numpy import save_file

tf.compat.v1.disable_eager_execution()
ROOT = pathlib.Path(__file__).resolve().parents[2]
AUDIO = ROOT / "fixtures" / "audio"
PARITY = ROOT / "fixtures" / "parity"
N_FRAMES = 187


def graph(classes, midend, backend):
    tf.compat.v1.reset_default_graph()
    x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, 96])
    is_training = tf.compat.v1.placeholder(tf.bool)
    with tf.name_scope("model"):
        logits, *_, penultimate = models.build_musicnn(x, is_training, classes, num_filt_midend=midend,
                                                       num_units_backend=backend)
    dense_relu = tf.compat.v1.get_default_graph().get_tensor_by_name("model/dense/Relu:0")
    return x, is_training, [dense_relu, penultimate, logits]


def run(session, x, is_training, outputs, batch):
    values = session.run(outputs, feed_dict={x: batch, is_training: False})
    return [np.ascontiguousarray(v, dtype=np.float32) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", type=pathlib.Path)
    args = parser.parse_args()
    clips = ["music_16k.wav"]
    if args.real:
        real = args.real.expanduser()
        config = json.loads((real / "config.json").read_text())
        x, is_training, outputs = graph(len(config["labels"]), 64, 200)
        tensors = {}
        with tf.compat.v1.Session() as session:
            tf.compat.v1.train.Saver().restore(session, str(real / "model"))
            for clip in clips:
                batch, _ = extractor.batch_data(str(AUDIO / clip), N_FRAMES, N_FRAMES)
                hidden, penultimate, logits = run(session, x, is_training, outputs, batch)
                name = clip.split(".")[0]
                tensors[f"{name}/patches"] = np.ascontiguousarray(batch, dtype=np.float32)
                tensors[f"{name}/hidden0"] = hidden
                tensors[f"{name}/penultimate"] = penultimate
                tensors[f"{name}/logits"] = logits
                top = np.argsort(-logits.mean(axis=0))[:5]
                print(clip, batch.shape, [config["labels"][i] for i in top])
        save_file(tensors, PARITY / "musicnn_real.safetensors",
                  metadata={"generator": "tools/parity/make_musicnn_fixtures.py", "tensorflow": tf.__version__})
        return

    tensors = {}
    for clip in clips:
        wave, rate = sf.read(AUDIO / clip, dtype="float32")
        if rate != 16000:
            continue
        _, spectrogram = extractor.batch_data(str(AUDIO / clip), 1, 1)
        name = clip.split("_")[0]
        tensors[f"{name}/waveform"] = wave
        tensors[f"{name}/log_mel"] = np.ascontiguousarray(spectrogram, dtype=np.float32)
    save_file(tensors, PARITY / "musicnn_frontend.safetensors",
              metadata={"generator": "tools/parity/make_musicnn_fixtures.py", "librosa": "0.9.2"})

    tf.compat.v1.set_random_seed(20261201)
    x, is_training, outputs = graph(5, 8, 16)
    out = PARITY / "musicnn_tiny"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261201)
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        # BatchNorm statistics and affine terms away from their identity initialisation, so the
        # test sees every one of them.
        for variable in tf.compat.v1.global_variables():
            shape = variable.shape.as_list()
            if "moving_variance" in variable.name or "gamma" in variable.name:
                session.run(variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32)))
            elif "moving_mean" in variable.name or "beta" in variable.name or "bias" in variable.name:
                session.run(variable.assign(rng.normal(0, 0.2, shape).astype(np.float32)))
        tf.compat.v1.train.Saver().save(session, str(out / "model"), write_meta_graph=False,
                                        write_state=False)
        batch, _ = extractor.batch_data(str(AUDIO / "music_16k.wav"), N_FRAMES, N_FRAMES)
        hidden, penultimate, logits = run(session, x, is_training, outputs, batch)
    labels = [f"tag {i}" for i in range(5)]
    (out / "config.json").write_text(json.dumps({"model_type": "musicnn", "dataset": "seeded",
                                                  "labels": labels}, indent=2) + "\n")
    save_file({"patches": np.ascontiguousarray(batch, dtype=np.float32), "hidden0": hidden, "penultimate": penultimate, "logits": logits},
              out / "expected.safetensors",
              metadata={"generator": "tools/parity/make_musicnn_fixtures.py", "tensorflow": tf.__version__})
    print("tiny", batch.shape, penultimate.shape, logits.shape)


if __name__ == "__main__":
    main()
