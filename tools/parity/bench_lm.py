"""The language model side by side, same file, same token ids, same threads: tutti (`tutti lm
bench --json`), PyTorch (transformers loading the same GGUF, dequantised to f32, eager) and, when
`llama_cpp` (llama-cpp-python, tools/parity/requirements-llamacpp.txt) is importable, llama.cpp
on the GGUF as it is (Q4_1).

Measured: prefill of --prompt-tokens, decoding --new-tokens one by one with the KV cache, and the
forward + backward of a --train-tokens sequence whose middle --embedding-positions come from
embeddings, gradients for the inputs only (the frozen LM of the audio-LM training examples).

    /tmp/parity/bin/python tools/parity/bench_lm.py [--threads 2]

Needs the release binary (cargo build --release -p tutti-cli) and scripts/fetch_lm.sh.
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("TUTTI_HOME", Path.home() / ".cache" / "tutti"))
GGUF = HOME / "lm" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def tutti_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/tutti/target"))
    return Path(target) / "release" / "tutti"


def median_time(f, iterations):
    f()
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--train-tokens", type=int, default=64)
    ap.add_argument("--embedding-positions", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    out = subprocess.run(
        [str(tutti_binary()), "--threads", str(args.threads), "lm", "bench", "--model", str(GGUF),
         "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
         "--train-tokens", str(args.train_tokens), "--embedding-positions",
         str(args.embedding_positions), "--iterations", str(args.iterations), "--json"],
        check=True, capture_output=True, text=True,
    )
    t = json.loads(out.stdout)
    rows.append(("tutti (f32)", t["prefill_tokens_per_sec"], t["decode_tokens_per_sec"],
                 t["forward_backward_secs"], t["peak_rss_mib"]))

    model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, torch_dtype=torch.float32
    ).eval()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied (see make_smollm2_fixtures.py)
    for p in model.parameters():
        p.requires_grad_(False)
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % (vocab - 17) + 17 for i in range(args.prompt_tokens)]])

    def prefill():
        with torch.no_grad():
            model(ids, use_cache=True)

    def decode():
        with torch.no_grad():
            past = model(ids, use_cache=True).past_key_values
            t0 = time.perf_counter()
            nxt = ids[:, -1:]
            for _ in range(args.new_tokens):
                o = model(nxt, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = o.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t0

    n, e = args.train_tokens, args.embedding_positions
    embed = model.get_input_embeddings().weight
    seq = torch.tensor([(i * 7919 + 13) % (vocab - 17) + 17 for i in range(n)])
    targets = seq.clone()
    targets[: (n - e) // 2 + e] = -100

    def train():
        x = embed[seq].clone()
        x[(n - e) // 2:(n - e) // 2 + e] = 0.05
        x.requires_grad_(True)
        logits = model(inputs_embeds=x[None]).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], ignore_index=-100)
        loss.backward()

    pt_prefill = median_time(prefill, args.iterations)
    pt_decode = statistics.median(decode() for _ in range(3))
    pt_train = median_time(train, args.iterations)
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("PyTorch eager (f32)", args.prompt_tokens / pt_prefill,
                 args.new_tokens / pt_decode, pt_train, rss))

    try:
        from llama_cpp import Llama
    except ImportError:
        rows.append(("llama.cpp", None, None, None, None))
    else:
        llm = Llama(model_path=str(GGUF), n_threads=args.threads, n_ctx=512, verbose=False)
        toks = ids[0].tolist()

        def cpp_prefill():
            llm.reset()
            llm.eval(toks)

        def cpp_decode():
            llm.reset()
            llm.eval(toks)
            t0 = time.perf_counter()
            for _ in range(args.new_tokens):
                llm.eval([toks[-1]])
            return time.perf_counter() - t0

        rows.append(("llama.cpp (Q4_1 as stored)", args.prompt_tokens / median_time(cpp_prefill, args.iterations),
                     args.new_tokens / statistics.median(cpp_decode() for _ in range(3)), None, None))

    print(f"{cpu_model()}, {args.threads} threads; prefill {args.prompt_tokens} tokens, decode "
          f"{args.new_tokens}, forward+backward {n} tokens ({e} from embeddings)")
    print("| engine | prefill tokens/s | decode tokens/s | forward+backward ms | peak MiB |")
    print("|---|---|---|---|---|")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    for name, p, d, tr, m in rows:
        print(f"| {name} | {fmt(p, '.0f')} | {fmt(d, '.1f')} | "
              f"{fmt(None if tr is None else tr * 1e3, '.0f')} | {fmt(m, '.0f')} |")


if __name__ == "__main__":
    main()
