"""What the Python package costs against the Rust CLI, and what Ray Data gives on this machine
(issue 19). Run by scripts/bench_python.sh, which passes the CLI, the model and the clips.

1. The same clips, the same threads: `tutti embed MANIFEST` (one process: start, model load,
   every clip) against `tutti.Encoder(model)` + `enc.embed(path)` per clip in one Python process
   (import, load, every clip). Each is run `--repeats` times; the best wall time counts. The
   Python results are checked equal to the CLI's.
2. The cost of one more item: a 1 s clip embedded 51 times by one `tutti embed` process, less
   the same process with it once, per item; against one `enc.embed(path)` (and `enc.embed(array)`)
   call in Python.
3. Ray Data on a local instance: `map_batches(tutti.ray.Embed)` over the clips with one actor of
   `threads` threads, and with two actors of `threads / 2` each (the same cores), from
   `ray.data.from_items` to the last result (actor start-up included), twice.

Prints a JSON report (and writes it with `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def best(times):
    return min(times)


def write_wav(path, x):
    import wave

    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def cli_embed(tutti, model, manifest, threads, out):
    t = time.perf_counter()
    subprocess.run(
        [tutti, "--threads", str(threads), "--log", "warn", "embed", manifest, "-o", out,
         "--model", model, "--overwrite"],
        check=True,
    )
    return time.perf_counter() - t


def python_embed(model, paths, threads):
    """Wall time of a fresh interpreter that imports tutti, loads the encoder and embeds every
    path one call each (the interpreter's own start-up is measured separately and subtracted)."""
    code = (
        "import sys, time, json\n"
        "t = time.perf_counter()\n"
        "import tutti\n"
        "enc = tutti.Encoder(sys.argv[1], threads=int(sys.argv[2]))\n"
        "t_load = time.perf_counter() - t\n"
        "paths = sys.argv[3:]\n"
        "t1 = time.perf_counter()\n"
        "out = [enc.embed(p) for p in paths]\n"
        "t_embed = time.perf_counter() - t1\n"
        "print(json.dumps({'load': t_load, 'embed': t_embed, 'total': time.perf_counter() - t}))\n"
    )
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, model, str(threads), *paths], check=True,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    inner = json.loads(r.stdout.strip().splitlines()[-1])
    inner["wall"] = wall
    return inner


def interpreter_start():
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def ray_pass(ray, tutti_ray, model, paths, workers, threads_each, batch_size):
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(
        tutti_ray.Embed,
        fn_constructor_kwargs={"model": model, "threads": threads_each},
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=threads_each,
    )
    t = time.perf_counter()
    rows = ds.take_all()
    return time.perf_counter() - t, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tutti", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clips", required=True, help="a text file of audio paths, one per line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()

    import tutti

    paths = [l.strip() for l in Path(args.clips).read_text().splitlines() if l.strip()]
    audio_secs = sum(len(tutti.load_audio(p)[0]) / 16000.0 for p in paths)
    report = {
        "clips": len(paths),
        "audio_secs": audio_secs,
        "threads": args.threads,
        "model": args.model,
        "cpu": cpu_name(),
    }

    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "clips.jsonl")
        with open(manifest, "w") as f:
            for i, p in enumerate(paths):
                f.write(json.dumps({"audio": p, "id": f"c{i:05d}"}) + "\n")
        one = os.path.join(tmp, "one.jsonl")
        with open(one, "w") as f:
            f.write(json.dumps({"audio": paths[0], "id": "c00000"}) + "\n")
        out = os.path.join(tmp, "cli")
        # Warm the page cache and both code paths once.
        cli_embed(args.tutti, args.model, manifest, args.threads, out)
        python_embed(args.model, paths[:2], args.threads)

        cli = [cli_embed(args.tutti, args.model, manifest, args.threads, out) for _ in range(args.repeats)]
        cli_one = [cli_embed(args.tutti, args.model, one, args.threads, os.path.join(tmp, "cli1"))
                   for _ in range(args.repeats)]
        py = [python_embed(args.model, paths, args.threads) for _ in range(args.repeats)]
        py_one = [python_embed(args.model, paths[:1], args.threads) for _ in range(args.repeats)]
        start = best([interpreter_start() for _ in range(args.repeats)])
        py_best = min(py, key=lambda r: r["wall"])
        report["cli"] = {"all_clips_secs": best(cli), "one_clip_secs": best(cli_one)}
        report["python"] = {
            "all_clips_secs": py_best["wall"],
            "one_clip_secs": min(r["wall"] for r in py_one),
            "interpreter_start_secs": start,
            "import_and_load_secs": py_best["load"],
            "embed_loop_secs": py_best["embed"],
        }
        # Equal to the CLI's, clip by clip.
        enc = tutti.Encoder(args.model, threads=args.threads)
        worst = 0.0
        for i, p in enumerate(paths):
            mine = enc.embed(p)
            theirs = np.load(os.path.join(out, f"c{i:05d}.npy"))
            worst = max(worst, float(np.max(np.abs(mine - theirs))))
        report["python_vs_cli_max_abs_diff"] = worst

    # The fixed cost of one call: a 1 s clip embedded 51 times in one process, against once.
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "one_second.wav")
        x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
        write_wav(wav, x)
        n = 50
        many = os.path.join(tmp, "many.jsonl")
        with open(many, "w") as f:
            for i in range(n + 1):
                f.write(json.dumps({"audio": wav, "id": f"r{i:03d}"}) + "\n")
        single = os.path.join(tmp, "single.jsonl")
        with open(single, "w") as f:
            f.write(json.dumps({"audio": wav, "id": "r000"}) + "\n")
        t_many = best([cli_embed(args.tutti, args.model, many, args.threads, os.path.join(tmp, "m"))
                       for _ in range(args.repeats)])
        t_single = best([cli_embed(args.tutti, args.model, single, args.threads, os.path.join(tmp, "s"))
                         for _ in range(args.repeats)])
        enc = tutti.Encoder(args.model, threads=args.threads)
        enc.embed(wav)
        per_path, per_array = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(n):
                enc.embed(wav)
            per_path.append((time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n):
                enc.embed(x)
            per_array.append((time.perf_counter() - t) / n)
        report["one_second_clip"] = {
            "cli_per_item_secs": (t_many - t_single) / n,
            "python_per_call_path_secs": best(per_path),
            "python_per_call_array_secs": best(per_array),
        }

    if args.ray:
        import ray
        import tutti.ray as tutti_ray

        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ray_report = {}
        for workers in (1, 2):
            each = max(1, args.threads // workers)
            cold, rows = ray_pass(ray, tutti_ray, args.model, paths, workers, each, args.batch_size)
            warm, _ = ray_pass(ray, tutti_ray, args.model, paths, workers, each, args.batch_size)
            ray_report[f"{workers}_workers"] = {
                "threads_each": each,
                "secs": cold,
                "audio_secs_per_sec": audio_secs / cold,
                "second_pass_secs": warm,
                "second_pass_audio_secs_per_sec": audio_secs / warm,
                "rows": len(rows),
            }
        ray.shutdown()
        report["ray"] = ray_report

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
