//! GGUF (llama.cpp's model format, version 2 and 3): the header, the metadata key-value pairs,
//! the tensor infos and the aligned data section, read from a memory-mapped file with every
//! length and offset checked against the file's size; and dequantisation to f32 of the block
//! formats F32, F16, Q8_0, Q4_0 and Q4_1 (other formats are refused by name).
//!
//! Written from the format description in llama.cpp's `docs/gguf.md` and ggml's block layouts
//! (`ggml-common.h`): Q8_0 blocks are an f16 scale and 32 int8 values (`x = d * q`); Q4_0 an f16
//! scale and 16 bytes of 4-bit values (`x = d * (q - 8)`); Q4_1 an f16 scale, an f16 minimum and
//! 16 bytes (`x = d * q + m`); in the 4-bit formats element `j < 16` of a block is the low nibble of
//! byte `j` and element `j + 16` its high nibble. A tensor's dimensions are stored fastest first
//! (`ne[0]` is the row length), so its row-major shape is the reverse.
//!
//! Parsed by hand: the format is small and fixed, and the candidate crates either build a
//! framework's tensors (candle) or do not bounds-check a truncated file; tested against files the
//! `gguf` Python package writes (`tools/parity/make_gguf_fixtures.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;

/// A file that is not a valid GGUF file, or a tensor that cannot be read; names the file, and the
/// offset where it applies.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct GgufError {
    pub path: PathBuf,
    pub reason: String,
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The block formats (ggml types) a tensor may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Known to ggml but not dequantised here (named in the refusal).
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            other => Self::Other(other),
        }
    }

    /// ggml's name of a type id.
    pub fn name(self) -> String {
        let known = [
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (8, "Q8_0"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (25, "I16"),
            (26, "I32"),
            (27, "I64"),
            (28, "F64"),
            (29, "IQ1_M"),
            (30, "BF16"),
            (34, "TQ1_0"),
            (35, "TQ2_0"),
        ];
        let id = match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Other(id) => id,
        };
        known
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("type {id}"))
    }

    /// `(elements per block, bytes per block)`.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (the file's dimensions reversed).
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: usize,
    /// Bytes of data (0 for a format this reader cannot size).
    pub bytes: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    map: memmap2::Mmap,
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn fail(&self, what: &str) -> GgufError {
        GgufError {
            path: self.path.to_path_buf(),
            reason: format!(
                "{what} at offset {} (file of {} bytes)",
                self.at,
                self.bytes.len()
            ),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.fail(&format!("truncated: {what} needs {n} bytes")))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length or count, refused when it could not fit in the rest of the file (each counted
    /// item takes at least `min_item` bytes).
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, GgufError> {
        let at = self.at;
        let n = self.u64(what)?;
        let rest = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > rest {
            self.at = at;
            return Err(self.fail(&format!("{what} of {n} does not fit in the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(what, 1)?;
        let at = self.at;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            self.at = at;
            self.fail(&format!("{what} is not UTF-8"))
        })
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, GgufError> {
        let b = |c: &mut Self, n| c.take(n, "a metadata value");
        Ok(match kind {
            0 => Value::U8(b(self, 1)?[0]),
            1 => Value::I8(b(self, 1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            4 => Value::U32(u32::from_le_bytes(b(self, 4)?.try_into().expect("4"))),
            5 => Value::I32(i32::from_le_bytes(b(self, 4)?.try_into().expect("4"))),
            6 => Value::F32(f32::from_le_bytes(b(self, 4)?.try_into().expect("4"))),
            7 => match b(self, 1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(self.fail(&format!("a bool of value {other}"))),
            },
            8 => Value::String(self.string("a string")?),
            9 => {
                if depth > 4 {
                    return Err(self.fail("arrays nested deeper than 4"));
                }
                let inner = self.u32("an array's type")?;
                let n = self.count("an array's length", 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(b(self, 8)?.try_into().expect("8"))),
            11 => Value::I64(i64::from_le_bytes(b(self, 8)?.try_into().expect("8"))),
            12 => Value::F64(f64::from_le_bytes(b(self, 8)?.try_into().expect("8"))),
            other => return Err(self.fail(&format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let fail = |reason: String| GgufError {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        // SAFETY: read-only mapping of a model file; modifying it while open is a user error,
        // as for any memory-mapped model loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| fail(e.to_string()))?;
        let mut c = Cursor {
            bytes: &map,
            at: 0,
            path,
        };
        let magic = c.take(4, "the magic")?;
        if magic != b"GGUF" {
            return Err(fail(format!(
                "not a GGUF file (magic {magic:?} at offset 0)"
            )));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(fail(format!(
                "GGUF version {version} (this reader knows 2 and 3)"
            )));
        }
        let tensor_count = c.count("the tensor count", 24)?;
        let kv_count = c.count("the metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("a metadata key")?;
            let kind = c.u32("a metadata type")?;
            let value = c.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(fail(format!(
                        "general.alignment {v:?} is not a power of two"
                    )));
                }
            },
        };
        let mut infos = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("a tensor name")?;
            let dims = c.u32("a tensor's dimension count")? as usize;
            if dims == 0 || dims > 8 {
                return Err(c.fail(&format!("tensor {name}: {dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                shape.push(c.u64("a tensor dimension")? as usize);
            }
            shape.reverse();
            let dtype = GgmlType::from_id(c.u32("a tensor type")?);
            let offset = c.u64("a tensor offset")? as usize;
            infos.push((name, shape, dtype, offset));
        }
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, shape, dtype, offset) in infos {
            let elements = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| fail(format!("tensor {name}: shape {shape:?} overflows")))?;
            let bytes = match dtype.block() {
                Some((per, size)) => {
                    if elements % per != 0 {
                        return Err(fail(format!(
                            "tensor {name}: {elements} elements are not whole {} blocks",
                            dtype.name()
                        )));
                    }
                    elements / per * size
                }
                None => 0,
            };
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| fail(format!("tensor {name}: offset overflows")))?;
            if start % alignment != 0 {
                return Err(fail(format!(
                    "tensor {name}: data at offset {start} is not aligned to {alignment}"
                )));
            }
            if start.checked_add(bytes).is_none_or(|end| end > map.len()) {
                return Err(fail(format!(
                    "truncated: tensor {name} ({} x {:?}) needs bytes {start}..{} of a file of {}",
                    dtype.name(),
                    shape,
                    start + bytes,
                    map.len()
                )));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                dtype,
                offset: start,
                bytes,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            map,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's values as f32, row-major in [`TensorInfo::shape`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError {
            path: self.path.clone(),
            reason: format!("no tensor {name}"),
        })?;
        let data = &self.map[info.offset..info.offset + info.bytes];
        dequantize(info.dtype, data, info.elements()).map_err(|reason| GgufError {
            path: self.path.clone(),
            reason: format!("tensor {name}: {reason}"),
        })
    }
}

/// Dequantise `elements` values stored as `dtype` in `data`.
pub fn dequantize(dtype: GgmlType, data: &[u8], elements: usize) -> Result<Vec<f32>, String> {
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut out = Vec::with_capacity(elements);
    match dtype {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|b| h(b, 0))),
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = h(block, 0);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for block in data.chunks_exact(18) {
                let d = h(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as f32 - 8.0)));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as f32 - 8.0)));
            }
        }
        GgmlType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let (d, m) = (h(block, 0), h(block, 2));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Other(_) => {
            return Err(format!(
                "{} tensors are not supported (F32, F16, Q8_0, Q4_0 and Q4_1 are)",
                dtype.name()
            ));
        }
    }
    if out.len() != elements {
        return Err(format!("{} values decoded, {elements} expected", out.len()));
    }
    Ok(out)
}
