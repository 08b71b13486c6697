//! Matrix-product throughput of [`tutti_nn::kernels::matmul`] at the encoder's shapes, with the
//! gemm crate's own threading and with the rows split between threads by hand, and of the int8
//! product ([`tutti_nn::quant`], in f32-equivalent GFLOP/s, quantisation included) (not a test;
//! `cargo run --release -p tutti-nn --example kernel_shapes`).

use std::time::Instant;

use tutti_nn::bf16::Kernel;
use tutti_nn::kernels::{MatMut, MatRef, Threads, matmul};

fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    let reps = 20;
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    println!("cpu features: {:?}", tutti_cpu::features().names());
    for (op, path) in tutti_cpu::kernel_paths() {
        println!("  {op}: {path}");
    }
    for (m, k, n) in [
        (500, 384, 1536),
        (500, 1536, 384),
        (500, 384, 1152),
        (500, 384, 384),
        (500, 768, 3072),
        (500, 3072, 768),
        (16000, 576, 64),
        (500, 456, 24),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
            .collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let pool = time(&mut || {
            matmul(
                MatMut::new(&mut c, m, n),
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                1.0,
                false,
                Threads::Pool,
            )
        });
        let one = time(&mut || {
            matmul(
                MatMut::new(&mut c, m, n),
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                1.0,
                false,
                Threads::One,
            )
        });
        let half = m / 2;
        let split = time(&mut || {
            let (top, bottom) = c.split_at_mut(half * n);
            rayon::join(
                || {
                    matmul(
                        MatMut::new(top, half, n),
                        MatRef::new(&a, m, k).rows(0, half),
                        MatRef::new(&b, k, n),
                        1.0,
                        false,
                        Threads::One,
                    )
                },
                || {
                    matmul(
                        MatMut::new(bottom, m - half, n),
                        MatRef::new(&a, m, k).rows(half, m - half),
                        MatRef::new(&b, k, n),
                        1.0,
                        false,
                        Threads::One,
                    )
                },
            );
        });
        let quantised = tutti_nn::quant::QuantizedMatrix::new(&b, k, n);
        let int8 = time(&mut || quantised.matmul(&mut c, &a, m));
        let halves = tutti_nn::bf16::Bf16Matrix::new(&b, k, n);
        let bf16 = |kernel: Kernel, c: &mut Vec<f32>| {
            if kernel.available() {
                format!(
                    "{:>6.1}",
                    flops / time(&mut || halves.matmul_on(kernel, c, &a, m)) / 1e9
                )
            } else {
                "     -".into()
            }
        };
        let amx = bf16(Kernel::Amx, &mut c);
        let avx512 = bf16(Kernel::Avx512Bf16, &mut c);
        println!(
            "{m:>6} x {k:>5} x {n:>5}: pool {:>6.1} GFLOP/s, one thread {:>6.1}, rows split {:>6.1}, int8 {:>6.1} (equivalent), bf16 amx {amx}, bf16 avx512 {avx512}",
            flops / pool / 1e9,
            flops / one / 1e9,
            flops / split / 1e9,
            flops / int8 / 1e9
        );
    }

    // Attention pieces for 250 query rows of one 64-wide head over 500 keys, reading Q, K and V
    // in place from a [500, 1152] QKV buffer, one thread.
    let (t, rows, hd, w3) = (500, 250, 64, 1152);
    let qkv: Vec<f32> = (0..t * w3)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-4)
        .collect();
    let all = MatRef {
        data: &qkv,
        rows: t,
        cols: w3,
        row_stride: w3,
        col_stride: 1,
    };
    let mut scores = vec![0.0f32; rows * t];
    let mut out = vec![0.0f32; rows * 384];
    let flops = 2.0 * (rows * hd * t) as f64;
    let qk = time(&mut || {
        matmul(
            MatMut::new(&mut scores, rows, t),
            all.rows(0, rows).columns(0, hd),
            all.columns(384, hd).t(),
            0.125,
            false,
            Threads::One,
        )
    });
    let k_copy: Vec<f32> = (0..t)
        .flat_map(|r| qkv[r * w3 + 384..r * w3 + 384 + hd].to_vec())
        .collect();
    let qk_contig = time(&mut || {
        matmul(
            MatMut::new(&mut scores, rows, t),
            all.rows(0, rows).columns(0, hd),
            MatRef::new(&k_copy, t, hd).t(),
            0.125,
            false,
            Threads::One,
        )
    });
    let soft = time(&mut || {
        for row in scores.chunks_exact_mut(t) {
            std::hint::black_box(tutti_nn::kernels::exp_shifted_row(row));
        }
    });
    let pv = time(&mut || {
        matmul(
            MatMut::new(&mut out, rows, 384).columns(0, hd),
            MatRef::new(&scores, rows, t),
            all.columns(768, hd),
            1.0,
            false,
            Threads::One,
        )
    });
    if tutti_nn::bf16::Kernel::chosen() != Kernel::Portable {
        use tutti_nn::bf16::Bf16Matrix;
        let kernel = Kernel::chosen();
        let pack = time(&mut || {
            std::hint::black_box((
                Bf16Matrix::from_transposed(&qkv[384..], w3, t, hd, 0.125),
                Bf16Matrix::from_rows(&qkv[768..], w3, t, hd),
            ));
        });
        let keys = Bf16Matrix::from_fn(hd, t, |d, j| qkv[j * w3 + 384 + d] * 0.125);
        let values = Bf16Matrix::from_fn(t, hd, |j, d| qkv[j * w3 + 768 + d]);
        let qk =
            time(&mut || keys.product(kernel, &mut scores, t, &qkv, w3, rows, false, Threads::One));
        let pv = time(&mut || {
            values.product(kernel, &mut out, 384, &scores, t, rows, false, Threads::One)
        });
        println!(
            "attention in bf16 ({kernel:?}), one thread: K^T and V packed {:.0} us, QK^T {:.1} GFLOP/s ({:.0} us), PV {:.1} GFLOP/s ({:.0} us)",
            pack * 1e6,
            flops / qk / 1e9,
            qk * 1e6,
            flops / pv / 1e9,
            pv * 1e6
        );
    }
    println!(
        "attention, one thread: QK^T {:.1} GFLOP/s ({:.0} us; K copied first: {:.1} GFLOP/s), exp rows {:.0} us, PV {:.1} GFLOP/s ({:.0} us)",
        flops / qk / 1e9,
        qk * 1e6,
        flops / qk_contig / 1e9,
        soft * 1e6,
        flops / pv / 1e9,
        pv * 1e6
    );
}
