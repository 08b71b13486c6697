//! ONNX model files read natively: the subset of the ONNX protobuf schema (`onnx/onnx.proto`,
//! IR version 3 onwards) that holds a graph's nodes and weights, declared as `prost` messages
//! (fields not declared here are skipped by the decoder), and initializers widened to f32 with
//! external data (`data_location = EXTERNAL`, a file beside the model) resolved and bounds-checked.
//!
//! This is a weights-and-topology reader for models tutti ports by hand (YAMNet), not an ONNX
//! runtime: the model code walks [`Graph::nodes`] and asks for the tensors it needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::LoadError;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// ONNX `TensorProto.DataType` ids this reader widens to f32.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const DOUBLE: i32 = 11;
}

/// A tensor from the graph, widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One ONNX model file: its graph, with initializers by name.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub path: PathBuf,
    pub model: ModelProto,
    initializers: HashMap<String, usize>,
    /// External data files, read once.
    external: HashMap<String, Vec<u8>>,
}

impl OnnxModel {
    /// Read and decode `path`; external data files it names are read from its folder.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let model =
            ModelProto::decode(bytes.as_slice()).map_err(|e| bad(format!("not ONNX: {e}")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| bad("not ONNX: the model has no graph".into()))?;
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut external = HashMap::new();
        let folder = path.parent().unwrap_or(Path::new("."));
        for tensor in &graph.initializer {
            if tensor.data_location != 1 {
                continue;
            }
            let location = entry(tensor, "location")
                .ok_or_else(|| bad(format!("{}: external data without a location", tensor.name)))?;
            if location.contains("..") || Path::new(location).is_absolute() {
                return Err(bad(format!(
                    "{}: external data location {location} leaves the model's folder",
                    tensor.name
                )));
            }
            if !external.contains_key(location) {
                let file = folder.join(location);
                let data = std::fs::read(&file).map_err(|e| LoadError::Read {
                    path: file.clone(),
                    reason: format!("external data of {}: {e}", path.display()),
                })?;
                external.insert(location.to_string(), data);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            model,
            initializers,
            external,
        })
    }

    pub fn graph(&self) -> &GraphProto {
        self.model.graph.as_ref().expect("checked at read")
    }

    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph().node
    }

    /// Whether `name` is an initializer.
    pub fn has_initializer(&self, name: &str) -> bool {
        self.initializers.contains_key(name)
    }

    /// The initializer `name`, widened to f32.
    pub fn initializer(&self, name: &str) -> Result<OnnxTensor, LoadError> {
        let bad = |reason: String| LoadError::Read {
            path: self.path.clone(),
            reason,
        };
        let tensor = self
            .initializers
            .get(name)
            .map(|&i| &self.graph().initializer[i])
            .ok_or_else(|| bad(format!("initializer {name} is missing")))?;
        let shape = tensor
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("{name}: dimension {d}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let count: usize = shape.iter().product();
        let raw: &[u8] = if tensor.data_location == 1 {
            let location = entry(tensor, "location").unwrap_or_default();
            let data = &self.external[location];
            let number = |key: &str| -> Result<Option<usize>, LoadError> {
                entry(tensor, key)
                    .map(|v| {
                        v.parse::<usize>()
                            .map_err(|_| bad(format!("{name}: {key} {v}")))
                    })
                    .transpose()
            };
            let offset = number("offset")?.unwrap_or(0);
            let length = number("length")?.unwrap_or(data.len().saturating_sub(offset));
            data.get(offset..offset.saturating_add(length))
                .ok_or_else(|| {
                    bad(format!(
                        "{name}: external bytes {offset}..{} past the end of {location} ({} bytes)",
                        offset + length,
                        data.len()
                    ))
                })?
        } else {
            &tensor.raw_data
        };
        let values: Vec<f32> = if !raw.is_empty() {
            let width = match tensor.data_type {
                dtype::FLOAT | dtype::INT32 => 4,
                dtype::UINT8 | dtype::INT8 => 1,
                dtype::INT64 | dtype::DOUBLE => 8,
                other => return Err(bad(format!("{name}: unsupported data type {other}"))),
            };
            if raw.len() != count * width {
                return Err(bad(format!(
                    "{name}: {} bytes for shape {shape:?} of {width}-byte values",
                    raw.len()
                )));
            }
            match tensor.data_type {
                dtype::FLOAT => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
                dtype::INT32 => raw
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32)
                    .collect(),
                dtype::UINT8 => raw.iter().map(|&b| b as f32).collect(),
                dtype::INT8 => raw.iter().map(|&b| b as i8 as f32).collect(),
                dtype::INT64 => raw
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
                _ => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
            }
        } else {
            match tensor.data_type {
                dtype::FLOAT => tensor.float_data.clone(),
                dtype::UINT8 | dtype::INT8 | dtype::INT32 => {
                    tensor.int32_data.iter().map(|&v| v as f32).collect()
                }
                dtype::INT64 => tensor.int64_data.iter().map(|&v| v as f32).collect(),
                dtype::DOUBLE => tensor.double_data.iter().map(|&v| v as f32).collect(),
                other => return Err(bad(format!("{name}: unsupported data type {other}"))),
            }
        };
        if values.len() != count.max(usize::from(shape.is_empty())) {
            return Err(bad(format!(
                "{name}: {} values for shape {shape:?}",
                values.len()
            )));
        }
        Ok(OnnxTensor { shape, values })
    }

    /// The node whose output is `name`.
    pub fn producer(&self, name: &str) -> Option<&NodeProto> {
        self.nodes()
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))
    }

    /// A weight as the graph computes it: an initializer, or `DequantizeLinear` of
    /// `QuantizeLinear` of one (a fake-quantised weight: `(clamp(round(w / s) + z) - z) s`, per
    /// tensor or per `axis` channel), or `DequantizeLinear` of stored integers.
    pub fn weight(&self, name: &str) -> Result<OnnxTensor, LoadError> {
        if self.has_initializer(name) {
            return self.initializer(name);
        }
        let bad = |reason: String| LoadError::Read {
            path: self.path.clone(),
            reason,
        };
        let node = self
            .producer(name)
            .ok_or_else(|| bad(format!("{name} is neither an initializer nor computed")))?;
        if node.op_type != "DequantizeLinear" || node.input.len() < 2 {
            return Err(bad(format!(
                "{name} comes from a {} node, not a weight's DequantizeLinear",
                node.op_type
            )));
        }
        let axis = attribute(node, "axis").map_or(1, |a| a.i);
        let scale = self.initializer(&node.input[1])?;
        let zero = match node.input.get(2) {
            Some(z) if !z.is_empty() => self.initializer(z)?.values,
            _ => vec![0.0; scale.values.len()],
        };
        let (mut tensor, range) = match self.producer(&node.input[0]) {
            Some(q) if q.op_type == "QuantizeLinear" => {
                let float = self.initializer(&q.input[0])?;
                let signed = match q.input.get(2) {
                    Some(z) if !z.is_empty() => {
                        let index = self.initializers[z.as_str()];
                        self.graph().initializer[index].data_type == dtype::INT8
                    }
                    _ => false,
                };
                let range = if signed {
                    (-128.0, 127.0)
                } else {
                    (0.0, 255.0)
                };
                (float, Some(range))
            }
            _ => (self.initializer(&node.input[0])?, None),
        };
        let channels = scale.values.len();
        let inner: usize = if channels == 1 {
            tensor.values.len()
        } else {
            let axis = usize::try_from(if axis < 0 {
                axis + tensor.shape.len() as i64
            } else {
                axis
            })
            .map_err(|_| bad(format!("{name}: axis {axis}")))?;
            if tensor.shape.get(axis) != Some(&channels) {
                return Err(bad(format!(
                    "{name}: {channels} scales for axis {axis} of shape {:?}",
                    tensor.shape
                )));
            }
            tensor.shape[axis + 1..].iter().product()
        };
        if zero.len() != channels {
            return Err(bad(format!(
                "{name}: {} zero points for {channels} scales",
                zero.len()
            )));
        }
        for (i, v) in tensor.values.iter_mut().enumerate() {
            let c = (i / inner) % channels;
            let (s, z) = (scale.values[c], zero[c]);
            let q = match range {
                Some((lo, hi)) => ((*v / s).round_ties_even() + z).clamp(lo, hi),
                None => *v,
            };
            *v = (q - z) * s;
        }
        Ok(tensor)
    }
}

fn entry<'a>(tensor: &'a TensorProto, key: &str) -> Option<&'a str> {
    tensor
        .external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

/// A node's attribute by name.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: dtype::FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn write(dir: &Path, graph: GraphProto) -> PathBuf {
        let model = ModelProto {
            ir_version: 8,
            graph: Some(graph),
            ..Default::default()
        };
        let path = dir.join("model.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn fake_quantised_weights_are_rounded_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let w = [0.26f32, -0.5, 0.9, 1.0, 2.0, 3.0];
        let graph = GraphProto {
            initializer: vec![
                float_tensor("w", &[2, 3], &w),
                float_tensor("s", &[2], &[0.1, 0.5]),
                TensorProto {
                    dims: vec![2],
                    data_type: dtype::INT8,
                    name: "z".into(),
                    raw_data: vec![0, 2],
                    ..Default::default()
                },
            ],
            node: vec![
                NodeProto {
                    input: vec!["w".into(), "s".into(), "z".into()],
                    output: vec!["wq".into()],
                    op_type: "QuantizeLinear".into(),
                    attribute: vec![AttributeProto {
                        name: "axis".into(),
                        i: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                NodeProto {
                    input: vec!["wq".into(), "s".into(), "z".into()],
                    output: vec!["wdq".into()],
                    op_type: "DequantizeLinear".into(),
                    attribute: vec![AttributeProto {
                        name: "axis".into(),
                        i: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let path = write(dir.path(), graph);
        let model = OnnxModel::read(&path).unwrap();
        let got = model.weight("wdq").unwrap();
        assert_eq!(got.shape, vec![2, 3]);
        // Row 0: scale 0.1, zero 0 -> 0.3, -0.5, 0.9; row 1: scale 0.5, zero 2 -> 1.0, 2.0, 3.0.
        let want = [0.3f32, -0.5, 0.9, 1.0, 2.0, 3.0];
        for (g, w) in got.values.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", got.values);
        }
        assert_eq!(model.weight("w").unwrap().values, w.to_vec());
        assert!(model.weight("nothing").is_err());
    }

    #[test]
    fn external_data_is_read_and_bounds_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.data"),
            [0u8; 4]
                .iter()
                .copied()
                .chain(1.5f32.to_le_bytes())
                .chain(2.5f32.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let external = |offset: &str, length: &str| TensorProto {
            dims: vec![2],
            data_type: dtype::FLOAT,
            name: "x".into(),
            data_location: 1,
            external_data: vec![
                StringStringEntryProto {
                    key: "location".into(),
                    value: "model.data".into(),
                },
                StringStringEntryProto {
                    key: "offset".into(),
                    value: offset.into(),
                },
                StringStringEntryProto {
                    key: "length".into(),
                    value: length.into(),
                },
            ],
            ..Default::default()
        };
        let path = write(
            dir.path(),
            GraphProto {
                initializer: vec![external("4", "8")],
                ..Default::default()
            },
        );
        let model = OnnxModel::read(&path).unwrap();
        assert_eq!(model.initializer("x").unwrap().values, vec![1.5, 2.5]);
        let path = write(
            dir.path(),
            GraphProto {
                initializer: vec![external("8", "8")],
                ..Default::default()
            },
        );
        let error = OnnxModel::read(&path)
            .unwrap()
            .initializer("x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("past the end"), "{error}");
        std::fs::write(&path, b"definitely not protobuf \xff\xff\xff").unwrap();
        let error = OnnxModel::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("model.onnx") && error.contains("not ONNX"),
            "{error}"
        );
    }
}
