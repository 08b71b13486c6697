//! The merge algebra on real files: weight 0 returns the base bit for bit, one model at weight 1
//! returns that model, two at 0.5 their mean; f16 inputs; globs; refused inputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tutti_merge::{Filter, MergeError, Method, merge_files};

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<f32>)]) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, d, _, v)| match d {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, d, s, _), b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn read(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let t = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = t.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = t.tensor(&n).unwrap();
            let values = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                _ => Vec::new(),
            };
            (n, values)
        })
        .collect()
}

fn model(dir: &Path, name: &str, shift: f32, dtype: Dtype) -> PathBuf {
    let p = dir.join(format!("{name}.safetensors"));
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 + shift).collect();
    let b: Vec<f32> = (0..4).map(|i| -(i as f32) + 2.0 * shift).collect();
    write(
        &p,
        &[
            ("layers.0.weight", dtype, vec![2, 3], a),
            ("norm.bias", dtype, vec![4], b),
        ],
    );
    p
}

#[test]
fn task_arithmetic_identities() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = model(d, "base", 0.0, Dtype::F32);
    let x = model(d, "x", 1.0, Dtype::F32);
    let y = model(d, "y", 3.0, Dtype::F32);
    let out = d.join("out.safetensors");
    let none = Filter::default();
    merge_files(
        &base,
        &[(x.clone(), 0.0)],
        Method::TaskArithmetic,
        &none,
        &out,
    )
    .unwrap();
    assert_eq!(read(&out), read(&base), "weight 0 is the base");
    merge_files(
        &base,
        &[(x.clone(), 1.0)],
        Method::TaskArithmetic,
        &none,
        &out,
    )
    .unwrap();
    assert_eq!(read(&out), read(&x), "weight 1 is the model");
    merge_files(
        &base,
        &[(x.clone(), 0.5), (y.clone(), 0.5)],
        Method::TaskArithmetic,
        &none,
        &out,
    )
    .unwrap();
    let mean = model(d, "mean", 2.0, Dtype::F32);
    assert_eq!(read(&out), read(&mean), "0.5 + 0.5 is the mean");
    // Negative control: other weights give something else.
    merge_files(
        &base,
        &[(x.clone(), 0.7), (y.clone(), 0.5)],
        Method::TaskArithmetic,
        &none,
        &out,
    )
    .unwrap();
    assert_ne!(read(&out), read(&mean));
    // Globs: only the weights merge, the norm is the base's.
    let only = Filter {
        include: vec!["layers.*".into()],
        exclude: vec![],
    };
    merge_files(
        &base,
        &[(x.clone(), 1.0)],
        Method::TaskArithmetic,
        &only,
        &out,
    )
    .unwrap();
    let got = read(&out);
    assert_eq!(got[0], read(&x)[0]);
    assert_eq!(got[1], read(&base)[1]);
    // DARE at density 1 is task arithmetic.
    merge_files(
        &base,
        &[(x.clone(), 1.0)],
        Method::Dare {
            density: 1.0,
            seed: 3,
        },
        &none,
        &out,
    )
    .unwrap();
    assert_eq!(read(&out), read(&x));
}

#[test]
fn f16_inputs_accumulate_in_f32_and_stay_f16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = model(d, "base", 0.0, Dtype::F16);
    let x = model(d, "x", 1.0, Dtype::F16);
    let y = model(d, "y", 3.0, Dtype::F16);
    let out = d.join("out.safetensors");
    merge_files(
        &base,
        &[(x, 0.5), (y, 0.5)],
        Method::TaskArithmetic,
        &Filter::default(),
        &out,
    )
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let t = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(t.tensor("norm.bias").unwrap().dtype(), Dtype::F16);
    assert_eq!(read(&out), read(&model(d, "mean", 2.0, Dtype::F16)));
}

#[test]
fn inputs_that_do_not_share_a_key_space_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = model(d, "base", 0.0, Dtype::F32);
    let other = d.join("other.safetensors");
    write(
        &other,
        &[
            ("layers.0.weight", Dtype::F32, vec![3, 2], vec![0.0; 6]),
            ("extra", Dtype::F32, vec![1], vec![1.0]),
        ],
    );
    let out = d.join("out.safetensors");
    let err = merge_files(
        &base,
        &[(other, 1.0)],
        Method::TaskArithmetic,
        &Filter::default(),
        &out,
    )
    .unwrap_err();
    let MergeError::Mismatch(text) = err else {
        panic!("{err}")
    };
    assert!(text.contains("no tensor norm.bias"), "{text}");
    assert!(text.contains("layers.0.weight is F32 [3, 2]"), "{text}");
    assert!(text.contains("extra is not in the base"), "{text}");
    assert!(!out.exists());
    let bad = d.join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let err = merge_files(
        &base,
        &[(bad.clone(), 1.0)],
        Method::TaskArithmetic,
        &Filter::default(),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
    let err = merge_files(
        &base,
        &[(base.clone(), 1.0)],
        Method::Ties {
            density: 0.0,
            lambda: 1.0,
        },
        &Filter::default(),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("density"), "{err}");
}
