//! LoRA adapters on a frozen llama: for each chosen projection `W` (`[out, in]`) of each block,
//! `y = x W^T + (alpha / rank) (x A^T) B^T` with `A` `[rank, in]` and `B` `[out, rank]` trainable
//! (PEFT's convention and initialisation: `A` uniform in +-1/sqrt(in), from a seed; `B` zero, so a
//! fresh adapter leaves the model unchanged). Adapters are saved apart from the model, as
//! safetensors (`blk.N.<projection>.lora_a` / `.lora_b`, with the rank, alpha and targets in the
//! header's metadata).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tutti_nn::kernels::{MatMut, MatRef, Threads, matmul};

use crate::llama::{Llama, linear, linear_back};

/// A projection of a llama block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The GGUF tensor name's stem (`blk.N.<name>.weight`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// `(outputs, inputs)` of the projection in `model`.
    pub fn shape(self, model: &Llama) -> (usize, usize) {
        let c = &model.config;
        let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        match self {
            Target::Q => (q, c.dim),
            Target::K | Target::V => (kv, c.dim),
            Target::O => (c.dim, q),
            Target::Gate | Target::Up => (c.ffn, c.dim),
            Target::Down => (c.dim, c.ffn),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// `q`, `k`, `v`, `o`, `gate`, `up`, `down` (or the GGUF stems, or transformers' names).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "q" | "attn_q" | "q_proj" => Target::Q,
            "k" | "attn_k" | "k_proj" => Target::K,
            "v" | "attn_v" | "v_proj" => Target::V,
            "o" | "attn_output" | "o_proj" => Target::O,
            "gate" | "ffn_gate" | "gate_proj" => Target::Gate,
            "up" | "ffn_up" | "up_proj" => Target::Up,
            "down" | "ffn_down" | "down_proj" => Target::Down,
            other => {
                return Err(format!(
                    "unknown LoRA target '{other}' (q, k, v, o, gate, up, down)"
                ));
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
    pub seed: u64,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16 on the query and value projections (PEFT's usual start).
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec![Target::Q, Target::V],
            seed: 0,
        }
    }
}

/// One projection's pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// `[rank, inputs]`
    pub a: Vec<f32>,
    /// `[outputs, rank]`
    pub b: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

/// The adapters of every block (also the shape of their gradients).
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub config: LoraConfig,
    /// `adapters[block][target]`
    pub adapters: Vec<BTreeMap<Target, Adapter>>,
}

impl Lora {
    /// Fresh adapters for `model`: `A` from the seed, `B` zero.
    pub fn new(model: &Llama, config: LoraConfig) -> Result<Self, String> {
        if config.rank == 0 {
            return Err("LoRA rank must be at least 1".into());
        }
        if !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(format!("LoRA alpha must be positive, not {}", config.alpha));
        }
        if config.targets.is_empty() {
            return Err("LoRA needs at least one target projection".into());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let adapters = (0..model.config.layers)
            .map(|_| {
                let mut targets: Vec<Target> = config.targets.clone();
                targets.sort();
                targets.dedup();
                targets
                    .into_iter()
                    .map(|t| {
                        let (outputs, inputs) = t.shape(model);
                        let bound = 1.0 / (inputs as f32).sqrt();
                        let a = (0..config.rank * inputs)
                            .map(|_| rng.random_range(-bound..bound))
                            .collect();
                        let b = vec![0.0; outputs * config.rank];
                        (
                            t,
                            Adapter {
                                a,
                                b,
                                inputs,
                                outputs,
                            },
                        )
                    })
                    .collect()
            })
            .collect();
        Ok(Self { config, adapters })
    }

    pub fn scale(&self) -> f32 {
        self.config.alpha / self.config.rank as f32
    }

    /// The same shapes, all zero (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        for a in z.adapters.iter_mut().flat_map(|m| m.values_mut()) {
            a.a.iter_mut().for_each(|v| *v = 0.0);
            a.b.iter_mut().for_each(|v| *v = 0.0);
        }
        z
    }

    /// Every trainable value, in a fixed order (for an optimiser).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> {
        self.adapters
            .iter_mut()
            .flat_map(|m| m.values_mut())
            .flat_map(|a| a.a.iter_mut().chain(a.b.iter_mut()))
    }

    pub fn values(&self) -> impl Iterator<Item = &f32> {
        self.adapters
            .iter()
            .flat_map(|m| m.values())
            .flat_map(|a| a.a.iter().chain(a.b.iter()))
    }

    pub fn parameters(&self) -> usize {
        self.values().count()
    }

    pub(crate) fn get(&self, block: usize, target: Target) -> Option<&Adapter> {
        self.adapters.get(block).and_then(|m| m.get(&target))
    }

    /// Write the adapters (f32) with their configuration in the header's metadata.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (i, m) in self.adapters.iter().enumerate() {
            for (t, a) in m {
                let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let r = self.config.rank;
                data.push((
                    format!("blk.{i}.{}.lora_a", t.name()),
                    bytes(&a.a),
                    vec![r, a.inputs],
                ));
                data.push((
                    format!("blk.{i}.{}.lora_b", t.name()),
                    bytes(&a.b),
                    vec![a.outputs, r],
                ));
            }
        }
        let views: Vec<(String, TensorView)> = data
            .iter()
            .map(|(n, b, s)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("consistent shapes"),
                )
            })
            .collect();
        let targets: Vec<&str> = self.config.targets.iter().map(|t| t.name()).collect();
        let meta = HashMap::from([
            ("format".to_string(), "tutti-lora".to_string()),
            ("rank".to_string(), self.config.rank.to_string()),
            ("alpha".to_string(), self.config.alpha.to_string()),
            ("targets".to_string(), targets.join(",")),
            ("seed".to_string(), self.config.seed.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Read adapters saved by [`Lora::save`] for `model`; every shape is checked against it.
    pub fn load(path: &Path, model: &Llama) -> Result<Self, String> {
        let fail = |m: String| format!("{}: {m}", path.display());
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("tutti-lora") {
            return Err(fail(
                "not a tutti LoRA file (no format = tutti-lora)".into(),
            ));
        }
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| fail(format!("no '{k}' in the metadata")))
        };
        let rank: usize = field("rank")?
            .parse()
            .map_err(|_| fail("bad rank".into()))?;
        let alpha: f32 = field("alpha")?
            .parse()
            .map_err(|_| fail("bad alpha".into()))?;
        let seed: u64 = field("seed")?
            .parse()
            .map_err(|_| fail("bad seed".into()))?;
        let targets = field("targets")?
            .split(',')
            .map(Target::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let config = LoraConfig {
            rank,
            alpha,
            targets,
            seed,
        };
        let mut lora = Lora::new(model, config)?;
        let r = lora.config.rank;
        for (i, m) in lora.adapters.iter_mut().enumerate() {
            for (t, a) in m.iter_mut() {
                for (suffix, dst, shape) in [
                    ("lora_a", &mut a.a, [r, a.inputs]),
                    ("lora_b", &mut a.b, [a.outputs, r]),
                ] {
                    let name = format!("blk.{i}.{}.{suffix}", t.name());
                    let v = st
                        .tensor(&name)
                        .map_err(|_| fail(format!("no tensor {name}")))?;
                    if v.dtype() != Dtype::F32 || v.shape() != shape {
                        return Err(fail(format!(
                            "{name}: {:?} {:?}, expected F32 {shape:?} for this model",
                            v.dtype(),
                            v.shape()
                        )));
                    }
                    for (d, b) in dst.iter_mut().zip(v.data().chunks_exact(4)) {
                        *d = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                    }
                    if dst.iter().any(|x| !x.is_finite()) {
                        return Err(fail(format!("{name} holds NaN or infinite values")));
                    }
                }
            }
        }
        if st.len() != lora.adapters.iter().map(|m| 2 * m.len()).sum::<usize>() {
            return Err(fail(format!(
                "{} tensors, but the configuration names {}",
                st.len(),
                lora.adapters.iter().map(|m| 2 * m.len()).sum::<usize>()
            )));
        }
        Ok(lora)
    }
}

/// `x W^T`, plus the adapter's `s (x A^T) B^T` when there is one.
pub(crate) fn project(
    x: &[f32],
    rows: usize,
    w: &[f32],
    outputs: usize,
    inputs: usize,
    adapter: Option<(&Adapter, f32)>,
) -> Vec<f32> {
    let mut y = linear(x, rows, w, outputs, inputs);
    if let Some((a, scale)) = adapter {
        let rank = a.a.len() / inputs;
        let xa = linear(x, rows, &a.a, rank, inputs);
        matmul(
            MatMut::new(&mut y, rows, outputs),
            MatRef::new(&xa, rows, rank),
            MatRef::new(&a.b, outputs, rank).t(),
            scale,
            true,
            Threads::Pool,
        );
    }
    y
}

/// The backward of [`project`]: `dx += dy W (+ s dy B A)`, and the adapter's gradients added
/// into `grad` (`dB += s dy^T (x A^T)`, `dA += s (dy B)^T x`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_back(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rows: usize,
    w: &[f32],
    outputs: usize,
    inputs: usize,
    adapter: Option<(&Adapter, f32, &mut Adapter)>,
) {
    linear_back(dx, dy, rows, w, outputs, inputs);
    if let Some((a, scale, g)) = adapter {
        let rank = a.a.len() / inputs;
        let xa = linear(x, rows, &a.a, rank, inputs);
        // d(xa) = s dy B: [rows, rank]
        let mut dxa = vec![0.0f32; rows * rank];
        matmul(
            MatMut::new(&mut dxa, rows, rank),
            MatRef::new(dy, rows, outputs),
            MatRef::new(&a.b, outputs, rank),
            scale,
            false,
            Threads::Pool,
        );
        matmul(
            MatMut::new(&mut g.b, outputs, rank),
            MatRef::new(dy, rows, outputs).t(),
            MatRef::new(&xa, rows, rank),
            scale,
            true,
            Threads::Pool,
        );
        matmul(
            MatMut::new(&mut g.a, rank, inputs),
            MatRef::new(&dxa, rows, rank).t(),
            MatRef::new(x, rows, inputs),
            1.0,
            true,
            Threads::Pool,
        );
        matmul(
            MatMut::new(dx, rows, inputs),
            MatRef::new(&dxa, rows, rank),
            MatRef::new(&a.a, rank, inputs),
            1.0,
            true,
            Threads::Pool,
        );
    }
}
