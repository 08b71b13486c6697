//! Where the forward pass spends its time, stage by stage (not a test; `cargo run --release
//! -p tutti-models --example profile_forward -- small 10`).

use std::time::Instant;

use tutti_models::presets::preset;
use tutti_models::{ForwardOptions, TuttiModel};
use tutti_nn::layers::gelu;
use tutti_nn::layers::layer_norm_no_affine;
use tutti_nn::mask::padding_mask;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "small".into());
    let secs: f64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(10.0);
    let device = tutti_nn::device::cpu();
    let config = preset(&name).unwrap();
    let encoder = config.init(&device).unwrap();
    let model = TuttiModel::new(config, encoder, device.clone(), name).unwrap();
    let wave: Vec<f32> = (0..(secs * 16000.0) as usize)
        .map(|i| (i as f32 * 0.01).sin() * 0.3)
        .collect();
    let sync = || device.sync().unwrap();
    let time = |label: &str, f: &mut dyn FnMut()| {
        f();
        sync();
        let start = Instant::now();
        let n = 3;
        for _ in 0..n {
            f();
            sync();
        }
        println!(
            "{label:<28} {:>8.1} ms",
            start.elapsed().as_secs_f64() * 1000.0 / n as f64
        );
    };
    let (features, lengths) = model.features(&[&wave]).unwrap();
    time("whole forward", &mut || {
        model
            .encoder
            .forward(features.clone(), &lengths, ForwardOptions::default());
    });
    time("fbank", &mut || {
        model.fbank.compute(&wave).unwrap();
    });
    let sub = &model.encoder.subsampler;
    let x4 = features.clone().unsqueeze_dim::<4>(1);
    time("conv0+gelu", &mut || {
        gelu(sub.conv[0].forward(x4.clone()));
    });
    let c0 = gelu(sub.conv[0].forward(x4.clone()));
    time("conv1+gelu", &mut || {
        gelu(sub.conv[1].forward(c0.clone()));
    });
    let c1 = gelu(sub.conv[1].forward(c0.clone()));
    let [b, c, t, f] = c1.dims();
    time("flatten+ln+proj", &mut || {
        let x = c1.clone().swap_dims(1, 2).reshape([b, t, c * f]);
        sub.proj.forward(sub.layer_norm.forward(x));
    });
    let x =
        sub.proj.forward(
            sub.layer_norm
                .forward(c1.clone().swap_dims(1, 2).reshape([b, t, c * f])),
        );
    let layer = &model.encoder.pos_conv.layers[0];
    time("pos conv layer (x5)", &mut || {
        let y = layer
            .conv
            .forward(x.clone().swap_dims(1, 2))
            .swap_dims(1, 2);
        gelu(layer_norm_no_affine(y, 1e-5));
    });
    let mask = padding_mask(&[t], t, &device);
    let block = &model.encoder.layers[0];
    time("block (x L)", &mut || {
        block.forward(x.clone(), &mask);
    });
    time("  attention", &mut || {
        block.attention.forward(x.clone(), &mask);
    });
    time("  q_proj", &mut || {
        block.attention.q_proj.forward(x.clone());
    });
    time("  ffn", &mut || {
        block.feed_forward.forward(x.clone());
    });
    time("  fc1 only", &mut || {
        block.feed_forward.intermediate_dense.forward(x.clone());
    });
    let h = block.feed_forward.intermediate_dense.forward(x.clone());
    time("  gelu on fc1 out", &mut || {
        gelu(h.clone());
    });
    time("  layer_norm", &mut || {
        block.layer_norm.forward(x.clone());
    });
    println!("frames {t}, layers {}", model.encoder.layers.len());
}
