//! AdamW over burn modules as flat f32 vectors, so its state is plain data: saved and restored
//! with the checkpoint by parameter order (burn's optimizer records key their state by parameter
//! ids, which a model loaded again from disk does not keep). Parameters whose gradient is absent
//! (frozen, `no_grad`) are left as they are and keep no moments.
//!
//! The update is PyTorch's `AdamW` (decoupled weight decay, bias-corrected moments).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// A parameter tensor's values and gradient (`None`: no gradient), as [`gradients`] gives them.
pub type Collected = (Vec<f32>, Option<Vec<f32>>);

/// The moments of one module's parameters, in visiting order (empty where never updated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moments {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// Every float parameter's values and gradient (if any), in visiting order.
struct Collect<'a> {
    grads: &'a Gradients,
    out: Vec<Collected>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let grad = value.grad(self.grads).map(tutti_nn::layers::values);
        let values = grad
            .as_ref()
            .map(|_| tutti_nn::layers::values(value))
            .unwrap_or_default();
        self.out.push((values, grad));
    }
}

/// The gradients of a module's parameters, in visiting order (`None`: no gradient).
pub fn gradients<M: Module>(module: &M, grads: &Gradients) -> Vec<Collected> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Writes new values into the parameters that have one, keeping them trainable.
struct Write {
    values: Vec<Option<Vec<f32>>>,
    at: usize,
}

impl ModuleMapper for Write {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.at;
        self.at += 1;
        match self.values.get_mut(i).and_then(Option::take) {
            Some(values) => param.map(|t| {
                let (shape, device) = (t.shape(), t.device());
                Tensor::from_data(TensorData::new(values, shape), &device).require_grad()
            }),
            None => param,
        }
    }
}

/// Replace the parameters of `module` (visiting order) that have `Some` values.
pub fn write<M: Module>(module: M, values: Vec<Option<Vec<f32>>>) -> M {
    module.map(&mut Write { values, at: 0 })
}

/// Number of float parameter tensors of a module.
pub fn count<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.0 += 1;
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// Global L2 norm of the gradients.
pub fn grad_norm(collected: &[&[Collected]]) -> f64 {
    collected
        .iter()
        .flat_map(|c| c.iter())
        .filter_map(|(_, g)| g.as_ref())
        .flat_map(|g| g.iter())
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt()
}

/// One AdamW update of one module's parameters: `step` is the update's 1-based count, `lr` its
/// learning rate, `clip` the factor the gradients are scaled by (global norm clipping). Returns
/// the new values to [`write`].
pub fn adamw_update(
    collected: Vec<Collected>,
    moments: &mut Moments,
    settings: AdamWSettings,
    step: i32,
    lr: f64,
    clip: f64,
) -> Vec<Option<Vec<f32>>> {
    let n = collected.len();
    moments.m.resize(n, Vec::new());
    moments.v.resize(n, Vec::new());
    let (b1, b2) = (settings.beta1, settings.beta2);
    let c1 = 1.0 - b1.powi(step);
    let c2 = 1.0 - b2.powi(step);
    collected
        .into_iter()
        .enumerate()
        .map(|(i, (mut values, grad))| {
            let grad = grad?;
            let (m, v) = (&mut moments.m[i], &mut moments.v[i]);
            if m.len() != grad.len() {
                *m = vec![0.0; grad.len()];
                *v = vec![0.0; grad.len()];
            }
            for (((p, &g), m), v) in values.iter_mut().zip(&grad).zip(m).zip(v) {
                let g = g as f64 * clip;
                let mi = b1 * *m as f64 + (1.0 - b1) * g;
                let vi = b2 * *v as f64 + (1.0 - b2) * g * g;
                *m = mi as f32;
                *v = vi as f32;
                let pi = *p as f64 * (1.0 - lr * settings.weight_decay);
                *p = (pi - lr * (mi / c1) / ((vi / c2).sqrt() + settings.epsilon)) as f32;
            }
            Some(values)
        })
        .collect()
}

/// Moments as safetensors entries (`<prefix>.<i>.m` / `.v`) for a checkpoint.
pub fn moments_entries(prefix: &str, moments: &Moments) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, (m, v)) in moments.m.iter().zip(&moments.v).enumerate() {
        if !m.is_empty() {
            out.push((format!("{prefix}.{i:05}.m"), m.clone()));
            out.push((format!("{prefix}.{i:05}.v"), v.clone()));
        }
    }
    out
}

/// The moments of `prefix` back from a checkpoint's entries.
pub fn moments_from(
    prefix: &str,
    count: usize,
    entries: &std::collections::HashMap<String, Vec<f32>>,
) -> Moments {
    let mut moments = Moments {
        m: vec![Vec::new(); count],
        v: vec![Vec::new(); count],
    };
    for i in 0..count {
        if let (Some(m), Some(v)) = (
            entries.get(&format!("{prefix}.{i:05}.m")),
            entries.get(&format!("{prefix}.{i:05}.v")),
        ) {
            moments.m[i] = m.clone();
            moments.v[i] = v.clone();
        }
    }
    moments
}
