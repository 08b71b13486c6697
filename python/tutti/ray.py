"""Embedding a large corpus on Ray Data: tutti's encoder as a `map_batches` actor.

    import ray
    import tutti.ray

    ds = ray.data.read_json("manifest.jsonl")          # any dataset with a column of audio paths
    ds = ds.map_batches(
        tutti.ray.Embed,
        fn_constructor_kwargs={"model": "models/default", "threads": 2},
        batch_size=16,
        concurrency=2,        # actors (each loads the encoder once)
        num_cpus=2,           # CPUs Ray reserves per actor: give it what `threads` uses
    )
    ds.write_parquet("embeddings/")                    # or Embed(output_dir=...) writes <id>.npy

Each actor loads the encoder once and embeds every row's file exactly as `tutti embed` does
(same decoding, resampling, windows and pooling; the results are equal bit for bit, which the
tests check on a local two-worker Ray instance). Rows are embedded one at a time, unpadded, so a
batch's mix of durations costs nothing; `batch_size` only amortises Ray's per-batch overhead (a dataset with a duration column
can start the long files first with `ds.sort("seconds", descending=True)`).

Nothing here schedules anything: retries, spilling and placement are Ray's. With
`on_error="raise"` (default) a bad file fails the batch's task, which Ray retries
(`max_task_retries` / `max_restarts`) and then fails the job; with `on_error="record"` the row
gets an `error` message and an all-NaN embedding, and the job goes on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from . import AudioError, Encoder, ModelError

__all__ = ["Embed"]


def _item_id(path: str, id_value: Optional[Any]) -> str:
    if id_value is not None:
        return str(id_value)
    return Path(path).stem


class Embed:
    """A Ray Data actor (callable class): `batch[path_column]` holds audio paths (relative ones
    are taken from `root`); adds `embedding` ([dim] per row with pool="mean", a frames x dim
    array with pool="none", then also `timestamps`), and `error` with on_error="record". With
    `output_dir`, also writes `<id>.npy` per row like `tutti embed` (`id_column`, else the file's
    stem), and `<id>.timestamps.npy` for frames."""

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]", None] = None,
        *,
        threads: Optional[int] = None,
        precision: str = "f32",
        layer: Union[int, str] = "last",
        pool: str = "mean",
        path_column: str = "path",
        id_column: Optional[str] = None,
        root: Union[str, "os.PathLike[str]", None] = None,
        output_dir: Union[str, "os.PathLike[str]", None] = None,
        on_error: str = "raise",
    ):
        if pool not in ("mean", "none"):
            raise ValueError(f"pool={pool!r}: 'mean' or 'none'")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error={on_error!r}: 'raise' or 'record'")
        self.encoder = Encoder(model, threads=threads, precision=precision)
        self.layer, self.pool = layer, pool
        self.path_column, self.id_column = path_column, id_column
        self.root = None if root is None else Path(root)
        self.output_dir = None if output_dir is None else Path(output_dir)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.on_error = on_error

    def _path(self, value: Any) -> str:
        p = Path(str(value))
        if self.root is not None and not p.is_absolute():
            p = self.root / p
        return os.fspath(p)

    def _write(self, item_id: str, values: np.ndarray, timestamps: Optional[np.ndarray]) -> None:
        assert self.output_dir is not None
        target = self.output_dir / f"{item_id}.npy"
        # Written to a temporary name first: a killed worker leaves no partial file.
        tmp = target.with_suffix(".npy.tmp")
        with open(tmp, "wb") as f:
            np.save(f, values)
        os.replace(tmp, target)
        if timestamps is not None:
            ts = self.output_dir / f"{item_id}.timestamps.npy"
            tmp = ts.with_suffix(".npy.tmp")
            with open(tmp, "wb") as f:
                np.save(f, timestamps)
            os.replace(tmp, ts)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        paths = [self._path(v) for v in batch[self.path_column]]
        ids = (
            [None] * len(paths)
            if self.id_column is None
            else list(batch[self.id_column])
        )
        values, stamps, errors = [], [], []
        dim = self.encoder.info["hidden_size"]
        for path, id_value in zip(paths, ids):
            try:
                out = self.encoder.embed(path, layer=self.layer, pool=self.pool)
            except (AudioError, ModelError) as e:
                if self.on_error == "raise":
                    raise
                errors.append(str(e))
                shape = (dim,) if self.pool == "mean" else (0, dim)
                values.append(np.full(shape, np.nan, dtype=np.float32))
                stamps.append(np.zeros(0, dtype=np.float64))
                continue
            errors.append("")
            if self.pool == "none":
                values.append(out.values)
                stamps.append(out.timestamps)
            else:
                values.append(out)
            if self.output_dir is not None:
                self._write(
                    _item_id(path, id_value),
                    values[-1],
                    stamps[-1] if self.pool == "none" else None,
                )
        result: Dict[str, Any] = dict(batch)
        if self.pool == "mean" and values and all(v.shape == values[0].shape for v in values):
            result["embedding"] = np.stack(values)
        else:
            result["embedding"] = values
        if self.pool == "none":
            result["timestamps"] = stamps
        if self.on_error == "record":
            result["error"] = np.array(errors, dtype=object)
        return result

