//! Front-end timings on a synthetic 10 s clip (not a test; `cargo run --release -p tutti-audio
//! --example frontend_speed -- [runs] [fbank|whisper]`; set RAYON_NUM_THREADS for the thread
//! count; naming one front end times only it, for profiling).

use std::time::Instant;

use tutti_audio::{FbankConfig, KaldiFbank, WhisperMel, WhisperMelConfig};

fn median(mut run: impl FnMut(), runs: usize) -> f64 {
    run();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    let wave: Vec<f32> = (0..160_000)
        .map(|i| 0.3 * (i as f32 * 0.031).sin() + 0.01 * ((i * 7919 % 1000) as f32 / 1000.0 - 0.5))
        .collect();
    let fbank = KaldiFbank::new(FbankConfig::default()).unwrap();
    let whisper = WhisperMel::new(WhisperMelConfig::default()).unwrap();
    let only = std::env::args().nth(2);
    if only.as_deref() != Some("fbank") {
        let w = median(|| drop(whisper.compute(&wave).unwrap()), runs);
        println!("whisper log-mel {:.3} ms", w * 1e3);
    }
    if only.as_deref() != Some("whisper") {
        let f = median(|| drop(fbank.compute(&wave).unwrap()), runs);
        println!("fbank {:.3} ms", f * 1e3);
    }
}
