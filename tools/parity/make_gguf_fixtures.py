"""Fixtures for tutti-lm's GGUF reader: a small GGUF file with one tensor of every block format
the shipped SmolLM2 file uses (F32, F16, Q8_0, Q4_1; Q4_0 too) and metadata of every value type,
written by the `gguf` package (llama.cpp's gguf-py, pinned), and the values `gguf.quants.dequantize`
gives for each tensor.

    /tmp/parity/bin/pip install gguf==0.17.1
    /tmp/parity/bin/python tools/parity/make_gguf_fixtures.py

Writes fixtures/parity/gguf/{blocks.gguf, expected.safetensors}.
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "gguf"
OUT.mkdir(parents=True, exist_ok=True)

rng = np.random.default_rng(7)
writer = gguf.GGUFWriter(str(OUT / "blocks.gguf"), arch="llama")
writer.add_uint32("test.u32", 4_000_000_000)
writer.add_int32("test.i32", -7)
writer.add_float32("test.f32", 0.25)
writer.add_bool("test.bool", True)
writer.add_string("test.string", "héllo, wörld 🎵")
writer.add_array("test.array_i32", [1, -2, 3])
writer.add_array("test.array_str", ["a", "bc", ""])
writer.add_uint64("test.u64", 2**40 + 3)
writer.add_float64("test.f64", -1.5e-3)
writer.add_uint8("test.u8", 200)
writer.add_int8("test.i8", -100)
writer.add_uint16("test.u16", 60000)
writer.add_int16("test.i16", -30000)
writer.add_int64("test.i64", -(2**40))

expected = {}
# Shapes in numpy order (rows, columns); GGUF stores the dimensions reversed (columns first).
for name, qtype, shape in [
    ("t.f32", Q.F32, (3, 40)),
    ("t.f16", Q.F16, (2, 64)),
    ("t.q8_0", Q.Q8_0, (4, 64)),
    ("t.q4_1", Q.Q4_1, (3, 96)),
    ("t.q4_0", Q.Q4_0, (2, 64)),
]:
    x = (rng.standard_normal(shape) * 0.7).astype(np.float32)
    if qtype == Q.F32:
        data, values = x, x
    elif qtype == Q.F16:
        data = x.astype(np.float16)
        values = data.astype(np.float32)
    else:
        data = gguf.quants.quantize(x, qtype)
        values = gguf.quants.dequantize(data, qtype).astype(np.float32)
    writer.add_tensor(name, data, raw_dtype=qtype)
    expected[name] = np.ascontiguousarray(values.reshape(shape))

writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
save_file(expected, str(OUT / "expected.safetensors"))
print("wrote", OUT, {k: v.shape for k, v in expected.items()})
