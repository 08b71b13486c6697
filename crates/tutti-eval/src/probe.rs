//! Trained probes on frozen embeddings (PAPERS.md section 4):
//! - `linear`: LayerNorm + Linear (X-ARES): AdamW, lr 1e-3, 10 epochs, batch 32, cosine decay;
//! - `mlp`: LayerNorm + Linear + ReLU + Linear (one hidden layer), the same schedule, its width and
//!   learning rate chosen on the validation split from a small grid.
//!
//! Multiclass targets use cross-entropy, multilabel targets binary cross-entropy on logits,
//! regression mean squared error on the standardised value (the prediction is mapped back). The
//! data order is shuffled each epoch from a seeded RNG, so a probe is deterministic for a seed.

use burn::module::Module;
use burn::nn::loss::{BinaryCrossEntropyLossConfig, CrossEntropyLossConfig, MseLoss, Reduction};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{relu, sigmoid, softmax};
use rayon::prelude::*;
use tutti_data::task::Metric;

use crate::targets::Targets;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Probe settings; defaults are X-ARES's.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// `None` = linear probe; `Some(width)` = one hidden layer of that width.
    pub hidden: Option<usize>,
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            hidden: None,
            learning_rate: 1e-3,
            epochs: 10,
            batch_size: 32,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

#[derive(Module, Debug)]
pub struct ProbeModel {
    pub norm: LayerNorm,
    pub hidden: Option<Linear>,
    pub output: Linear,
}

impl ProbeModel {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.norm.forward(x);
        match &self.hidden {
            Some(hidden) => self.output.forward(relu(hidden.forward(x))),
            None => self.output.forward(x),
        }
    }
}

/// What the output layer is read as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Head {
    Softmax,
    Sigmoid,
    /// A standardised value: `prediction * std + mean`.
    Value {
        mean: f64,
        std: f64,
    },
}

/// A trained probe, ready to score embeddings.
#[derive(Debug)]
pub struct Probe {
    model: ProbeModel,
    device: Device,
    dim: usize,
    outputs: usize,
    head: Head,
}

/// A tiny deterministic generator for shuffling (xorshift64*).
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Train a probe on `embeddings` (`[items, dim]` row-major) and `targets`.
pub fn train_probe(
    embeddings: &[f32],
    targets: &Targets,
    dim: usize,
    config: &ProbeConfig,
) -> Probe {
    let device = tutti_nn::device::cpu().autodiff();
    let outputs = targets.outputs();
    let mut model = tutti_nn::device::seeded(&device, config.seed, || {
        Ok::<_, std::convert::Infallible>(ProbeModel {
            norm: LayerNormConfig::new(dim).init(&device),
            hidden: config
                .hidden
                .map(|h| LinearConfig::new(dim, h).init(&device)),
            output: LinearConfig::new(config.hidden.unwrap_or(dim), outputs).init(&device),
        })
    })
    .expect("infallible");
    let head = match targets {
        Targets::Classes { .. } => Head::Softmax,
        Targets::Multilabel { .. } => Head::Sigmoid,
        Targets::Values(v) => {
            let n = v.len().max(1) as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            Head::Value {
                mean,
                std: var.sqrt().max(1e-8),
            }
        }
    };
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let items = targets.len();
    let steps_per_epoch = items.div_ceil(config.batch_size).max(1);
    let total_steps = (steps_per_epoch * config.epochs).max(1);
    let mut order: Vec<usize> = (0..items).collect();
    let mut shuffler = Shuffler(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let cross_entropy = CrossEntropyLossConfig::new().init(&device);
    let binary = BinaryCrossEntropyLossConfig::new()
        .with_logits(true)
        .init(&device);
    let mut step = 0usize;
    for _ in 0..config.epochs {
        shuffler.shuffle(&mut order);
        for batch in order.chunks(config.batch_size) {
            let mut x = Vec::with_capacity(batch.len() * dim);
            for &i in batch {
                x.extend_from_slice(&embeddings[i * dim..(i + 1) * dim]);
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), dim]), &device);
            let logits = model.forward(x);
            let loss = match targets {
                Targets::Classes { index, .. } => {
                    let y: Vec<i64> = batch.iter().map(|&i| index[i] as i64).collect();
                    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch.len()]), &device);
                    cross_entropy.forward(logits, y)
                }
                Targets::Multilabel { positive, classes } => {
                    let y: Vec<i64> = batch
                        .iter()
                        .flat_map(|&i| positive[i * classes..(i + 1) * classes].iter())
                        .map(|&p| p as i64)
                        .collect();
                    let y = Tensor::<2, Int>::from_data(
                        TensorData::new(y, [batch.len(), *classes]),
                        &device,
                    );
                    binary.forward(logits, y)
                }
                Targets::Values(v) => {
                    let Head::Value { mean, std } = head else {
                        unreachable!("regression has a value head")
                    };
                    let y: Vec<f32> = batch
                        .iter()
                        .map(|&i| ((v[i] - mean) / std) as f32)
                        .collect();
                    let y = Tensor::<2>::from_data(TensorData::new(y, [batch.len(), 1]), &device);
                    MseLoss::new().forward(logits, y, Reduction::Mean)
                }
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // Cosine decay from the base learning rate to 0 over all steps.
            let progress = step as f64 / total_steps as f64;
            let lr = config.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            model = optimizer.step(lr, model, grads);
            step += 1;
        }
    }
    let inference = tutti_nn::device::cpu();
    Probe {
        model: model.valid().to_device(&inference),
        device: inference,
        dim,
        outputs,
        head,
    }
}

/// Train one probe per configuration of `grid` and keep the one with the best validation
/// `metric` (the first on ties); returns it with its index in `grid` and validation score.
pub fn select_on_validation(
    train: (&[f32], &Targets),
    validation: (&[f32], &Targets),
    dim: usize,
    metric: Metric,
    grid: &[ProbeConfig],
) -> Result<(Probe, usize, f64), String> {
    // The configurations train in parallel (each is a small, single-threaded job, seeded on its
    // own, so the result does not depend on the thread count); the choice runs in grid order.
    let trained: Vec<Result<(Probe, f64), String>> = grid
        .par_iter()
        .map(|config| {
            let probe = train_probe(train.0, train.1, dim, config);
            let score = validation.1.score(metric, &probe.scores(validation.0))?;
            Ok((probe, score))
        })
        .collect();
    let mut best: Option<(Probe, usize, f64)> = None;
    for (index, result) in trained.into_iter().enumerate() {
        let (probe, score) = result?;
        if best.as_ref().is_none_or(|b| score > b.2) {
            best = Some((probe, index, score));
        }
    }
    best.ok_or_else(|| "an empty probe grid".to_string())
}

/// The MLP grid (HEAR-style, small): hidden width x learning rate.
pub fn mlp_grid() -> Vec<ProbeConfig> {
    [256, 1024]
        .into_iter()
        .flat_map(|width| {
            [1e-3, 1e-4].into_iter().map(move |lr| ProbeConfig {
                hidden: Some(width),
                learning_rate: lr,
                ..ProbeConfig::default()
            })
        })
        .collect()
}

impl Probe {
    /// Predictions `[items, outputs]`, row-major: class probabilities (multiclass), label
    /// probabilities (multilabel) or values (regression).
    pub fn scores(&self, embeddings: &[f32]) -> Vec<f64> {
        let items = embeddings.len() / self.dim;
        let x = Tensor::<2>::from_data(
            TensorData::new(embeddings.to_vec(), [items, self.dim]),
            &self.device,
        );
        let y = self.model.forward(x);
        let y = match self.head {
            Head::Softmax => softmax(y, 1),
            Head::Sigmoid => sigmoid(y),
            Head::Value { .. } => y,
        };
        let values = y.into_data().try_to_vec::<f32>().expect("f32 output");
        match self.head {
            Head::Value { mean, std } => {
                values.into_iter().map(|v| v as f64 * std + mean).collect()
            }
            _ => values.into_iter().map(f64::from).collect(),
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::predictions;
    use crate::metrics::{accuracy, r2_score};

    fn classes(y: &[usize]) -> Targets {
        Targets::Classes {
            index: y.to_vec(),
            classes: 3,
        }
    }

    /// Three Gaussian clusters in 8 dimensions; `shuffle_labels` destroys the relation.
    fn clusters(items: usize, seed: u64, shuffle_labels: bool) -> (Vec<f32>, Vec<usize>) {
        let mut rng = Shuffler(seed | 1);
        let mut uniform = || (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..items {
            let class = i % 3;
            for d in 0..8 {
                let centre = if d == class { 3.0 } else { 0.0 };
                x.push((centre + (uniform() - 0.5) * 2.0) as f32);
            }
            y.push(class);
        }
        if shuffle_labels {
            let mut order: Vec<usize> = (0..items).collect();
            Shuffler(seed.wrapping_add(99) | 1).shuffle(&mut order);
            y = order.iter().map(|&i| y[i]).collect();
        }
        (x, y)
    }

    #[test]
    fn probes_learn_separable_classes_and_not_noise() {
        let (train_x, train_y) = clusters(300, 1, false);
        let (test_x, test_y) = clusters(90, 2, false);
        for hidden in [None, Some(16)] {
            let config = ProbeConfig {
                hidden,
                epochs: 20,
                learning_rate: 1e-2,
                ..ProbeConfig::default()
            };
            let probe = train_probe(&train_x, &classes(&train_y), 8, &config);
            let acc = accuracy(&test_y, &predictions(&probe.scores(&test_x), 3));
            assert!(acc > 0.95, "{hidden:?}: {acc}");
            // Negative control: trained on shuffled labels, the probe is near chance.
            let (noise_x, noise_y) = clusters(300, 1, true);
            let probe = train_probe(&noise_x, &classes(&noise_y), 8, &config);
            let acc = accuracy(&test_y, &predictions(&probe.scores(&test_x), 3));
            assert!(acc < 0.6, "{hidden:?} learned noise: {acc}");
        }
    }

    #[test]
    fn validation_picks_the_configuration_that_generalises() {
        let (train_x, train_y) = clusters(150, 4, false);
        let (val_x, val_y) = clusters(60, 5, false);
        // A learning rate of 0 leaves the probe at its initialisation: validation must reject it.
        let grid = vec![
            ProbeConfig {
                learning_rate: 0.0,
                ..ProbeConfig::default()
            },
            ProbeConfig {
                learning_rate: 1e-2,
                epochs: 20,
                ..ProbeConfig::default()
            },
        ];
        let (_, index, accuracy) = select_on_validation(
            (&train_x, &classes(&train_y)),
            (&val_x, &classes(&val_y)),
            8,
            Metric::Accuracy,
            &grid,
        )
        .unwrap();
        assert_eq!(index, 1);
        assert!(accuracy > 0.95);
        assert_eq!(mlp_grid().len(), 4);
    }

    #[test]
    fn parallel_selection_equals_training_one_by_one() {
        let (train_x, train_y) = clusters(90, 6, false);
        let (val_x, val_y) = clusters(45, 7, false);
        let (train_t, val_t) = (classes(&train_y), classes(&val_y));
        let grid: Vec<ProbeConfig> = mlp_grid()
            .into_iter()
            .map(|c| ProbeConfig { epochs: 3, ..c })
            .collect();
        let one_by_one: Vec<f64> = grid
            .iter()
            .map(|c| {
                let probe = train_probe(&train_x, &train_t, 8, c);
                val_t
                    .score(Metric::Accuracy, &probe.scores(&val_x))
                    .unwrap()
            })
            .collect();
        let (probe, index, score) = select_on_validation(
            (&train_x, &train_t),
            (&val_x, &val_t),
            8,
            Metric::Accuracy,
            &grid,
        )
        .unwrap();
        let best = one_by_one
            .iter()
            .enumerate()
            .fold(0, |b, (i, s)| if *s > one_by_one[b] { i } else { b });
        assert_eq!((index, score), (best, one_by_one[best]));
        let alone = train_probe(&train_x, &train_t, 8, &grid[index]).scores(&val_x);
        assert_eq!(probe.scores(&val_x), alone);
    }

    #[test]
    fn a_probe_is_deterministic_for_a_seed() {
        let (x, y) = clusters(60, 3, false);
        let config = ProbeConfig {
            epochs: 2,
            ..ProbeConfig::default()
        };
        let a = train_probe(&x, &classes(&y), 8, &config).scores(&x);
        let b = train_probe(&x, &classes(&y), 8, &config).scores(&x);
        assert_eq!(a, b);
    }

    #[test]
    fn regression_and_multilabel_probes_learn_and_not_noise() {
        // The value is a linear function of the features plus a large offset and scale (the
        // standardisation must undo them); the labels are "feature d is high".
        let (x, _) = clusters(300, 7, false);
        let (tx, _) = clusters(90, 8, false);
        let value = |rows: &[f32]| -> Vec<f64> {
            rows.chunks_exact(8)
                .map(|r| 1000.0 + 50.0 * (r[0] as f64 - 2.0 * r[1] as f64 + r[2] as f64))
                .collect()
        };
        let config = ProbeConfig {
            epochs: 30,
            learning_rate: 1e-2,
            ..ProbeConfig::default()
        };
        let probe = train_probe(&x, &Targets::Values(value(&x)), 8, &config);
        let r2 = r2_score(&value(&tx), &probe.scores(&tx));
        assert!(r2 > 0.9, "{r2}");
        // Negative control: values shuffled against the features.
        let mut shuffled = value(&x);
        Shuffler(5).shuffle(&mut shuffled);
        let probe = train_probe(&x, &Targets::Values(shuffled), 8, &config);
        let r2 = r2_score(&value(&tx), &probe.scores(&tx));
        assert!(r2 < 0.3, "learned noise: {r2}");

        let labels = |rows: &[f32]| -> Vec<bool> {
            rows.chunks_exact(8)
                .flat_map(|r| (0..3).map(move |d| r[d] > 1.5))
                .collect()
        };
        let targets = Targets::Multilabel {
            positive: labels(&x),
            classes: 3,
        };
        let test = Targets::Multilabel {
            positive: labels(&tx),
            classes: 3,
        };
        let probe = train_probe(&x, &targets, 8, &config);
        let map = test.score(Metric::Map, &probe.scores(&tx)).unwrap();
        assert!(map > 0.95, "{map}");
        let mut noisy = labels(&x);
        Shuffler(9).shuffle(&mut noisy);
        let probe = train_probe(
            &x,
            &Targets::Multilabel {
                positive: noisy,
                classes: 3,
            },
            8,
            &config,
        );
        let map = test.score(Metric::Map, &probe.scores(&tx)).unwrap();
        assert!(map < 0.6, "learned noise: {map}");
    }
}
