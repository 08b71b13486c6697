//! `tutti merge` on model directories: weight 0 gives the base's tensors, one model at weight 1
//! gives that model's; the result loads in every command (manifest checksums, config), records
//! its inputs in merge.json, and models of another architecture are refused.

use std::path::Path;
use std::process::Command;

fn tutti() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
}

fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every tensor's name and bytes, in name order.
fn tensors(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = t.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = t.tensor(&n).unwrap().data().to_vec();
            (n, data)
        })
        .collect()
}

#[test]
fn merged_models_keep_the_algebra_and_load_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (name, seed) in [("base", "0"), ("a", "1"), ("b", "2")] {
        ok(tutti()
            .args(["init", "--preset", "tiny", "--seed", seed, "-o"])
            .arg(d.join(name)));
    }
    let model = |name: &str, l: &str| format!("{}:{l}", d.join(name).display());
    ok(tutti()
        .arg("merge")
        .arg("--base")
        .arg(d.join("base"))
        .args(["--model", &model("a", "0")])
        .arg("-o")
        .arg(d.join("zero")));
    assert!(
        tensors(&d.join("zero")) == tensors(&d.join("base")),
        "weight 0 is the base"
    );
    ok(tutti()
        .arg("merge")
        .arg("--base")
        .arg(d.join("base"))
        .args(["--model", &model("a", "1")])
        .arg("-o")
        .arg(d.join("one")));
    assert!(
        tensors(&d.join("one")) == tensors(&d.join("a")),
        "weight 1 is the model"
    );
    ok(tutti()
        .arg("merge")
        .arg("--base")
        .arg(d.join("base"))
        .args([
            "--model",
            &model("a", "0.5"),
            "--model",
            &model("b", "0.5"),
            "--method",
            "ties",
            "--density",
            "0.5",
        ])
        .arg("-o")
        .arg(d.join("ties")));
    assert!(tensors(&d.join("ties")) != tensors(&d.join("base")));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ties/merge.json")).unwrap()).unwrap();
    assert_eq!(record["method"]["method"], "ties");
    assert_eq!(record["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(record["inputs"][1]["sha256"].as_str().unwrap().len(), 64);
    // What `tutti bench` reads back for the sweep, from the file `tutti merge` wrote.
    let weights = tutti_eval::bench::MergeWeights::read(&d.join("ties"))
        .unwrap()
        .expect("a merge record");
    assert_eq!(weights.method, "ties");
    assert_eq!(
        weights.inputs,
        vec![("a".to_string(), 0.5), ("b".to_string(), 0.5)]
    );
    ok(tutti().arg("info").arg(d.join("ties")));
    let audio = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/audio");
    let first = std::fs::read_dir(&audio)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wav"))
        .unwrap();
    ok(tutti()
        .arg("embed")
        .arg(&first)
        .arg("-o")
        .arg(d.join("emb"))
        .arg("--model")
        .arg(d.join("ties")));
    // Another architecture is refused, and nothing is written.
    ok(tutti()
        .args(["init", "--preset", "small", "--seed", "0", "-o"])
        .arg(d.join("small")));
    let out = tutti()
        .arg("merge")
        .arg("--base")
        .arg(d.join("base"))
        .args(["--model", &model("small", "1")])
        .arg("-o")
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json differs"));
    assert!(!d.join("bad").exists());
}
