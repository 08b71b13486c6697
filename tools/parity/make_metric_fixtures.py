"""Metric fixtures: random labels and scores with ties, and scikit-learn's values for them.

    /tmp/parity/bin/pip install scikit-learn==1.5.2
    /tmp/parity/bin/python tools/parity/make_metric_fixtures.py

Writes fixtures/parity/metrics.safetensors: the inputs and the results, as f32.
"""

import pathlib

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, r2_score

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
    rng = np.random.default_rng(7)
    tensors = {}
    # Multiclass: 7 classes, one never predicted, noisy predictions.
    truth = rng.integers(0, 7, 200)
    predicted = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 6, 200))
    tensors["multiclass/truth"] = truth.astype(np.float32)
    tensors["multiclass/predicted"] = predicted.astype(np.float32)
    tensors["multiclass/accuracy"] = np.array([accuracy_score(truth, predicted)], np.float32)
    tensors["multiclass/macro_f1"] = np.array([f1_score(truth, predicted, average="macro")], np.float32)
    # Multilabel: 5 classes, scores quantised to 0.05 so that ties occur.
    positive = rng.random((150, 5)) < 0.3
    scores = np.clip(positive * 0.3 + rng.random((150, 5)) * 0.7, 0, 1)
    scores = np.round(scores * 20) / 20
    tensors["multilabel/positive"] = positive.astype(np.float32)
    tensors["multilabel/scores"] = scores.astype(np.float32)
    tensors["multilabel/map"] = np.array([average_precision_score(positive, scores, average="macro")], np.float32)
    tensors["multilabel/ap_per_class"] = average_precision_score(positive, scores, average=None).astype(np.float32)
    # Regression.
    y = rng.normal(10, 3, 120)
    y_hat = y + rng.normal(0, 1.5, 120)
    tensors["regression/truth"] = y.astype(np.float32)
    tensors["regression/predicted"] = y_hat.astype(np.float32)
    tensors["regression/r2"] = np.array([r2_score(y.astype(np.float32), y_hat.astype(np.float32))], np.float32)
    save_file(tensors, ROOT / "fixtures" / "parity" / "metrics.safetensors",
              metadata={"generator": "tools/parity/make_metric_fixtures.py", "scikit-learn": sklearn.__version__})
    print({k: v.shape for k, v in tensors.items()})


if __name__ == "__main__":
    main()
