//! Every encoder tutti can load passes the conformance check.

use tutti_models::conformance::check_conformance;
use tutti_models::presets::preset;
use tutti_models::{TuttiModel, load_encoder};

/// Padded vs single: the same computation in a different summation order.
const CONFORMANCE_TOLERANCE: f32 = 1e-4;

#[test]
fn the_tutti_presets_conform() {
    let device = tutti_nn::device::cpu();
    for (name, change_rate) in [("tiny", false), ("tiny", true)] {
        let mut config = preset(name).unwrap();
        if change_rate {
            config.conv_time_strides = vec![2, 2];
            config.layer_norm_first = true;
        }
        let model = TuttiModel::new(
            config.clone(),
            config.init(&device).unwrap(),
            device.clone(),
            name.into(),
        )
        .unwrap();
        let report = check_conformance(&model, CONFORMANCE_TOLERANCE).unwrap();
        assert_eq!(report.frames.len(), 3);
    }
}

#[test]
fn the_hugging_face_encoders_conform() {
    let root = tutti_nn::fixtures::repo_root().join("fixtures/parity");
    for variant in [
        "hf_wav2vec2_group",
        "hf_wav2vec2_layer",
        "hf_hubert_group",
        "hf_hubert_layer",
        "hf_wavlm_group",
        "hf_wavlm_layer",
        "tutti_postln_50hz",
    ] {
        let encoder = load_encoder(&root.join(variant), &tutti_nn::device::cpu()).unwrap();
        let report = check_conformance(encoder.as_ref(), CONFORMANCE_TOLERANCE)
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert!(report.padded_vs_single <= CONFORMANCE_TOLERANCE);
    }
}

#[test]
fn the_check_catches_an_encoder_that_leaks_padding() {
    // Negative control: an encoder that ignores lengths (claims every item is as long as the batch).
    struct Leaky(TuttiModel);
    impl tutti_models::AudioEncoder for Leaky {
        fn info(&self) -> tutti_models::EncoderInfo {
            self.0.info()
        }
        fn num_frames(&self, samples: usize) -> usize {
            self.0.num_frames(samples)
        }
        fn tail_samples(&self) -> usize {
            self.0.tail_samples()
        }
        fn min_samples(&self) -> usize {
            self.0.min_samples()
        }
        fn encode(
            &self,
            waveforms: &[&[f32]],
            options: tutti_models::ForwardOptions,
        ) -> Result<tutti_models::EncoderOutput, tutti_models::ModelError> {
            let (features, lengths) = self.0.features(waveforms)?;
            let longest = *lengths.iter().max().unwrap();
            let mut out = self
                .0
                .encoder
                .forward(features, &vec![longest; lengths.len()], options);
            out.lengths = lengths
                .iter()
                .map(|&l| self.0.config.frames_for_fbank(l))
                .collect();
            Ok(out)
        }
    }
    let device = tutti_nn::device::cpu();
    let config = preset("tiny").unwrap();
    let model = TuttiModel::new(
        config.clone(),
        config.init(&device).unwrap(),
        device,
        "leaky".into(),
    )
    .unwrap();
    let error = check_conformance(&Leaky(model), CONFORMANCE_TOLERANCE)
        .unwrap_err()
        .to_string();
    assert!(error.contains("padded batch differs"), "{error}");
}
