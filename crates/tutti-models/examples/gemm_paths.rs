//! Matrix-product throughput at the encoder's shapes, through burn's paths (2-D, 3-D batched,
//! `Linear`), to find what the projections lose against the raw product.
//! `cargo run --release -p tutti-models --example gemm_paths`

use std::time::Instant;

use burn::nn::LinearConfig;
use burn::tensor::{Distribution, Tensor};

fn main() {
    let device = tutti_nn::device::cpu();
    for (m, k, n) in [
        (499, 384, 1536),
        (499, 1536, 384),
        (499, 384, 384),
        (499, 768, 3072),
    ] {
        let x2 = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let x3 = x2.clone().unsqueeze_dim::<3>(0);
        let linear = LinearConfig::new(k, n).init(&device);
        let flops = 2.0 * (m * k * n) as f64;
        let time = |label: &str, f: &dyn Fn()| {
            f();
            let reps = 10;
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m}x{k}x{n} {label:<22} {:>7.2} ms {:>6.0} GFLOP/s",
                secs * 1e3,
                flops / secs / 1e9
            );
        };
        time("2-D matmul", &|| {
            let _ = x2.clone().matmul(w.clone()).into_data();
        });
        time("3-D matmul", &|| {
            let _ = x3.clone().matmul(w.clone().unsqueeze_dim(0)).into_data();
        });
        time("Linear (3-D, bias)", &|| {
            let _ = linear.forward(x3.clone()).into_data();
        });
        time("2-D matmul, no readback", &|| {
            let _ = x2.clone().matmul(w.clone());
        });
    }
}
