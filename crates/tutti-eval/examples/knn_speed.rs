//! Time the kNN probe's neighbour search on random embeddings:
//! `cargo run --release -p tutti-eval --example knn_speed -- [train] [test] [dim]`
//! (default 30,000 x 6,600 x 1,024, the size of a frame task on the standard suite).

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let (train, test, dim) = (
        args.first().copied().unwrap_or(30_000),
        args.get(1).copied().unwrap_or(6_600),
        args.get(2).copied().unwrap_or(1_024),
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let a: Vec<f32> = (0..train * dim).map(|_| next()).collect();
    let b: Vec<f32> = (0..test * dim).map(|_| next()).collect();
    let start = std::time::Instant::now();
    let out = tutti_eval::knn::neighbours(&a, &b, dim, 10, 0.07);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{train} x {test} x {dim}: {secs:.2} s ({:.1} GFLOP/s), {} queries",
        2.0 * (train * test * dim) as f64 / secs / 1e9,
        out.len()
    );
}
