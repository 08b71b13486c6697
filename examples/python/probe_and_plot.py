"""tutti from Python, end to end: embed a folder, train a scikit-learn probe on a suite task, and
plot the clip embeddings of several tasks coloured by domain (PCA, and t-SNE when there are
enough clips). Written to read like a notebook: each step is a plain block.

    pip install ./python scikit-learn matplotlib
    tutti suite build --quick -o quick/          # or the standard suite of scripts/build_suite.sh
    python examples/python/probe_and_plot.py --suite quick/ --task quick-vowel -o out/

`--model` is a tutti model directory (default: tutti's default model). The suite's layout is
README "Benchmark": a folder per task with task.toml and train/validation/test JSONL manifests.
This is a quick look, not the benchmark: `tutti bench` is the measured protocol (standardised
features, MLP and kNN probes with model selection on the validation split).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

import tutti


def task_field(task_dir: Path, key: str) -> str:
    """One string field of task.toml (`domain`, `target`, ...)."""
    m = re.search(rf'^{key}\s*=\s*"([^"]*)"', (task_dir / "task.toml").read_text(), re.M)
    if not m:
        raise SystemExit(f"{task_dir / 'task.toml'}: no {key}")
    return m.group(1)


def segments(task_dir: Path, split: str):
    """(path, start, duration, label) of a clip-level multiclass task's split."""
    for line in (task_dir / f"{split}.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            yield task_dir / row["audio"], row.get("start"), row.get("duration"), row.get("label")


def embed_segments(enc: tutti.Encoder, rows) -> tuple[np.ndarray, list]:
    """Clip embeddings of manifest rows: whole files, or the [start, start + duration) cut."""
    vectors, labels = [], []
    for path, start, duration, label in rows:
        if start is None and duration is None:
            vectors.append(enc.embed(path))
        else:
            samples, rate = tutti.load_audio(path, sample_rate=enc.info["sample_rate"])
            a = int(round((start or 0.0) * rate))
            b = len(samples) if duration is None else a + int(round(duration * rate))
            vectors.append(enc.embed(samples[a:b], sample_rate=rate))
        labels.append(label)
    return np.stack(vectors), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", type=Path, required=True)
    ap.add_argument("--task", required=True, help="a clip-level multiclass task of the suite")
    ap.add_argument("--model", default=None)
    ap.add_argument("--folder", type=Path, default=None,
                    help="a folder of audio to embed first (default: the task's audio folder)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--per-task", type=int, default=40, help="clips per task in the plot")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    enc = tutti.Encoder(args.model, threads=args.threads)
    print(f"encoder: {enc!r}")

    # 1. Embed a folder: one vector per file, saved as <stem>.npy (what `tutti embed` writes).
    task_dir = args.suite / args.task
    folder = args.folder or task_dir / "audio"
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
    embeddings = enc.embed(files)
    (args.out / "folder").mkdir(exist_ok=True)
    for f, e in zip(files, embeddings):
        np.save(args.out / "folder" / f"{f.stem}.npy", e)
    print(f"1. embedded {len(files)} files of {folder} -> {args.out / 'folder'} ({embeddings[0].shape[0]}-d)")

    # 2. A scikit-learn probe on the task: standardised embeddings, logistic regression.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task_field(task_dir, "target") != "multiclass":
        raise SystemExit(f"{args.task}: this example probes multiclass tasks")
    x_train, y_train = embed_segments(enc, segments(task_dir, "train"))
    x_test, y_test = embed_segments(enc, segments(task_dir, "test"))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(x_train, y_train)
    accuracy = accuracy_score(y_test, probe.predict(x_test))
    chance = max(y_test.count(c) for c in set(y_test)) / len(y_test)
    print(f"2. probe on {args.task}: test accuracy {accuracy:.3f} "
          f"({len(y_train)} train / {len(y_test)} test clips; majority class {chance:.3f})")

    # 3. Clip embeddings of every clip-level task, coloured by domain: PCA and t-SNE.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    points, domains = [], []
    for t in sorted(p for p in args.suite.iterdir() if (p / "task.toml").is_file()):
        if task_field(t, "level") != "clip":
            continue
        rows = list(segments(t, "train"))[: args.per_task]
        x, _ = embed_segments(enc, rows)
        points.append(x)
        domains += [task_field(t, "domain")] * len(x)
    points = StandardScaler().fit_transform(np.concatenate(points))
    views = {"PCA": PCA(n_components=2, random_state=0).fit_transform(points)}
    if len(points) >= 30:
        perplexity = min(30.0, (len(points) - 1) / 3)
        views["t-SNE"] = TSNE(n_components=2, perplexity=perplexity, random_state=0,
                              init="pca").fit_transform(points)
    fig, axes = plt.subplots(1, len(views), figsize=(6 * len(views), 5), squeeze=False)
    colours = {"speech": "tab:blue", "sound": "tab:green", "music": "tab:red"}
    for ax, (name, xy) in zip(axes[0], views.items()):
        for d in sorted(set(domains)):
            keep = np.array([x == d for x in domains])
            ax.scatter(xy[keep, 0], xy[keep, 1], s=12, label=d, c=colours.get(d, "tab:gray"))
        ax.set_title(f"{name} of clip embeddings ({enc.info['name']})")
        ax.legend()
    fig.tight_layout()
    plot = args.out / "embeddings.png"
    fig.savefig(plot, dpi=100)
    summary = {"files": len(files), "task": args.task, "accuracy": accuracy, "majority": chance,
               "points": len(points), "views": list(views), "plot": str(plot)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"3. {', '.join(views)} of {len(points)} clips by domain -> {plot}")


if __name__ == "__main__":
    main()
