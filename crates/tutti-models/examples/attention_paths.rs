//! Fused (burn `attention`) vs composed (two matmuls + softmax) attention at encoder shapes.
//! `cargo run --release -p tutti-models --example attention_paths`

use std::time::Instant;

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor};

fn main() {
    let device = tutti_nn::device::cpu();
    for (frames, heads, head_dim) in [(500, 6, 64), (1250, 6, 64), (500, 12, 64)] {
        let q = Tensor::<4>::random(
            [1, heads, frames, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let k = Tensor::<4>::random(
            [1, heads, frames, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let v = Tensor::<4>::random(
            [1, heads, frames, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let bias = Tensor::<4>::zeros([1, 1, 1, frames], &device);
        let time = |f: &dyn Fn() -> Tensor<4>| {
            let _ = f().into_data();
            let start = Instant::now();
            for _ in 0..5 {
                let _ = f().into_data();
            }
            start.elapsed().as_secs_f64() * 1000.0 / 5.0
        };
        let fused = time(&|| {
            attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            )
        });
        let composed = time(&|| {
            let scores = q.clone().matmul(k.clone().swap_dims(2, 3))
                * (1.0 / (head_dim as f64).sqrt())
                + bias.clone();
            softmax(scores, 3).matmul(v.clone())
        });
        println!("T={frames} H={heads}: fused {fused:.1} ms, composed {composed:.1} ms");
    }
}
