//! Where the fast engine's forward pass spends its time, stage by stage, summed over the blocks
//! (not a test; `cargo run --release -p tutti-models --example profile_fast -- small 10 [runs]
//! [f32|int8|bf16]`).

use std::collections::BTreeMap;
use std::time::Instant;

use tutti_models::TuttiModel;
use tutti_models::fast::FastTutti;
use tutti_models::presets::preset;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "small".into());
    let secs: f64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(10.0);
    let runs: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(5);
    let device = tutti_nn::device::cpu();
    let config = preset(&name).unwrap();
    let encoder = config.init(&device).unwrap();
    let flops = config.forward_flops(config.fbank.num_frames((secs * 16000.0) as usize));
    let model = TuttiModel::new(config, encoder, device, name).unwrap();
    let mut fast = FastTutti::from_model(&model).unwrap();
    if let Some(precision) = args.next() {
        let precision: tutti_models::Precision = precision.parse().unwrap();
        if let Some(reason) = precision.unavailable() {
            panic!("{precision}: {reason}");
        }
        fast.set_precision(precision);
    }
    let wave: Vec<f32> = (0..(secs * 16000.0) as usize)
        .map(|i| (i as f32 * 0.01).sin() * 0.3)
        .collect();
    let features = model.fbank.compute(&wave).unwrap();
    let bins = model.config.fbank.num_mel_bins;
    let mut totals: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut whole = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let mut last = start;
        let mut stages: Vec<(&'static str, f64)> = Vec::new();
        let out = fast.engine.forward_marked(
            &features.data,
            features.frames,
            bins,
            usize::MAX,
            &mut |stage| {
                let now = Instant::now();
                stages.push((stage, (now - last).as_secs_f64()));
                last = now;
            },
        );
        std::hint::black_box(out);
        if run > 0 {
            whole.push(start.elapsed().as_secs_f64());
            for (stage, secs) in stages {
                *totals.entry(stage).or_default() += secs / runs as f64;
            }
        }
    }
    whole.sort_by(f64::total_cmp);
    let median = whole[whole.len() / 2];
    println!(
        "whole forward: median {:.1} ms, min {:.1} ms ({:.0} GFLOP/s at the median)",
        median * 1e3,
        whole[0] * 1e3,
        flops / median / 1e9
    );
    for (stage, secs) in totals {
        println!("{stage:<32} {:>8.1} ms", secs * 1e3);
    }
}
