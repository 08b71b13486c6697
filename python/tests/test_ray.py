"""tutti.ray.Embed on a local Ray instance with two workers: every row equals `tutti embed`'s
result for the same file, bit for bit, in the dataset and in the npy files it writes; a bad file
fails the job, or is recorded and skipped with on_error="record"."""

import json
import os
import subprocess
import wave

import numpy as np
import pytest

from conftest import MUSIC, SPEECH, cli

if os.environ.get("TUTTI_REQUIRE_RAY"):
    import ray  # scripts/test.sh installs it: a missing Ray is a failure there, not a skip
else:
    ray = pytest.importorskip("ray")

import tutti.ray  # noqa: E402


def write_tone(path, seconds, freq):
    t = np.arange(int(16000 * seconds)) / 16000
    x = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(x.tobytes())


@pytest.fixture(scope="module")
def local_ray():
    # A nearly full disk (Ray refuses to create objects above 95 % by default) must not stall
    # a test whose objects are a few kilobytes.
    # Four logical CPUs on the two cores: two for the encoder actors, the rest for Ray Data's
    # read tasks (with only two, the actors hold both and the read waits forever).
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"local_fs_capacity_threshold": 0.999})
    yield
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    files = [SPEECH, MUSIC]
    for i, (secs, freq) in enumerate([(0.7, 220.0), (2.5, 440.0), (1.2, 880.0), (4.0, 330.0)]):
        p = tmp_path / f"tone{i}.wav"
        write_tone(p, secs, freq)
        files.append(p)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(f)}) + "\n" for f in files))
    return files, manifest


def test_two_workers_equal_the_cli(local_ray, corpus, model_dir, tmp_path):
    files, manifest = corpus
    out = tmp_path / "ray-npy"
    ds = ray.data.read_json(str(manifest)).map_batches(
        tutti.ray.Embed,
        fn_constructor_kwargs={"model": str(model_dir), "threads": 1, "output_dir": str(out)},
        batch_size=2,
        concurrency=2,
        num_cpus=1,
    )
    rows = ds.take_all()
    assert len(rows) == len(files)
    want_dir = tmp_path / "cli"
    subprocess.run([cli(), "--threads", "1", "embed", *map(str, files), "-o", str(want_dir),
                    "--model", str(model_dir)], check=True, capture_output=True)
    by_path = {r["path"]: r["embedding"] for r in rows}
    for f in files:
        want = np.load(want_dir / f"{f.stem}.npy")
        np.testing.assert_array_equal(np.asarray(by_path[str(f)]), want)
        np.testing.assert_array_equal(np.load(out / f"{f.stem}.npy"), want)
    # Negative control: different files give different embeddings.
    assert not np.array_equal(by_path[str(files[0])], by_path[str(files[1])])


def test_frames_and_bad_files(local_ray, corpus, model_dir, tmp_path):
    files, manifest = corpus
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEnot really" * 4)
    manifest.write_text(manifest.read_text() + json.dumps({"path": str(bad)}) + "\n")
    kwargs = {"model": str(model_dir), "threads": 1, "pool": "none", "on_error": "record"}
    rows = ray.data.read_json(str(manifest)).map_batches(
        tutti.ray.Embed, fn_constructor_kwargs=kwargs, batch_size=3, concurrency=2, num_cpus=1
    ).take_all()
    by_path = {r["path"]: r for r in rows}
    assert "broken.wav" in by_path[str(bad)]["error"]
    frames = tutti.Encoder(model_dir, threads=1).embed(SPEECH, pool="none")
    got = by_path[str(SPEECH)]
    assert got["error"] == ""
    np.testing.assert_array_equal(np.asarray(got["embedding"]), frames.values)
    np.testing.assert_array_equal(np.asarray(got["timestamps"]), frames.timestamps)
    # on_error="raise" (the default) fails the job and names the file.
    with pytest.raises(Exception, match="broken.wav"):
        ray.data.read_json(str(manifest)).map_batches(
            tutti.ray.Embed, fn_constructor_kwargs={"model": str(model_dir), "threads": 1},
            batch_size=3, concurrency=2, num_cpus=1,
        ).take_all()
