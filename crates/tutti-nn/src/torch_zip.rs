//! A small reader for PyTorch zip checkpoints (`torch.save`, PyTorch 1.6+) whose state dict is
//! not the root object, e.g. `torch.save((model.state_dict(), extra), path)`.
//!
//! burn-store's PyTorch reader needs a dictionary at the root (or under a top-level key of a root
//! dictionary); aiSFX's `checkpoint.pth` is a tuple `(OrderedDict, dict)`. This module runs the
//! pickle (the opcodes `torch.save` emits, protocols 2 to 5) into plain values, resolves
//! persistent ids to the archive's `data/N` storages and `torch._utils._rebuild_tensor_v2` calls
//! to tensors, then walks a path of tuple/list indices and dictionary keys to the state dict.
//! Anything else a pickle may call is kept as an opaque value and never executed.
//!
//! Limits: every length and index is checked against what the file holds; a tensor's extent must
//! lie inside its storage.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Element types of PyTorch storages this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64 | Self::F16 | Self::BF16)
    }
}

/// One tensor of the checkpoint, contiguous (row-major), as stored (little-endian bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub dtype: TorchDtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl TorchTensor {
    /// The values as f32 (floating dtypes only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let chunks = self.bytes.chunks_exact(self.dtype.size());
        Some(match self.dtype {
            TorchDtype::F32 => chunks
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            TorchDtype::F64 => chunks
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            TorchDtype::F16 => chunks
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            TorchDtype::BF16 => chunks
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            _ => return None,
        })
    }
}

/// An IEEE binary16 value widened to f32.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exponent = ((h >> 10) & 0x1f) as i32;
    let mantissa = (h & 0x3ff) as f32;
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        31 if mantissa == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A step of the path from the pickle's root to the state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Element of a tuple or list.
    Index(usize),
    /// Entry of a dictionary.
    Key(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TorchZipError {
    pub path: PathBuf,
    pub reason: String,
}

/// Read the state dict found at `steps` from the root of the zip checkpoint at `path`: every
/// tensor under it, named by its key (nested dictionaries joined with '.'). Non-tensor entries
/// are ignored; a `steps` that does not lead to a dictionary is an error naming what it found.
pub fn read_state_dict(
    path: &Path,
    steps: &[Step],
) -> Result<Vec<(String, TorchTensor)>, TorchZipError> {
    let fail = |reason: String| TorchZipError {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| fail(format!("not a PyTorch zip checkpoint: {e}")))?;
    let names = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| fail(format!("unreadable archive directory: {e}")))?;
    let pickle_name = names
        .into_iter()
        .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or_else(|| fail("no data.pkl in the archive".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut archive, &pickle_name, 100 << 20).map_err(&fail)?;
    let root = Unpickler::new(&pickle).run().map_err(&fail)?;
    let mut node = &root;
    for step in steps {
        node = match (step, node) {
            (Step::Index(i), Value::Tuple(items) | Value::List(items)) => items
                .get(*i)
                .ok_or_else(|| fail(format!("index {i} past a sequence of {}", items.len())))?,
            (Step::Key(k), Value::Dict(entries)) => entries
                .iter()
                .find(|(key, _)| matches!(key, Value::Str(s) if s == k))
                .map(|(_, v)| v)
                .ok_or_else(|| fail(format!("no key '{k}'")))?,
            (step, other) => {
                return Err(fail(format!("cannot take {step:?} of {}", other.kind())));
            }
        };
    }
    let Value::Dict(_) = node else {
        return Err(fail(format!(
            "the value at {steps:?} is {}, not a state dict",
            node.kind()
        )));
    };
    let mut refs = Vec::new();
    collect_tensors(node, "", &mut refs);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, tensor) in refs {
        if !storages.contains_key(&tensor.storage.key) {
            let entry = format!("{prefix}data/{}", tensor.storage.key);
            let limit = tensor
                .storage
                .numel
                .saturating_mul(tensor.storage.dtype.size());
            let bytes = read_entry(&mut archive, &entry, limit as u64).map_err(&fail)?;
            if bytes.len() != limit {
                return Err(fail(format!(
                    "storage {entry} holds {} bytes, its tensor declares {limit}",
                    bytes.len()
                )));
            }
            storages.insert(tensor.storage.key.clone(), bytes);
        }
        let storage = &storages[&tensor.storage.key];
        let bytes = gather(storage, tensor).map_err(|e| fail(format!("{name}: {e}")))?;
        out.push((
            name,
            TorchTensor {
                dtype: tensor.storage.dtype,
                shape: tensor.shape.clone(),
                bytes,
            },
        ));
    }
    Ok(out)
}

fn read_entry<R: std::io::Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let entry = archive
        .by_name(name)
        .map_err(|e| format!("entry {name}: {e}"))?;
    if entry.size() > limit {
        return Err(format!(
            "entry {name} is {} bytes, more than the {limit} expected",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("entry {name}: {e}"))?;
    Ok(bytes)
}

fn collect_tensors<'a>(node: &'a Value, prefix: &str, out: &mut Vec<(String, &'a TensorRef)>) {
    if let Value::Dict(entries) = node {
        for (key, value) in entries {
            let Value::Str(key) = key else { continue };
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Tensor(t) => out.push((name, t)),
                Value::Dict(_) => collect_tensors(value, &name, out),
                _ => {}
            }
        }
    }
}

/// Copy a (possibly strided) view out of its storage into contiguous bytes.
fn gather(storage: &[u8], tensor: &TensorRef) -> Result<Vec<u8>, String> {
    let size = tensor.storage.dtype.size();
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    if tensor.stride.len() != tensor.shape.len() {
        return Err("shape and stride ranks differ".into());
    }
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The largest element index the view touches must lie inside the storage.
    let last = tensor
        .shape
        .iter()
        .zip(&tensor.stride)
        .try_fold(tensor.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .ok_or("extent overflows")?;
    if last >= tensor.storage.numel {
        return Err(format!(
            "view reaches element {last} of a storage of {}",
            tensor.storage.numel
        ));
    }
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; tensor.shape.len()];
    for _ in 0..numel {
        let element = tensor.offset
            + index
                .iter()
                .zip(&tensor.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[element * size..(element + 1) * size]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < tensor.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct StorageRef {
    dtype: TorchDtype,
    key: String,
    numel: usize,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Value {
    Mark,
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The result of a call this reader does not interpret, named by its callable.
    Opaque(String),
}

impl Value {
    fn kind(&self) -> String {
        match self {
            Value::Mark => "a mark".into(),
            Value::None => "None".into(),
            Value::Bool => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(m, n) => format!("the global {m}.{n}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Opaque(what) => format!("an object made by {what}"),
        }
    }

    fn as_usize(&self, what: &str) -> Result<usize, String> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(format!(
                "{what}: expected a non-negative int, found {}",
                other.kind()
            )),
        }
    }

    fn as_dims(&self, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Value::Tuple(items) | Value::List(items) => {
                items.iter().map(|v| v.as_usize(what)).collect()
            }
            other => Err(format!("{what}: expected a tuple, found {}", other.kind())),
        }
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("pickle truncated at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle truncated in a text line")?;
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| "a text line is not UTF-8".to_string())?
            .to_string();
        self.pos += end + 1;
        Ok(text)
    }

    fn utf8(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(s.to_string()))
            .map_err(|_| "a string is not UTF-8".to_string())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn memo_get(&self, index: u32) -> Result<Value, String> {
        self.memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("pickle memo {index} missing"))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), String> {
        let top = self.stack.last().ok_or("pickle stack underflow")?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return Err(format!("pickle protocol {protocol} is not supported"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: only a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(bytes);
                    if n > 0 && bytes[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string too long")?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut dict = Value::Dict(Vec::new());
                    set_items(&mut dict, items)?;
                    self.stack.push(dict);
                }
                b'a' => {
                    let item = self.pop()?;
                    match self.top_mut()? {
                        Value::List(items) => items.push(item),
                        other => return Err(format!("APPEND to {}", other.kind())),
                    }
                }
                b'e' => {
                    let new = self.pop_mark()?;
                    match self.top_mut()? {
                        Value::List(items) => items.extend(new),
                        other => return Err(format!("APPENDS to {}", other.kind())),
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    set_items(self.top_mut()?, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    set_items(self.top_mut()?, items)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Value::Opaque(class.kind()));
                }
                b'b' => {
                    // BUILD sets an object's state; state dicts and tensors need none of it.
                    self.pop()?;
                    self.top_mut()?;
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not supported",
                        self.pos - 1
                    ));
                }
            }
        }
    }
}

fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
    let Value::Dict(entries) = target else {
        return Err(format!("SETITEM on {}", target.kind()));
    };
    if !items.len().is_multiple_of(2) {
        return Err("SETITEMS with an odd number of values".into());
    }
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        if let Some(slot) = entries.iter_mut().find(|(key, _)| same_key(key, &k)) {
            slot.1 = v;
        } else {
            entries.push((k, v));
        }
    }
    Ok(())
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)`.
fn persistent_storage(pid: Value) -> Result<Value, String> {
    let Value::Tuple(fields) = pid else {
        return Err(format!("persistent id is {}", pid.kind()));
    };
    match fields.as_slice() {
        [
            Value::Str(kind),
            Value::Global(_, storage),
            Value::Str(key),
            _,
            numel,
            ..,
        ] if kind == "storage" => {
            let dtype = TorchDtype::from_storage(storage)
                .ok_or_else(|| format!("storage type {storage} is not supported"))?;
            Ok(Value::Storage(StorageRef {
                dtype,
                key: key.clone(),
                numel: numel.as_usize("storage size")?,
            }))
        }
        _ => Err("persistent id is not a storage reference".into()),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Opaque(callable.kind()));
    };
    let args = match args {
        Value::Tuple(items) => items,
        other => return Err(format!("{module}.{name} called with {}", other.kind())),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [storage, offset, shape, stride, ..] = args.as_slice() else {
                return Err(format!("{name} with {} arguments", args.len()));
            };
            let Value::Storage(storage) = storage else {
                return Err(format!("{name} of {}", storage.kind()));
            };
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: offset.as_usize("tensor offset")?,
                shape: shape.as_dims("tensor shape")?,
                stride: stride.as_dims("tensor stride")?,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .filter(|v| matches!(v, Value::Tensor(_)))
            .ok_or_else(|| format!("{name} without a tensor")),
        _ => Ok(Value::Opaque(format!("{module}.{name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn strided_views_are_gathered() {
        // A 2x3 row-major storage read transposed (shape 3x2, stride 1,3), from offset 0.
        let storage: Vec<u8> = (0..6u8).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let tensor = TensorRef {
            storage: StorageRef {
                dtype: TorchDtype::F32,
                key: "0".into(),
                numel: 6,
            },
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        let bytes = gather(&storage, &tensor).unwrap();
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let outside = TensorRef {
            offset: 1,
            ..tensor
        };
        assert!(gather(&storage, &outside).is_err());
    }

    #[test]
    fn truncated_and_foreign_pickles_are_refused() {
        assert!(Unpickler::new(b"\x80\x02}q\x00").run().is_err());
        assert!(Unpickler::new(b"\x80\x02\xffq").run().is_err());
        // A tuple of (dict, int) runs to the tuple.
        let value = Unpickler::new(b"\x80\x02}q\x00K\x07\x86q\x01.")
            .run()
            .unwrap();
        assert!(matches!(value, Value::Tuple(ref items) if items.len() == 2));
    }
}
