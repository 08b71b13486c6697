//! TensorFlow checkpoints (TF 1 `tf.train.Saver` / TF 2 tensor bundles) read natively: the
//! `.index` file is a LevelDB-format table (blocks of prefix-compressed keys with restart points,
//! a block index and a 48-byte footer; `tensorflow/core/lib/io/table.cc`) mapping each variable's
//! name to a `BundleEntryProto` (dtype, shape, shard, offset, size, masked CRC32C;
//! `tensor_bundle.proto`), and the `.data-NNNNN-of-NNNNN` shards hold the raw little-endian
//! values. Float variables are read (others are skipped); every entry's bytes are bounds- and
//! CRC-checked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;

use crate::LoadError;

#[derive(Clone, PartialEq, Message)]
struct BundleEntryProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    shard_id: i32,
    #[prost(int64, tag = "4")]
    offset: i64,
    #[prost(int64, tag = "5")]
    size: i64,
    #[prost(fixed32, tag = "6")]
    crc32c: u32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

#[derive(Clone, PartialEq, Message)]
struct BundleHeaderProto {
    #[prost(int32, tag = "1")]
    num_shards: i32,
}

/// TensorFlow `DataType` ids.
const DT_FLOAT: i32 = 1;
const DT_DOUBLE: i32 = 2;
const DT_HALF: i32 = 19;
/// The table footer's magic number.
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;

/// A checkpoint's float variables, by name.
#[derive(Debug, Clone, Default)]
pub struct TfCheckpoint {
    pub path: PathBuf,
    pub variables: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// A block handle `(offset, size)`.
fn handle(bytes: &[u8], at: &mut usize) -> Result<(usize, usize), String> {
    Ok((varint(bytes, at)? as usize, varint(bytes, at)? as usize))
}

/// The entries of the table block at `(offset, size)` (its 5-byte trailer: compression, CRC).
/// A table entry: key and value bytes.
type Entry = (Vec<u8>, Vec<u8>);

fn block(file: &[u8], (offset, size): (usize, usize)) -> Result<Vec<Entry>, String> {
    let data = file
        .get(offset..offset.saturating_add(size))
        .ok_or_else(|| format!("block {offset}+{size} past the end ({} bytes)", file.len()))?;
    match file.get(offset + size) {
        Some(0) => {}
        Some(kind) => return Err(format!("compressed block (type {kind}) not supported")),
        None => return Err("block trailer missing".into()),
    }
    if data.len() < 4 {
        return Err("block too short".into());
    }
    let restarts = u32::from_le_bytes(data[data.len() - 4..].try_into().expect("4")) as usize;
    let end = data
        .len()
        .checked_sub(4 + 4 * restarts)
        .ok_or("block restart array past its start")?;
    let mut entries = Vec::new();
    let mut key: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < end {
        let shared = varint(data, &mut at)? as usize;
        let own = varint(data, &mut at)? as usize;
        let value_len = varint(data, &mut at)? as usize;
        if shared > key.len() || at + own + value_len > end {
            return Err("block entry out of bounds".into());
        }
        key.truncate(shared);
        key.extend_from_slice(&data[at..at + own]);
        at += own;
        entries.push((key.clone(), data[at..at + value_len].to_vec()));
        at += value_len;
    }
    Ok(entries)
}

/// TensorFlow's CRC mask (`crc32c::Mask`).
fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

impl TfCheckpoint {
    /// Read the checkpoint whose files are `{prefix}.index` and `{prefix}.data-*-of-*`
    /// (`prefix` may end in `/` for files named `.index` inside a folder).
    pub fn read(prefix: &str) -> Result<Self, LoadError> {
        let index_path = PathBuf::from(format!("{prefix}.index"));
        let bad = |reason: String| LoadError::Read {
            path: index_path.clone(),
            reason,
        };
        let file = std::fs::read(&index_path).map_err(|e| bad(e.to_string()))?;
        if file.len() < 48 {
            return Err(bad(
                "not a TensorFlow checkpoint index: shorter than its footer".into(),
            ));
        }
        let footer = &file[file.len() - 48..];
        if u64::from_le_bytes(footer[40..].try_into().expect("8")) != TABLE_MAGIC {
            return Err(bad(
                "not a TensorFlow checkpoint index: wrong table magic".into()
            ));
        }
        let mut at = 0;
        let _meta = handle(footer, &mut at).map_err(&bad)?;
        let index = handle(footer, &mut at).map_err(&bad)?;
        let mut entries = Vec::new();
        for (_, value) in block(&file, index).map_err(&bad)? {
            let mut at = 0;
            let data = handle(&value, &mut at).map_err(&bad)?;
            entries.extend(block(&file, data).map_err(&bad)?);
        }
        let mut shards: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
        let mut num_shards = 1;
        let mut variables = BTreeMap::new();
        for (key, value) in entries {
            if key.is_empty() {
                let header = BundleHeaderProto::decode(value.as_slice())
                    .map_err(|e| bad(format!("bundle header: {e}")))?;
                num_shards = header.num_shards.max(1);
                continue;
            }
            let name = String::from_utf8_lossy(&key).into_owned();
            let entry = BundleEntryProto::decode(value.as_slice())
                .map_err(|e| bad(format!("{name}: entry: {e}")))?;
            let width = match entry.dtype {
                DT_FLOAT => 4,
                DT_DOUBLE => 8,
                DT_HALF => 2,
                _ => continue,
            };
            let shape: Vec<usize> = entry
                .shape
                .map(|s| s.dim.iter().map(|d| d.size.max(0) as usize).collect())
                .unwrap_or_default();
            let count: usize = shape.iter().product();
            if entry.size as usize != count * width {
                return Err(bad(format!(
                    "{name}: {} bytes for shape {shape:?}",
                    entry.size
                )));
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = shards.entry(entry.shard_id) {
                let shard = PathBuf::from(format!(
                    "{prefix}.data-{:05}-of-{:05}",
                    entry.shard_id, num_shards
                ));
                let data = std::fs::read(&shard).map_err(|e| LoadError::Read {
                    path: shard.clone(),
                    reason: e.to_string(),
                })?;
                slot.insert(data);
            }
            let data = &shards[&entry.shard_id];
            let (offset, size) = (entry.offset.max(0) as usize, entry.size as usize);
            let raw = data.get(offset..offset + size).ok_or_else(|| {
                bad(format!(
                    "{name}: bytes {offset}..{} past the end of shard {} ({} bytes)",
                    offset + size,
                    entry.shard_id,
                    data.len()
                ))
            })?;
            if masked(crc32c::crc32c(raw)) != entry.crc32c {
                return Err(bad(format!(
                    "{name}: checksum mismatch (corrupt data shard)"
                )));
            }
            let values = match width {
                4 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                    .collect(),
                8 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32)
                    .collect(),
                _ => raw
                    .chunks_exact(2)
                    .map(|b| crate::torch_zip::half_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
            };
            variables.insert(name, (shape, values));
        }
        Ok(Self {
            path: index_path,
            variables,
        })
    }

    /// The variable `name`, with its shape checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32], LoadError> {
        let (actual, values) = self.variables.get(name).ok_or_else(|| LoadError::Read {
            path: self.path.clone(),
            reason: format!("variable {name} is missing"),
        })?;
        if actual != shape {
            return Err(LoadError::Read {
                path: self.path.clone(),
                reason: format!("variable {name} has shape {actual:?}, expected {shape:?}"),
            });
        }
        Ok(values)
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.variables.get(name).map(|(s, _)| s.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A one-block table of `entries` (sorted), with its index block and footer.
    fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let mut file = Vec::new();
        let block_of = |items: &[(&[u8], Vec<u8>)], file: &mut Vec<u8>| -> (usize, usize) {
            let start = file.len();
            let mut previous: &[u8] = &[];
            for (key, value) in items {
                let shared = key.iter().zip(previous).take_while(|(a, b)| a == b).count();
                put_varint(file, shared as u64);
                put_varint(file, (key.len() - shared) as u64);
                put_varint(file, value.len() as u64);
                file.extend_from_slice(&key[shared..]);
                file.extend_from_slice(value);
                previous = key;
            }
            file.extend_from_slice(&0u32.to_le_bytes());
            file.extend_from_slice(&1u32.to_le_bytes());
            let size = file.len() - start;
            file.extend_from_slice(&[0, 0, 0, 0, 0]);
            (start, size)
        };
        let data = block_of(entries, &mut file);
        let mut handle = Vec::new();
        put_varint(&mut handle, data.0 as u64);
        put_varint(&mut handle, data.1 as u64);
        let index = block_of(&[(b"z".as_slice(), handle)], &mut file);
        let mut footer = Vec::new();
        put_varint(&mut footer, 0);
        put_varint(&mut footer, 0);
        put_varint(&mut footer, index.0 as u64);
        put_varint(&mut footer, index.1 as u64);
        footer.resize(40, 0);
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        file.extend_from_slice(&footer);
        file
    }

    fn entry(shape: &[i64], offset: i64, data: &[u8]) -> Vec<u8> {
        BundleEntryProto {
            dtype: DT_FLOAT,
            shape: Some(TensorShapeProto {
                dim: shape.iter().map(|&size| Dim { size }).collect(),
            }),
            shard_id: 0,
            offset,
            size: data.len() as i64,
            crc32c: masked(crc32c::crc32c(data)),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_written_bundle_reads_back_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}/ckpt", dir.path().display());
        let a: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [-0.5f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = BundleHeaderProto { num_shards: 1 }.encode_to_vec();
        let index = table(&[
            (b"", header),
            (b"layer/bias", entry(&[1], 24, &b)),
            (b"layer/kernel", entry(&[2, 3], 0, &a)),
        ]);
        std::fs::write(format!("{prefix}.index"), &index).unwrap();
        let mut shard = a.clone();
        shard.extend_from_slice(&b);
        std::fs::write(format!("{prefix}.data-00000-of-00001"), &shard).unwrap();
        let ckpt = TfCheckpoint::read(&prefix).unwrap();
        assert_eq!(
            ckpt.get("layer/kernel", &[2, 3]).unwrap(),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(ckpt.get("layer/bias", &[1]).unwrap(), &[-0.5]);
        assert!(ckpt.get("layer/kernel", &[3, 2]).is_err());
        // A flipped byte in the data shard fails its checksum.
        shard[5] ^= 0x40;
        std::fs::write(format!("{prefix}.data-00000-of-00001"), &shard).unwrap();
        let error = TfCheckpoint::read(&prefix).unwrap_err().to_string();
        assert!(error.contains("checksum"), "{error}");
        // A truncated index is refused with its path.
        std::fs::write(format!("{prefix}.index"), &index[..index.len() - 10]).unwrap();
        let error = TfCheckpoint::read(&prefix).unwrap_err().to_string();
        assert!(error.contains("ckpt.index"), "{error}");
    }
}
