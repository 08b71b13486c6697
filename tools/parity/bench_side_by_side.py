"""tutti (Rust: its fast CPU engine, and its burn implementation) and the same architecture in PyTorch,
side by side, same weights.

    /tmp/parity/bin/python tools/parity/bench_side_by_side.py [--presets small base] [--secs 10]

For each preset: `tutti init` writes a model; PyTorch loads the same model.safetensors
(tutti_reference.py); both embed the same synthetic clip and the last hidden states are compared
(so the timing compares the same computation); then each times its forward pass on a batch of one
10 s clip (median of --iterations, after a warm-up) with --threads threads. The PyTorch side runs
as users would deploy it: eager, torch.compile (inductor) and ONNX Runtime (the reference exported
to ONNX), all on the same weights and input; in bf16 (autocast) where the CPU has AVX512-BF16 or
AMX, beside tutti's --precision bf16; in int8 (dynamic quantisation) beside tutti's int8. Front
ends too: torchaudio's Kaldi fbank and transformers' WhisperFeatureExtractor against tutti's.
The machine facts (CPU, features, tutti's kernel path per op) head the output.
Needs the release binary: cargo build --release -p tutti-cli.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

import tutti_reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tutti_binary() -> pathlib.Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(pathlib.Path.home() / ".cache/tutti/target"))
    return pathlib.Path(target) / "release" / "tutti"


def synthetic(samples: int) -> np.ndarray:
    # The same signal `tutti bench speed` uses.
    i = np.arange(samples, dtype=np.float64)
    noise = ((i.astype(np.int64) * 7919) % 1000) / 1000.0 - 0.5
    return (0.3 * np.sin(i * 0.031) + 0.01 * noise).astype(np.float32)


def cpu_facts() -> tuple[str, list[str]]:
    """The CPU's model name and the vector / matrix features that decide kernel paths."""
    model, flags = "unknown", []
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "amx_int8"]
    return model, [f for f in wanted if f in flags]


def print_machine(args, tutti_machine: dict) -> None:
    model, flags = cpu_facts()
    print(f"machine: {model}; {os.cpu_count()} cores, {args.threads} threads; features: {' '.join(flags) or 'none'}")
    print(f"PyTorch {torch.__version__} (oneDNN {torch.backends.mkldnn.is_available()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}), ONNX Runtime {onnxruntime.__version__}")
    paths = tutti_machine.get("kernel_paths", {})
    print("tutti kernel paths: " + "; ".join(f"{op} = {path}" for op, path in paths.items()))


class LastHidden(torch.nn.Module):
    """The encoder's last hidden state only (what `tutti embed` returns by default)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, feats):
        hidden, _ = self.model(feats)
        return hidden[-1]


def onnx_session(model, feats, path: pathlib.Path, threads: int):
    torch.onnx.export(LastHidden(model), (feats,), str(path), input_names=["feats"], output_names=["hidden"],
                      opset_version=17, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def median_time(fn, iterations: int) -> float:
    fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--secs", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--train", action="store_true",
                        help="time distillation steps (forward, backward, AdamW) at --train-batch instead")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--with-burn", action="store_true",
                        help="with --train, also time the burn-autodiff step (tutti's reference engine)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first call compiles C++)")
    args = parser.parse_args()
    if args.train:
        return train_side_by_side(args)
    torch.set_num_threads(args.threads)
    binary = tutti_binary()
    wave = synthetic(int(args.secs * 16000))
    rows = []
    int8_rows = []
    bf16_rows = []
    machine = {}
    cpu_flags = cpu_facts()[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        wav = tmp / "clip.wav"
        sf.write(wav, wave, 16000, subtype="FLOAT")
        for preset in args.presets:
            model_dir = tmp / preset
            subprocess.run([binary, "--log", "error", "init", "--preset", preset, "-o", model_dir], check=True)
            model = ref.load(model_dir)
            feats = ref.fbank(torch.from_numpy(wave), model.cfg)[None]
            with torch.no_grad():
                hidden, _ = model(feats)
            out = tmp / f"emb_{preset}"
            subprocess.run([binary, "--log", "error", "embed", wav, "-o", out, "--model", model_dir,
                            "--pool", "none", "--window-secs", "600"], check=True)
            ours = np.load(out / "clip.npy")
            difference = float(np.abs(ours - hidden[-1][0].numpy()).max())
            def tutti_speed(engine, precision="f32"):
                return json.loads(subprocess.run(
                    [binary, "--threads", str(args.threads), "--log", "error", "bench", "speed", "--model", model_dir,
                     "--secs", str(args.secs), "--iterations", str(args.iterations), "--engine", engine,
                     "--precision", precision],
                    check=True, capture_output=True, text=True).stdout)

            report = tutti_speed("fast")
            machine = report["machine"]
            burn_report = tutti_speed("burn")
            reference_last = hidden[-1].numpy()
            tutti_bf16 = machine.get("kernel_paths", {}).get("bf16_products", "unavailable") != "unavailable"
            cpu_bf16 = any(f in cpu_flags for f in ("avx512_bf16", "amx_bf16"))
            if cpu_bf16:
                def autocast_forward():
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                        return model(feats)[0][-1]
                autocast_error = relative_error(autocast_forward().float().numpy(), reference_last)
                autocast_secs = median_time(autocast_forward, args.iterations)
            else:
                autocast_secs = autocast_error = float("nan")
            if tutti_bf16:
                bf16_report = tutti_speed("fast", "bf16")
                bf16_rows.append((preset, autocast_secs, autocast_error, bf16_report["forward_secs_median"],
                                  bf16_report["accuracy_vs_f32"]["relative_error_last_layer"],
                                  report["forward_secs_median"]))
            elif cpu_bf16:
                bf16_rows.append((preset, autocast_secs, autocast_error, float("nan"), float("nan"),
                                  report["forward_secs_median"]))
            session = onnx_session(model, feats, tmp / f"{preset}.onnx", args.threads)
            ort_out = session.run(None, {"feats": feats.numpy()})[0]
            ort_diff = float(np.abs(ort_out - reference_last).max())
            ort_secs = median_time(lambda: session.run(None, {"feats": feats.numpy()}), args.iterations)
            if args.no_compile:
                compile_secs = compile_diff = float("nan")
            else:
                compiled = torch.compile(LastHidden(model))
                with torch.no_grad():
                    compile_diff = float(np.abs(compiled(feats).numpy() - reference_last).max())

                def compiled_forward():
                    with torch.no_grad():
                        compiled(feats)

                compile_secs = median_time(compiled_forward, args.iterations)
            int8_report = tutti_speed("fast", "int8")
            # PyTorch's own int8 mode for the same layers: dynamic quantisation of every Linear
            # (int8 weights, activations quantised per call; fbgemm on x86).
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            with torch.no_grad():
                q_hidden, _ = quantized(feats)
            torch_int8_error = float(np.linalg.norm(q_hidden[-1].numpy() - reference_last) / np.linalg.norm(reference_last))

            def torch_int8_forward():
                with torch.no_grad():
                    quantized(feats)

            torch_int8_secs = median_time(torch_int8_forward, args.iterations)
            int8_rows.append((preset, torch_int8_secs, int8_report["forward_secs_median"], torch_int8_error,
                              int8_report["accuracy_vs_f32"]["relative_error_last_layer"]))

            def torch_forward():
                with torch.no_grad():
                    model(feats)

            torch_secs = median_time(torch_forward, args.iterations)
            gflop = ref.flops(model.cfg, feats.shape[1]) / 1e9
            rows.append((preset, torch_secs, compile_secs, ort_secs, report["forward_secs_median"],
                         burn_report["forward_secs_median"], gflop, difference, compile_diff, ort_diff))

        w = torch.from_numpy(wave)
        cfg = json.loads((tmp / args.presets[0] / "config.json").read_text())
        torchaudio_fbank = median_time(lambda: ref.fbank(w, cfg), 20)
        extractor = WhisperFeatureExtractor()
        hf_whisper = median_time(lambda: extractor(wave, sampling_rate=16000, return_tensors="np"), 10)

    print_machine(args, machine)
    print(f"f32 forward, clip {args.secs:.0f} s, batch 1, median of {args.iterations}: ms (GFLOP/s)")
    print("tutti = the fast engine (what embed and bench use on the CPU); burn = tutti's burn implementation;")
    print("vs fastest = the fastest PyTorch-side time / tutti's; |diff| = largest difference from eager PyTorch")
    print(f"{'model':<6} {'GFLOP':>6} {'eager':>14} {'torch.compile':>14} {'ONNX Runtime':>14} {'tutti':>14} {'burn':>7} "
          f"{'vs fastest':>10} {'|diff| tutti':>12} {'compile':>8} {'ORT':>8}")
    cell = lambda t, g: f"{t * 1e3:.1f} ({g / t:.0f})" if t == t else "-"
    for preset, t_eager, t_compile, t_ort, t_tutti, t_burn, gflop, diff, c_diff, o_diff in rows:
        fastest = min(t for t in (t_eager, t_compile, t_ort) if t == t)
        print(f"{preset:<6} {gflop:>6.1f} {cell(t_eager, gflop):>14} {cell(t_compile, gflop):>14} {cell(t_ort, gflop):>14} "
              f"{cell(t_tutti, gflop):>14} {t_burn * 1e3:>7.0f} {fastest / t_tutti:>9.2f}x {diff:>12.1e} {c_diff:>8.1e} {o_diff:>8.1e}")
    if bf16_rows:
        print("bf16 (reduced precision): PyTorch eager under torch.autocast(bfloat16) vs tutti --precision bf16;")
        print("error = relative L2 error of the last hidden state against the same engine in f32")
        print(f"{'model':<8} {'PyTorch ms':>11} {'error':>8} {'tutti ms':>9} {'error':>8} {'vs PyTorch':>11} {'vs tutti f32':>13}")
        for preset, t_torch, e_torch, t_tutti, e_tutti, t_f32 in bf16_rows:
            print(f"{preset:<8} {t_torch * 1e3:>11.1f} {e_torch:>8.4f} {t_tutti * 1e3:>9.1f} {e_tutti:>8.4f} "
                  f"{t_torch / t_tutti:>10.2f}x {t_f32 / t_tutti:>12.2f}x")
    else:
        print("bf16: this CPU has neither AVX512-BF16 nor AMX (both sides skip it)")
    print("int8 (reduced precision, not the f32 target): PyTorch dynamic quantisation of nn.Linear vs tutti --precision int8;")
    print("error = relative L2 error of the last hidden state against the same engine in f32")
    print(f"{'model':<8} {'PyTorch ms':>11} {'tutti ms':>9} {'speed-up':>9} {'PyTorch error':>14} {'tutti error':>12}")
    for preset, t_torch, t_tutti, e_torch, e_tutti in int8_rows:
        print(f"{preset:<8} {t_torch * 1e3:>11.1f} {t_tutti * 1e3:>9.1f} {t_torch / t_tutti:>8.2f}x {e_torch:>14.4f} {e_tutti:>12.4f}")
    print(f"{'fbank':<8} {torchaudio_fbank * 1e3:>11.2f} {report['fbank_secs_median'] * 1e3:>9.2f} "
          f"{torchaudio_fbank / report['fbank_secs_median']:>8.1f}x   (torchaudio.compliance.kaldi.fbank)")
    print(f"{'whisper':<8} {hf_whisper * 1e3:>11.2f} {report['whisper_mel_secs_median'] * 1e3:>9.2f} "
          f"{hf_whisper / report['whisper_mel_secs_median']:>8.1f}x   (WhisperFeatureExtractor, 30 s window)")


class Head(torch.nn.Module):
    """FC-ReLU-FC prediction head (tutti_distill::heads::PredictionHead)."""

    def __init__(self, student_dim: int, hidden: int, teacher_dim: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(student_dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, teacher_dim)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def distillation_loss(prediction, target):
    """(1/D)|z_hat - z|_1 - log sigmoid(cos(z_hat, z)), mean over frames (tutti_distill::loss)."""
    l1 = (prediction - target).abs().mean(-1)
    cosine = torch.nn.functional.cosine_similarity(prediction, target, dim=-1, eps=1e-8)
    return (l1 - torch.nn.functional.logsigmoid(cosine)).mean()


def train_side_by_side(args) -> None:
    """The step `tutti bench speed --train` times, in PyTorch: one 768-d teacher at the student's
    rate, K = 4 distilled FFN outputs (layer_pairs(L, 12, 4)), FC-ReLU-FC heads of width 2 x D,
    AdamW (weight decay 0.01, lr 1e-4), fixed random targets, a batch of identical 10 s clips."""
    torch.set_num_threads(args.threads)
    binary = tutti_binary()
    wave = synthetic(int(args.secs * 16000))
    rows = []
    bf16_rows = []
    cpu_flags = cpu_facts()[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for preset in args.presets:
            model_dir = tmp / preset
            subprocess.run([binary, "--log", "error", "init", "--preset", preset, "-o", model_dir], check=True)
            model = ref.load(model_dir).train()
            cfg = model.cfg
            layers = [k * cfg["num_hidden_layers"] // 4 for k in range(1, 5)]
            d = cfg["hidden_size"]
            heads = torch.nn.ModuleList(Head(d, 2 * d, 768) for _ in layers)
            feats = ref.fbank(torch.from_numpy(wave), cfg)[None].repeat(args.train_batch, 1, 1)
            with torch.no_grad():
                frames = model(feats[:1])[0][0].shape[1]
            targets = [torch.randn(args.train_batch, frames, 768) for _ in layers]
            optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=1e-4, weight_decay=0.01)

            params = list(model.parameters()) + list(heads.parameters())

            def loss_of():
                _, ffns = model(feats)
                return sum(distillation_loss(head(ffns[l - 1]), t) for head, l, t in zip(heads, layers, targets)) / len(layers)

            def step(bf16=False):
                optimizer.zero_grad(set_to_none=True)
                if bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = loss_of()
                else:
                    loss = loss_of()
                loss.float().backward()
                optimizer.step()

            def gradients(bf16):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_of()
                loss.float().backward()
                return torch.cat([p.grad.flatten() for p in params if p.grad is not None])

            cpu_bf16 = any(f in cpu_flags for f in ("avx512_bf16", "amx_bf16"))
            if cpu_bf16:
                # Autocast's cost on one batch, from the same parameters (before any update).
                g32, g16 = gradients(False), gradients(True)
                autocast_grad_error = float((g16 - g32).norm() / g32.norm())
            torch_secs = median_time(step, args.iterations)
            autocast_secs = median_time(lambda: step(True), args.iterations) if cpu_bf16 else float("nan")

            def tutti_step(engine, precision="f32"):
                report = json.loads(subprocess.run(
                    [binary, "--threads", str(args.threads), "--log", "error", "bench", "speed", "--model", model_dir,
                     "--secs", str(args.secs), "--batch", str(args.train_batch), "--iterations", str(args.iterations),
                     "--train", "--engine", engine, "--precision", precision], check=True, capture_output=True,
                    text=True).stdout)
                return report

            burn_secs = tutti_step("burn")["step_secs_median"] if args.with_burn else float("nan")
            fast = tutti_step("fast")
            rows.append((preset, torch_secs, fast["step_secs_median"], burn_secs))
            tutti_bf16 = fast["machine"].get("kernel_paths", {}).get("bf16_products", "unavailable") != "unavailable"
            if cpu_bf16 and tutti_bf16:
                mixed = tutti_step("fast", "bf16")
                bf16_rows.append((preset, autocast_secs, autocast_grad_error, mixed["step_secs_median"],
                                  mixed["accuracy_vs_f32"]["gradient_relative_error"], fast["step_secs_median"]))
    model_name, flags = cpu_facts()
    print(f"machine: {model_name}; {args.threads} threads; features: {' '.join(flags) or 'none'}")
    print(f"torch {torch.__version__}, batch {args.train_batch} x {args.secs:.0f} s")
    print(f"{'model':<8} {'PyTorch step ms':>16} {'tutti step ms':>14} {'speed-up':>9} {'burn-autodiff ms':>17}")
    for preset, t_torch, t_tutti, t_burn in rows:
        print(f"{preset:<8} {t_torch * 1e3:>16.0f} {t_tutti * 1e3:>14.0f} {t_torch / t_tutti:>8.2f}x {t_burn * 1e3:>17.0f}")
    if bf16_rows:
        print("mixed precision (bf16): PyTorch under torch.autocast(bfloat16) vs tutti --train --precision bf16;")
        print("gradient error: |g - g_f32| / |g_f32| over every parameter, one batch, same parameters")
        print(f"{'model':<8} {'autocast ms':>12} {'grad err':>9} {'tutti bf16 ms':>14} {'grad err':>9} "
              f"{'vs autocast':>12} {'vs tutti f32':>13}")
        for preset, t_auto, e_auto, t_mixed, e_mixed, t_f32 in bf16_rows:
            print(f"{preset:<8} {t_auto * 1e3:>12.0f} {e_auto:>9.4f} {t_mixed * 1e3:>14.0f} {e_mixed:>9.4f} "
                  f"{t_auto / t_mixed:>11.2f}x {t_f32 / t_mixed:>12.2f}x")
    elif not any(f in cpu_flags for f in ("avx512_bf16", "amx_bf16")):
        print("mixed precision (bf16): skipped, this CPU has neither AVX512-BF16 nor AMX-BF16")


if __name__ == "__main__":
    main()
