//! Properties of the tutti encoder that must hold whatever the weights.

use burn::tensor::Tensor;
use tutti_models::presets::preset;
use tutti_models::{
    AudioEncoder, EmbedOptions, Embedder, Embedding, ForwardOptions, LayerSelection, ModelDir,
    Pooling, TuttiModel, load_model, write_initialised_model,
};
use tutti_nn::fixtures::test_signal;
use tutti_nn::layers::max_abs_diff;

/// Padded vs single and chunked vs full differ only by float summation order.
const EQUIVALENCE_TOLERANCE: f32 = 1e-4;

fn tiny_model(seed: u64) -> TuttiModel {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let device = tutti_nn::device::cpu();
    write_initialised_model(&out, &preset("tiny").unwrap(), Some("tiny"), seed, &device).unwrap();
    load_model(&out, &device).unwrap()
}

fn item(t: &Tensor<3>, index: usize, frames: usize) -> Tensor<3> {
    t.clone().narrow(0, index, 1).narrow(1, 0, frames)
}

#[test]
fn padded_batch_equals_items_alone() {
    let model = tiny_model(7);
    let long = test_signal(16_000, 1);
    let short = test_signal(7_123, 2);
    let batch = model
        .encode(&[&long, &short], ForwardOptions::default())
        .unwrap();
    for (index, wave) in [&long, &short].iter().enumerate() {
        let alone = model.encode(&[wave], ForwardOptions::default()).unwrap();
        let frames = alone.lengths[0];
        assert_eq!(batch.lengths[index], frames);
        assert_eq!(frames, model.num_frames(wave.len()));
        for (layer, state) in alone.hidden_states.iter().enumerate() {
            let diff = max_abs_diff(
                item(&batch.hidden_states[layer], index, frames),
                state.clone(),
            );
            assert!(
                diff < EQUIVALENCE_TOLERANCE,
                "item {index} layer {layer}: {diff}"
            );
        }
        for (layer, ffn) in alone.ffn_outputs.iter().enumerate() {
            let diff = max_abs_diff(item(&batch.ffn_outputs[layer], index, frames), ffn.clone());
            assert!(
                diff < EQUIVALENCE_TOLERANCE,
                "item {index} ffn {layer}: {diff}"
            );
        }
    }
}

#[test]
fn padding_mask_matters() {
    // Negative control for the test above: without masks, padding would leak into the short item.
    let model = tiny_model(7);
    let short = test_signal(7_123, 2);
    let alone = model.encode(&[&short], ForwardOptions::default()).unwrap();
    let frames = alone.lengths[0];
    let (features, mut lengths) = model.features(&[&short, &test_signal(16_000, 1)]).unwrap();
    lengths[0] = lengths[1]; // pretend the short item is as long as the padded batch
    let leaked = model
        .encoder
        .forward(features, &lengths, ForwardOptions::default());
    let last = alone.hidden_states.len() - 1;
    let diff = max_abs_diff(
        item(&leaked.hidden_states[last], 0, frames),
        alone.hidden_states[last].clone(),
    );
    assert!(
        diff > 100.0 * EQUIVALENCE_TOLERANCE,
        "padding did not change the output ({diff})"
    );
}

#[test]
fn output_shapes_follow_the_contract() {
    let model = tiny_model(3);
    let info = model.info();
    assert_eq!(
        (
            info.sample_rate_hz,
            info.hop_samples,
            info.num_layers,
            info.hidden_size
        ),
        (16_000, 320, 2, 32)
    );
    let out = model
        .encode(&[&test_signal(16_000, 4)], ForwardOptions::default())
        .unwrap();
    assert_eq!(out.hidden_states.len(), 3);
    assert_eq!(out.ffn_outputs.len(), 2);
    // 1 s: 98 fbank frames -> 49 frames at 50 Hz.
    assert_eq!(out.lengths, vec![49]);
    assert_eq!(out.hidden_states[2].dims(), [1, 49, 32]);
}

#[test]
fn early_exit_equals_the_prefix_of_a_full_pass() {
    let model = tiny_model(5);
    let wave = test_signal(12_000, 5);
    let full = model.encode(&[&wave], ForwardOptions::default()).unwrap();
    let early = model
        .encode(
            &[&wave],
            ForwardOptions {
                target_layer: Some(1),
            },
        )
        .unwrap();
    assert_eq!(early.hidden_states.len(), 2);
    assert_eq!(early.ffn_outputs.len(), 1);
    for layer in 0..2 {
        assert_eq!(
            max_abs_diff(
                early.hidden_states[layer].clone(),
                full.hidden_states[layer].clone()
            ),
            0.0
        );
    }
}

#[test]
fn initialisation_is_deterministic_and_seeded() {
    let wave = test_signal(8_000, 9);
    let run = |seed| {
        let model = tiny_model(seed);
        model
            .encode(&[&wave], ForwardOptions::default())
            .unwrap()
            .hidden_states[2]
            .clone()
    };
    assert_eq!(max_abs_diff(run(11), run(11)), 0.0);
    assert!(max_abs_diff(run(11), run(12)) > 1e-3);
}

#[test]
fn chunked_embedding_stays_close_to_full_context() {
    let model = tiny_model(13);
    let wave = test_signal(16_000 * 12, 13);
    let frames = |window_secs: f64| {
        let embedder = Embedder::new(
            &model,
            EmbedOptions {
                layer: LayerSelection::All,
                pooling: Pooling::None,
                window_secs,
                context_secs: 2.0,
                windows_per_batch: 2,
            },
        )
        .unwrap();
        match embedder.embed(&wave).unwrap() {
            Embedding::Frames(f) => f,
            other => panic!("{other:?}"),
        }
    };
    let full = frames(60.0);
    let chunked = frames(3.0);
    assert_eq!(full.frames, model.num_frames(wave.len()));
    assert_eq!(chunked.frames, full.frames);
    // Layer 0 (before attention) sees only local context: with 2 s of context it is exact up to
    // per-window mean removal. Deeper layers attend over the window only, so they stay close.
    let per_layer = full.frames * full.dim;
    for layer in 0..full.layers.len() {
        let a = &full.values[layer * per_layer..(layer + 1) * per_layer];
        let b = &chunked.values[layer * per_layer..(layer + 1) * per_layer];
        let rms = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        let err =
            (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        let bound = if layer == 0 { 1e-3 } else { 0.25 };
        assert!(
            err / rms < bound,
            "layer {layer}: relative rms error {}",
            err / rms
        );
    }
    assert!((full.timestamps_secs()[50] - 1.0).abs() < 1e-9);
}

#[test]
fn clip_embedding_is_the_mean_of_the_frames() {
    let model = tiny_model(17);
    let wave = test_signal(20_000, 17);
    let embed = |pooling| {
        Embedder::new(
            &model,
            EmbedOptions {
                pooling,
                ..EmbedOptions::default()
            },
        )
        .unwrap()
        .embed(&wave)
        .unwrap()
    };
    let (Embedding::Clip(clip), Embedding::Frames(frames)) =
        (embed(Pooling::Mean), embed(Pooling::None))
    else {
        panic!("wrong embedding kinds");
    };
    for d in 0..clip.dim {
        let mean = (0..frames.frames)
            .map(|f| frames.values[f * frames.dim + d])
            .sum::<f32>()
            / frames.frames as f32;
        assert!((mean - clip.values[d]).abs() < 1e-5);
    }
}

#[test]
fn strict_loading_refuses_missing_unused_and_misshapen_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let device = tutti_nn::device::cpu();
    let tiny = preset("tiny").unwrap();
    let out = dir.path().join("m");
    write_initialised_model(&out, &tiny, Some("tiny"), 1, &device).unwrap();
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let rewrite = |keep: &dyn Fn(&str) -> bool, extra: Option<(&str, Vec<usize>)>| -> String {
        let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = names
            .iter()
            .filter(|n| keep(n))
            .map(|n| (n.clone(), file.tensor(n).unwrap()))
            .collect();
        let extra_bytes;
        if let Some((name, shape)) = extra {
            extra_bytes = vec![0u8; shape.iter().product::<usize>() * 4];
            tensors.push((
                name.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &extra_bytes)
                    .unwrap(),
            ));
            let bytes = safetensors::serialize(tensors, None).unwrap();
            return load_error(&out, bytes, &device);
        }
        let bytes = safetensors::serialize(tensors, None).unwrap();
        load_error(&out, bytes, &device)
    };
    let missing = rewrite(&|n| n != "layers.1.attention.q_proj.weight", None);
    assert!(
        missing.contains("missing") && missing.contains("layers.1.attention.q_proj.weight"),
        "{missing}"
    );
    let unused = rewrite(&|_| true, Some(("decoder.extra.weight", vec![2, 2])));
    assert!(
        unused.contains("not in the model") && unused.contains("decoder.extra.weight"),
        "{unused}"
    );
    let misshapen = rewrite(
        &|n| n != "subsampler.proj.bias",
        Some(("subsampler.proj.bias", vec![31])),
    );
    assert!(misshapen.contains("subsampler.proj.bias"), "{misshapen}");
    // And the intact file loads.
    assert!(ModelDir::open(&out).unwrap().load(&device).is_ok());
}

fn load_error(dir: &std::path::Path, bytes: Vec<u8>, device: &burn::tensor::Device) -> String {
    let config = ModelDir::open(dir).unwrap().config;
    let mut encoder = config.init(device).unwrap();
    let result = tutti_nn::loader::load_safetensors_bytes_strict(
        &mut encoder,
        bytes,
        std::path::Path::new("test.safetensors"),
        &[],
        &[],
    );
    result.expect_err("a broken file must not load").to_string()
}

#[test]
fn a_changed_weights_file_is_refused_by_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let device = tutti_nn::device::cpu();
    let out = dir.path().join("m");
    write_initialised_model(&out, &preset("tiny").unwrap(), Some("tiny"), 1, &device).unwrap();
    let other = dir.path().join("other");
    write_initialised_model(&other, &preset("tiny").unwrap(), Some("tiny"), 2, &device).unwrap();
    std::fs::copy(
        other.join("model.safetensors"),
        out.join("model.safetensors"),
    )
    .unwrap();
    let error = load_model(&out, &device).unwrap_err().to_string();
    assert!(error.contains("sha256"), "{error}");
}

#[test]
fn presets_have_the_papers_sizes() {
    let device = tutti_nn::device::cpu();
    for (name, low, high) in [("small", 20e6, 28e6), ("base", 85e6, 100e6)] {
        let config = preset(name).unwrap();
        let params = burn::module::Module::num_params(&config.init(&device).unwrap()) as f64;
        assert!(params > low && params < high, "{name}: {params}");
    }
    assert_eq!(preset("xlarge").unwrap().hop_samples(), 640);
    assert!(preset("huge").is_err());
}
