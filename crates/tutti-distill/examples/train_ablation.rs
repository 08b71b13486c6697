//! Where a distillation step's time goes: the same step on the `small` preset with one part of
//! the student changed at a time (not a test; `cargo run --release -p tutti-distill --example
//! train_ablation -- [batch] [secs]`).

use std::time::Instant;

use burn::tensor::Tensor;
use tutti_distill::step::benchmark_step;
use tutti_models::TuttiModel;
use tutti_models::presets::preset;
use tutti_models::tutti::TuttiConfig;

fn step_secs(config: &TuttiConfig, batch: usize, secs: f64) -> f64 {
    let plain_device = tutti_nn::device::cpu();
    let device = plain_device.clone().autodiff();
    let plain = TuttiModel::new(
        config.clone(),
        config.init(&plain_device).unwrap(),
        plain_device,
        "ablation".into(),
    )
    .unwrap();
    let wave: Vec<f32> = (0..(secs * 16000.0) as usize)
        .map(|i| (i as f32 * 0.031).sin() * 0.3)
        .collect();
    let waves: Vec<&[f32]> = (0..batch).map(|_| wave.as_slice()).collect();
    let (features, lengths) = plain.features(&waves).unwrap();
    let features = Tensor::from_data(features.into_data(), &device);
    let frames = config.frames_for_fbank(lengths[0]);
    let student = config.init(&device).unwrap();
    let (mut step, targets) = benchmark_step(student, config, batch, frames, &device);
    step.step(features.clone(), &lengths, &targets);
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            step.step(features.clone(), &lengths, &targets);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(2);
    let secs: f64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(10.0);
    let base = preset("small").unwrap();
    let full = step_secs(&base, batch, secs);
    println!(
        "small, batch {batch} x {secs} s: {:.0} ms per step",
        full * 1e3
    );
    let variants: Vec<(&str, TuttiConfig)> = vec![
        (
            "no positional convolution",
            TuttiConfig {
                conv_pos_layers: 0,
                ..base.clone()
            },
        ),
        (
            "one subsampler convolution",
            TuttiConfig {
                conv_time_strides: vec![2],
                ..base.clone()
            },
        ),
        (
            "6 blocks instead of 12",
            TuttiConfig {
                num_hidden_layers: 6,
                ..base.clone()
            },
        ),
    ];
    for (name, config) in variants {
        let t = step_secs(&config, batch, secs);
        println!(
            "{name:<32} {:>7.0} ms ({:+.0} ms)",
            t * 1e3,
            (t - full) * 1e3
        );
    }
}
