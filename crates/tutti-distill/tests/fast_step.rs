//! The fast distillation step against the burn step (the reference, differentiated by burn's
//! autodiff): the loss, every parameter's gradient (and which parameters get one), and the
//! parameters after several AdamW updates, for post-LN and pre-LN students, 50 Hz and 25 Hz
//! subsamplers, teachers at the student's rate, at half of it and at twice it, and a padded batch
//! of unequal lengths.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use tutti_distill::fast::{Buffer, FastDistillStep, FastTargets};
use tutti_distill::step::{DistillModel, DistillStep, StepTargets, TeacherSlot};
use tutti_models::presets::preset;
use tutti_models::tutti::TuttiConfig;

use tutti_nn::fixtures::uniform as lcg;

struct Case {
    config: TuttiConfig,
    burn: DistillStep,
    features: Vec<f32>,
    shape: [usize; 3],
    lengths: Vec<usize>,
    targets: StepTargets,
    device: Device,
}

impl Case {
    fn features(&self) -> Tensor<3> {
        Tensor::from_data(
            TensorData::new(self.features.clone(), self.shape),
            &self.device,
        )
    }

    fn fast(&self) -> FastDistillStep {
        FastDistillStep::new(
            self.burn.model(),
            &self.config,
            self.burn.teachers.clone(),
            self.burn.student_rate_hz,
            self.burn.learning_rate,
        )
        .expect("the fast step runs this model")
    }
}

/// A patch-level teacher: 0.12 s patches every 0.08 s (6 frames every 4 at 50 Hz, 3 every 2
/// at 25 Hz), pooled from the student's frames inside each.
const PATCH: tutti_distill::align::Patch = tutti_distill::align::Patch {
    window_secs: 0.12,
    hop_secs: 0.08,
};

/// A 3-block student (`layer_norm_first`, `strides`) with three teachers: at the student's rate
/// (layers 1 and 3), at half of it (layer 2), at twice it (layer 3), and patch-level (layers 2 and
/// 3). Items of 40, 33 and 27
/// fbank frames; every teacher's valid frames lie inside the item's own aligned frames.
fn case(layer_norm_first: bool, strides: Vec<usize>) -> Case {
    case_with(layer_norm_first, strides, false)
}

/// [`case`], optionally with Whisper's sinusoids added before block 1 (a Whisper graft).
fn case_with(layer_norm_first: bool, strides: Vec<usize>, sinusoids: bool) -> Case {
    let device = tutti_nn::device::cpu().autodiff();
    let mut config = preset("tiny").unwrap();
    config.num_hidden_layers = 3;
    config.num_conv_pos_embeddings = 5;
    config.conv_pos_layers = 2;
    config.fbank.num_mel_bins = 24;
    config.layer_norm_first = layer_norm_first;
    config.conv_time_strides = strides;
    config.sinusoidal_positions = sinusoids;
    let student = tutti_nn::device::seeded(&device, 11, || config.init(&device)).unwrap();
    let rate = config.fbank.sample_rate_hz as f64 / config.hop_samples() as f64;
    let lengths = vec![40, 33, 27];
    let max = 40;
    let bins = config.fbank.num_mel_bins;
    let mut features = lcg(5, lengths.len() * max * bins);
    for (i, &len) in lengths.iter().enumerate() {
        features[(i * max + len) * bins..(i + 1) * max * bins].fill(0.0);
    }
    let frames: Vec<usize> = lengths
        .iter()
        .map(|&l| config.frames_for_fbank(l))
        .collect();
    let teachers = vec![
        TeacherSlot {
            name: "same".into(),
            frame_rate_hz: rate,
            dim: 12,
            student_layers: vec![1, 3],
            patch: None,
        },
        TeacherSlot {
            name: "half".into(),
            frame_rate_hz: rate / 2.0,
            dim: 8,
            student_layers: vec![2],
            patch: None,
        },
        TeacherSlot {
            name: "double".into(),
            frame_rate_hz: rate * 2.0,
            dim: 6,
            student_layers: vec![3],
            patch: None,
        },
        TeacherSlot {
            name: "patches".into(),
            frame_rate_hz: 0.0,
            dim: 5,
            student_layers: vec![2, 3],
            patch: Some(PATCH),
        },
    ];
    // Patches that lie whole inside each item (as the trainer's patch teachers' do).
    let patches: Vec<usize> = frames
        .iter()
        .map(|&f| {
            (0..)
                .take_while(|&j| {
                    ((j as f64 * PATCH.hop_secs + PATCH.window_secs) * rate).round() as usize <= f
                })
                .count()
        })
        .collect();
    assert!(patches.iter().all(|&p| p >= 2), "{patches:?}");
    let tensor = |dims: [usize; 3], seed| {
        Tensor::from_data(
            TensorData::new(lcg(seed, dims.iter().product()), dims),
            &device,
        )
    };
    let b = lengths.len();
    let (f0, f1, f2) = (frames[0], frames[0] / 2, frames[0] * 2);
    let targets = StepTargets {
        targets: vec![
            vec![tensor([b, f0, 12], 1), tensor([b, f0, 12], 2)],
            vec![tensor([b, f1, 8], 3)],
            vec![tensor([b, f2, 6], 4)],
            vec![tensor([b, patches[0], 5], 5), tensor([b, patches[0], 5], 6)],
        ],
        teacher_lengths: vec![
            frames.clone(),
            frames.iter().map(|f| f / 2).collect(),
            frames.iter().map(|f| f * 2).collect(),
            patches.clone(),
        ],
        weights: vec![0.4, 0.3, 0.2, 0.1],
    };
    let burn = DistillStep::new(student, rate, teachers, 16, 1e-3, 7, &device);
    Case {
        shape: [b, max, bins],
        config,
        burn,
        features,
        lengths,
        targets,
        device,
    }
}

/// Every float parameter's values, in visiting order, with its id.
#[derive(Default)]
struct Collect(Vec<(ParamId, Vec<f32>)>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let values = param
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        self.0.push((param.id, values));
    }
}

fn collect(model: &DistillModel) -> Vec<(ParamId, Vec<f32>)> {
    collect_module(model)
}

fn collect_module<M: Module>(module: &M) -> Vec<(ParamId, Vec<f32>)> {
    let mut c = Collect::default();
    module.visit(&mut c);
    c.0
}

/// The largest difference relative to the tensor's largest magnitude, over all tensors.
fn worst_relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let scale = y.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            x.iter()
                .zip(y)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs() / scale))
        })
        .fold(0.0, f32::max)
}

/// burn's gradient of every float parameter, in visiting order (`None`: not in the graph).
struct Gradients<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Gradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = self.grads.get::<D>(param.id).map(|t| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        });
        self.out.push(g);
    }
}

/// Both steps' losses and gradients, in visiting order (`reference`: burn's, `None` where a
/// parameter gets none).
struct Compared {
    burn_loss: f32,
    fast_loss: f32,
    reference: Vec<Option<Vec<f32>>>,
    fast: Vec<Vec<f32>>,
}

fn gradients(c: &Case, fast: &mut FastDistillStep, lengths: &[usize]) -> Compared {
    let loss = c.burn.loss(c.features(), &c.lengths, &c.targets);
    let burn_loss = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), c.burn.model());
    let mut visitor = Gradients {
        grads: &grads,
        out: Vec::new(),
    };
    c.burn.model().visit(&mut visitor);
    let reference = visitor.out;
    let fast_loss = fast.loss_and_gradients(
        &c.features,
        lengths,
        &FastTargets::from_step_targets(&c.targets),
    );
    let exported = collect(&fast.export(c.burn.model(), Buffer::Gradient))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    Compared {
        burn_loss,
        fast_loss,
        reference,
        fast: exported,
    }
}

fn check_gradients(layer_norm_first: bool, strides: Vec<usize>) {
    check_gradients_with(layer_norm_first, strides, false);
}

fn check_gradients_with(layer_norm_first: bool, strides: Vec<usize>, sinusoids: bool) {
    let c = case_with(layer_norm_first, strides, sinusoids);
    let mut fast = c.fast();
    let Compared {
        burn_loss,
        fast_loss,
        reference,
        fast: exported,
    } = gradients(&c, &mut fast, &c.lengths);
    assert!(
        (burn_loss - fast_loss).abs() < 1e-5 * burn_loss.abs().max(1.0),
        "loss: burn {burn_loss}, fast {fast_loss}"
    );
    assert_eq!(reference.len(), exported.len());
    let mut compared = (Vec::new(), Vec::new());
    for (i, (r, e)) in reference.iter().zip(&exported).enumerate() {
        match r {
            None => assert!(
                e.iter().all(|v| *v == 0.0),
                "parameter {i}: burn gives no gradient, the fast step does"
            ),
            Some(r) => {
                assert_eq!(r.len(), e.len(), "parameter {i}: size");
                assert!(
                    e.iter().any(|v| *v != 0.0),
                    "parameter {i}: no fast gradient"
                );
                compared.0.push(e.clone());
                compared.1.push(r.clone());
            }
        }
    }
    let untrained = reference.iter().filter(|r| r.is_none()).count();
    assert!(untrained > 0, "some parameters are out of the graph");
    let worst = worst_relative(&compared.0, &compared.1);
    eprintln!(
        "loss burn {burn_loss} fast {fast_loss}; {} tensors compared, {untrained} untrained; worst relative gradient difference {worst}",
        compared.0.len()
    );
    assert!(worst < 2e-4, "gradients differ: {worst}");

    // Negative control: an item one fbank frame shorter (an off-by-one in the lengths) is caught.
    let mut lengths = c.lengths.clone();
    lengths[1] -= 1;
    let mut other = c.fast();
    let Compared {
        fast_loss: shifted_loss,
        fast: shifted,
        ..
    } = gradients(&c, &mut other, &lengths);
    let shifted: Vec<Vec<f32>> = reference
        .iter()
        .zip(shifted)
        .filter(|(r, _)| r.is_some())
        .map(|(_, e)| e)
        .collect();
    assert!(worst_relative(&shifted, &compared.1) > 100.0 * worst.max(1e-6));
    assert!((shifted_loss - burn_loss).abs() > 10.0 * (fast_loss - burn_loss).abs());
}

#[test]
fn post_ln_gradients_match_burn() {
    check_gradients(false, vec![2, 1]);
}

#[test]
fn pre_ln_quarter_rate_gradients_match_burn() {
    check_gradients(true, vec![2, 2]);
}

/// A Whisper graft's student (pre-LN, 50 Hz, sinusoids before block 1): the burn reference and
/// the fast step agree on loss and gradients, and their loss differs from the same student's
/// without the sinusoids (so both paths add them).
#[test]
fn pre_ln_with_sinusoids_gradients_match_burn() {
    check_gradients_with(true, vec![2, 1], true);
    let (with, without) = (
        case_with(true, vec![2, 1], true),
        case_with(true, vec![2, 1], false),
    );
    let (mut a, mut b) = (with.fast(), without.fast());
    let a = gradients(&with, &mut a, &with.lengths);
    let b = gradients(&without, &mut b, &without.lengths);
    assert!(
        (a.fast_loss - b.fast_loss).abs() > 1e-3 * b.fast_loss.abs(),
        "the sinusoids change nothing: {} vs {}",
        a.fast_loss,
        b.fast_loss
    );
    assert!((a.burn_loss - b.burn_loss).abs() > 1e-3 * b.burn_loss.abs());
}

#[test]
fn adamw_updates_match_burn() {
    let mut c = case(false, vec![2, 1]);
    let mut fast = c.fast();
    let targets = FastTargets::from_step_targets(&c.targets);
    let before = collect(c.burn.model());
    for _ in 0..3 {
        let features = c.features();
        let burn_loss = c.burn.step(features, &c.lengths.clone(), &c.targets);
        let fast_loss = fast.step(&c.features, &c.lengths, &targets).unwrap();
        assert!(
            (burn_loss - fast_loss).abs() < 1e-4,
            "{burn_loss} vs {fast_loss}"
        );
    }
    let burn_after: Vec<Vec<f32>> = collect(c.burn.model()).into_iter().map(|p| p.1).collect();
    let fast_after: Vec<Vec<f32>> = collect(&fast.export(c.burn.model(), Buffer::Value))
        .into_iter()
        .map(|p| p.1)
        .collect();
    let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max)
    };
    let moved = diff(
        &burn_after,
        &before.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
    );
    let worst = diff(&fast_after, &burn_after);
    eprintln!("after 3 steps: moved {moved}, engines differ by {worst}");
    // Three steps at lr 1e-3 move parameters by up to ~3e-3; the engines agree far closer.
    assert!(moved > 1e-3, "the parameters moved by {moved}");
    assert!(
        worst < 5e-5,
        "parameters after 3 AdamW steps differ by {worst}"
    );
}

/// `head_lr_scale` moves the heads `scale` times as far in one AdamW step (the first step's
/// update is linear in the rate) and leaves the student's update exactly as it was.
#[test]
fn the_head_learning_rate_scale_applies_to_the_heads_only() {
    let c = case(false, vec![2, 1]);
    let targets = FastTargets::from_step_targets(&c.targets);
    let before = c.burn.model().clone();
    let run = |scale: f64| {
        let mut fast = c.fast();
        fast.head_lr_scale = scale;
        fast.step(&c.features, &c.lengths, &targets).unwrap();
        fast.export(c.burn.model(), Buffer::Value)
    };
    let (one, ten) = (run(1.0), run(10.0));
    assert_eq!(
        collect_module(&one.student),
        collect_module(&ten.student),
        "the student's update depends on the heads' rate"
    );
    let deltas = |after: &DistillModel| -> Vec<f32> {
        collect_module(&after.heads)
            .into_iter()
            .zip(collect_module(&before.heads))
            .flat_map(|(a, b)| a.1.into_iter().zip(b.1).map(|(x, y)| x - y))
            .collect()
    };
    let (d1, d10) = (deltas(&one), deltas(&ten));
    let largest = d10.iter().fold(0.0f32, |m, d| m.max(d.abs()));
    let off = d1
        .iter()
        .zip(&d10)
        .fold(0.0f32, |m, (a, b)| m.max((10.0 * a - b).abs()));
    assert!(largest > 1e-3, "the heads moved by {largest}");
    assert!(
        off < 1e-3 * largest,
        "heads at 10x the rate moved {off} away from 10x the update (largest {largest})"
    );
}

/// `head_warmup_steps = 2`: the first two steps leave the student exactly as it was and move
/// the heads; the third moves the student by AdamW's first-step size (about `lr` per weight,
/// its own bias correction: counted from the warm-up's end, the size would be ~0.64 `lr`).
#[test]
fn the_head_warmup_freezes_the_student_then_starts_its_adamw_afresh() {
    let c = case(false, vec![2, 1]);
    let targets = FastTargets::from_step_targets(&c.targets);
    let before = c.burn.model().clone();
    let mut fast = c.fast();
    fast.head_warmup_steps = 2;
    let lr = fast.learning_rate as f32;
    let moved = |a: &DistillModel, b: &DistillModel, heads: bool| -> f32 {
        let (x, y) = if heads {
            (collect_module(&a.heads), collect_module(&b.heads))
        } else {
            (collect_module(&a.student), collect_module(&b.student))
        };
        x.into_iter()
            .zip(y)
            .flat_map(|(a, b)| a.1.into_iter().zip(b.1).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max)
    };
    for step in 1..=2 {
        fast.step(&c.features, &c.lengths, &targets).unwrap();
        let now = fast.export(c.burn.model(), Buffer::Value);
        assert_eq!(
            collect_module(&now.student),
            collect_module(&before.student),
            "the student moved during the heads' warm-up (step {step})"
        );
        assert!(
            moved(&now, &before, true) > 0.5 * lr,
            "the heads did not move"
        );
    }
    let frozen = fast.export(c.burn.model(), Buffer::Value);
    fast.step(&c.features, &c.lengths, &targets).unwrap();
    let after = fast.export(c.burn.model(), Buffer::Value);
    let largest = moved(&after, &frozen, false);
    assert!(
        (0.97 * lr..=1.03 * lr).contains(&largest),
        "the student's first update is {largest}, AdamW's first step is ~{lr}"
    );
}

#[test]
fn a_non_finite_batch_updates_nothing() {
    let c = case(false, vec![2, 1]);
    let mut fast = c.fast();
    let targets = FastTargets::from_step_targets(&c.targets);
    let before = collect(&fast.export(c.burn.model(), Buffer::Value));
    let mut features = c.features.clone();
    features[7] = f32::NAN;
    let error = fast.step(&features, &c.lengths, &targets).unwrap_err();
    // The NaN reaches the loss (no max() swallows it on the way).
    assert!(error.loss.is_nan(), "{error}");
    let after = collect(&fast.export(c.burn.model(), Buffer::Value));
    assert!(
        before.iter().zip(&after).all(|(a, b)| a.1 == b.1),
        "parameters changed"
    );
    // A finite batch afterwards trains as usual (the moments were not poisoned).
    let loss = fast.step(&c.features, &c.lengths, &targets).unwrap();
    assert!(loss.is_finite());
    let moved = collect(&fast.export(c.burn.model(), Buffer::Value));
    assert!(before.iter().zip(&moved).any(|(a, b)| a.1 != b.1));
    assert!(moved.iter().all(|p| p.1.iter().all(|v| v.is_finite())));
}

#[test]
fn a_saved_state_resumes_exactly_and_bad_files_are_refused() {
    let c = case(true, vec![2, 2]);
    let targets = FastTargets::from_step_targets(&c.targets);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    // Run A: four steps straight. Run B: two steps, save, a fresh engine loads, two more.
    let mut a = c.fast();
    let losses_a: Vec<f32> = (0..4)
        .map(|_| a.step(&c.features, &c.lengths, &targets).unwrap())
        .collect();
    let mut b = c.fast();
    for _ in 0..2 {
        b.step(&c.features, &c.lengths, &targets).unwrap();
    }
    b.save_state(&path).unwrap();
    let mut resumed = c.fast();
    resumed.load_state(&path).unwrap();
    let losses_b: Vec<f32> = (0..2)
        .map(|_| resumed.step(&c.features, &c.lengths, &targets).unwrap())
        .collect();
    assert_eq!(
        &losses_a[2..],
        &losses_b[..],
        "the resumed run continues exactly"
    );
    let pa = collect(&a.export(c.burn.model(), Buffer::Value));
    let pb = collect(&resumed.export(c.burn.model(), Buffer::Value));
    assert!(pa.iter().zip(&pb).all(|(x, y)| x.1 == y.1));
    // Negative control: a fresh engine without the state does not continue the same way.
    let mut fresh = c.fast();
    let other = fresh.step(&c.features, &c.lengths, &targets).unwrap();
    assert_ne!(other, losses_a[2]);

    // Another model's state, a corrupt file and a missing one are refused, naming the file,
    // and leave the engine as it was.
    let other_model = case(false, vec![2, 1]);
    let mut post_ln = other_model.fast();
    let error = post_ln
        .load_state(&path)
        .expect_err("another model's state");
    assert!(error.to_string().contains("state.safetensors"), "{error}");
    let corrupt = dir.path().join("corrupt.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let before = collect(&resumed.export(c.burn.model(), Buffer::Value));
    assert!(resumed.load_state(&corrupt).is_err());
    assert!(resumed.load_state(&dir.path().join("missing")).is_err());
    let after = collect(&resumed.export(c.burn.model(), Buffer::Value));
    assert!(before.iter().zip(&after).all(|(x, y)| x.1 == y.1));
}

/// The bf16 mixed-precision step (bf16 products, f32 sums and master weights): on one batch its
/// loss and gradients stay close to the f32 step's, by far less than a small change of the batch
/// moves them (the negative control), and a few updates from the same start land near the f32
/// ones. Where the CPU has neither AMX nor AVX512-BF16 the mode is refused with the reason (and
/// the comparison is reported as skipped); int8 is refused everywhere.
#[test]
fn bf16_mixed_precision_tracks_f32_or_is_refused() {
    use tutti_models::fast::Precision;
    let c = case(false, vec![2, 1]);
    let targets = FastTargets::from_step_targets(&c.targets);
    let mut fast = c.fast();
    let int8 = fast.set_precision(Precision::Int8).unwrap_err();
    assert!(int8.contains("int8"), "{int8}");
    if let Some(why) = Precision::Bf16.unavailable() {
        assert_eq!(fast.set_precision(Precision::Bf16).unwrap_err(), why);
        println!("skipped: the bf16 step's accuracy (this CPU: {why})");
        return;
    }
    let cost = fast
        .precision_cost(Precision::Bf16, &c.features, &c.lengths, &targets)
        .unwrap();
    eprintln!("bf16 against f32 on one batch: {cost:?}");
    assert_eq!(
        fast.precision(),
        Precision::F32,
        "the step's own precision kept"
    );
    assert!(cost.tensors > 20);
    let loss_error = ((cost.loss - cost.loss_f32) / cost.loss_f32).abs();
    assert!(loss_error < 0.01, "loss {} vs {}", cost.loss, cost.loss_f32);
    // The L1 term's gradient is a sign: entries whose prediction lies within bf16's rounding of
    // its target flip, so gradients move by a few percent (this random tiny model: ~5 %).
    assert!(cost.gradient_relative_error < 0.1, "{cost:?}");
    assert!(cost.worst_tensor_cosine > 0.98, "{cost:?}");
    // Negative control: the same measure between f32 gradients of the batch and of the batch
    // with 20 % noise added to its features stands well above the bf16 cost (and the bound).
    fast.loss_and_gradients(&c.features, &c.lengths, &targets);
    let reference = fast.gradients();
    let noisy: Vec<f32> = c
        .features
        .iter()
        .zip(lcg(77, c.features.len()))
        .map(|(v, n)| v + 0.2 * n)
        .collect();
    fast.loss_and_gradients(&noisy, &c.lengths, &targets);
    let moved = fast.gradients();
    let (diff, norm) = moved
        .iter()
        .zip(&reference)
        .fold((0.0f64, 0.0f64), |acc, (a, b)| {
            a.iter().zip(b).fold(acc, |(d, n), (&x, &y)| {
                (d + ((x - y) as f64).powi(2), n + (y as f64).powi(2))
            })
        });
    let control = (diff / norm).sqrt();
    eprintln!("f32 gradients, 20 % feature noise: relative change {control}");
    assert!(
        control > 0.1 && control > 3.0 * cost.gradient_relative_error,
        "the control {control} does not stand out from the bf16 cost {cost:?}"
    );
    // Three updates in each arithmetic from the same start.
    let run = |precision: Precision| {
        let mut fast = c.fast();
        fast.set_precision(precision).unwrap();
        let losses: Vec<f32> = (0..3)
            .map(|_| fast.step(&c.features, &c.lengths, &targets).unwrap())
            .collect();
        (losses, collect(&fast.export(c.burn.model(), Buffer::Value)))
    };
    let (losses32, after32) = run(Precision::F32);
    let (losses16, after16) = run(Precision::Bf16);
    let before = collect(c.burn.model());
    // L2 distances over every parameter (AdamW's first updates are near sign-like, so single
    // parameters with tiny gradients may differ by a whole step).
    let distance = |a: &[(ParamId, Vec<f32>)], b: &[(ParamId, Vec<f32>)]| {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| ((p - q) as f64).powi(2)))
            .sum::<f64>()
            .sqrt()
    };
    let (moved, apart) = (distance(&after32, &before), distance(&after16, &after32));
    eprintln!("3 steps: losses f32 {losses32:?}, bf16 {losses16:?}; moved {moved}, apart {apart}");
    assert!(
        losses16[2] < losses16[0],
        "bf16 training does not lower the loss: {losses16:?}"
    );
    assert!(
        apart < 0.25 * moved,
        "bf16 updates {apart} apart, moved {moved}"
    );
}

/// The external block input (a Whisper student, whose front end is Whisper's, frozen and run
/// outside the step): given the block input the student's own front end makes, the step computes
/// the same loss and the same block and head gradients as from the fbank; no front-end parameter
/// gets a gradient or moves in an update (weight decay included); another input (the negative
/// control) gives another loss.
#[test]
fn an_external_block_input_trains_the_blocks_as_the_own_front_end_does() {
    let c = case_with(true, vec![2, 1], true);
    let targets = FastTargets::from_step_targets(&c.targets);
    let mut own = c.fast();
    let loss_own = own.loss_and_gradients(&c.features, &c.lengths, &targets);
    let own_grads = own.export(c.burn.model(), Buffer::Gradient);

    let out = c.burn.model().student.forward(
        c.features(),
        &c.lengths,
        tutti_models::ForwardOptions {
            target_layer: Some(0),
        },
    );
    let input: Vec<f32> = out.hidden_states[0]
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let mut external = c.fast();
    external.set_external_input().unwrap();
    assert!(external.external_input());
    let loss = external.loss_and_gradients(&input, &out.lengths, &targets);
    assert!(
        (loss - loss_own).abs() <= 1e-5 * loss_own.abs().max(1.0),
        "loss {loss} against {loss_own} from the fbank"
    );
    let grads = external.export(c.burn.model(), Buffer::Gradient);
    let values = |m: Vec<(ParamId, Vec<f32>)>| m.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    for (what, ours, theirs) in [
        (
            "blocks",
            values(collect_module(&grads.student.layers)),
            values(collect_module(&own_grads.student.layers)),
        ),
        (
            "heads",
            values(collect_module(&grads.heads)),
            values(collect_module(&own_grads.heads)),
        ),
    ] {
        let worst = worst_relative(&ours, &theirs);
        assert!(
            worst < 1e-3,
            "{what}' gradients differ by {worst} (relative)"
        );
    }
    let front = |m: &DistillModel| {
        let mut all = values(collect_module(&m.student.subsampler));
        all.extend(values(collect_module(&m.student.pos_conv)));
        all
    };
    assert!(
        front(&grads).iter().flatten().all(|&g| g == 0.0),
        "a front-end parameter has a gradient"
    );
    assert!(
        front(&own_grads).iter().flatten().any(|&g| g != 0.0),
        "the own front end has no gradient: the check cannot fail"
    );
    // An update moves the blocks, not the front end.
    external.step(&input, &out.lengths, &targets).unwrap();
    let after = external.export(c.burn.model(), Buffer::Value);
    assert_eq!(front(&after), front(c.burn.model()), "the front end moved");
    assert_ne!(
        values(collect_module(&after.student.layers)),
        values(collect_module(&c.burn.model().student.layers)),
        "the blocks did not move"
    );
    // Negative control: another block input, another loss.
    // (not a constant shift, which the blocks' LayerNorms would remove)
    let noise = lcg(9, input.len());
    let shifted: Vec<f32> = input.iter().zip(&noise).map(|(v, n)| v + 0.5 * n).collect();
    let mut other = c.fast();
    other.set_external_input().unwrap();
    let off = other.loss_and_gradients(&shifted, &out.lengths, &targets);
    let off_grads = values(collect_module(
        &other
            .export(c.burn.model(), Buffer::Gradient)
            .student
            .layers,
    ));
    let apart = worst_relative(
        &off_grads,
        &values(collect_module(&own_grads.student.layers)),
    );
    assert!(
        off != loss_own && apart > 0.05,
        "another input gives the same loss ({off} against {loss_own}) or gradients ({apart})"
    );
    // A post-LN student is refused.
    let post = case(false, vec![2, 1]);
    assert!(post.fast().set_external_input().is_err());
}
