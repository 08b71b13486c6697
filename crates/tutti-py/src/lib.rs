//! `tutti._tutti`: the Rust core of the Python package. The Python layer (`python/tutti`)
//! turns paths, arrays of any supported dtype and layout, and lists into mono float32 arrays at
//! a known rate; this module decodes, resamples, embeds and computes features, with the GIL
//! released during compute, and raises `tutti.AudioError` / `tutti.ModelError` with the file and
//! the reason.
//!
//! `Encoder()` without a model loads `$TUTTI_MODEL` or `$TUTTI_HOME/models/default`.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tutti_audio::{
    FbankConfig, KaldiFbank, LoadOptions, WhisperMel, WhisperMelConfig, load_audio,
    resample::resample,
};
use tutti_models::{
    AudioEncoder, EmbedOptions, Embedder, Embedding, LayerSelection, Pooling, Precision,
    load_encoder_with,
};

pyo3::create_exception!(
    _tutti,
    AudioError,
    PyException,
    "Audio that cannot be read or used."
);
pyo3::create_exception!(
    _tutti,
    ModelError,
    PyException,
    "A model that cannot be loaded, or a bad request to one."
);

/// The default model directory: `$TUTTI_MODEL`, else `$TUTTI_HOME/models/default` (what
/// `scripts/quickstart.sh` or `tutti init` / `tutti export -o` put there). No trained model is
/// embedded yet: the first distilled student scored below the random initialisation at its last
/// layer (README, Distillation), so none ships.
fn default_model_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("TUTTI_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            tutti_models::teachers::tutti_home()
                .join("models")
                .join("default")
        });
    if dir.join("config.json").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "no default model at {} (set TUTTI_MODEL, pass a model directory, or create one with \
             `tutti init --preset small -o {}`)",
            dir.display(),
            dir.display()
        ))
    }
}

/// What went wrong inside a call with the GIL released.
enum Fail {
    Audio(String),
    Model(String),
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> PyErr {
        match f {
            Fail::Audio(m) => AudioError::new_err(m),
            Fail::Model(m) => ModelError::new_err(m),
        }
    }
}

fn model_err(e: impl std::fmt::Display) -> PyErr {
    ModelError::new_err(e.to_string())
}

fn audio_err(e: impl std::fmt::Display) -> PyErr {
    AudioError::new_err(e.to_string())
}

/// Samples at `rate` checked and brought to `target` Hz.
fn prepare(samples: &[f32], rate: u32, target: u32, what: &str) -> Result<Vec<f32>, String> {
    if samples.is_empty() {
        return Err(format!("{what}: empty audio"));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(format!("{what}: sample {i} is NaN or infinite"));
    }
    if rate == 0 {
        return Err(format!("{what}: sample rate 0"));
    }
    if rate == target {
        Ok(samples.to_vec())
    } else {
        resample(samples, rate, target).map_err(|e| format!("{what}: {e}"))
    }
}

/// An encoder with its thread pool.
#[pyclass(module = "tutti._tutti", frozen)]
struct Encoder {
    model: Box<dyn AudioEncoder>,
    path: PathBuf,
    pool: rayon::ThreadPool,
}

fn embedding_to_py<'py>(py: Python<'py>, e: Embedding) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match e {
        Embedding::Clip(c) => {
            let shape = if c.layers.len() == 1 {
                vec![c.dim]
            } else {
                vec![c.layers.len(), c.dim]
            };
            d.set_item("values", PyArray1::from_vec(py, c.values).reshape(shape)?)?;
            d.set_item("layers", c.layers)?;
        }
        Embedding::Frames(f) => {
            // float32 seconds, as `tutti embed` writes them.
            let times: Vec<f32> = f.timestamps_secs().iter().map(|&t| t as f32).collect();
            let shape = if f.layers.len() == 1 {
                vec![f.frames, f.dim]
            } else {
                vec![f.layers.len(), f.frames, f.dim]
            };
            d.set_item("values", PyArray1::from_vec(py, f.values).reshape(shape)?)?;
            d.set_item("timestamps", PyArray1::from_vec(py, times))?;
            d.set_item("layers", f.layers)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl Encoder {
    /// `model`: a model directory (tutti, Hugging Face checkpoint, teacher), or None for the
    /// embedded default. `threads`: worker threads (None: all cores). `precision`: "f32",
    /// "int8" or "bf16" (CPUs with AMX or AVX512-BF16).
    #[new]
    #[pyo3(signature = (model=None, threads=None, precision="f32"))]
    fn new(model: Option<PathBuf>, threads: Option<usize>, precision: &str) -> PyResult<Self> {
        let precision: Precision = precision
            .parse()
            .map_err(|e: String| PyValueError::new_err(e))?;
        let path = match model {
            Some(p) => p,
            None => default_model_dir().map_err(model_err)?,
        };
        if !path.exists() {
            return Err(ModelError::new_err(format!(
                "{}: no such model directory",
                path.display()
            )));
        }
        let loaded =
            load_encoder_with(&path, &tutti_nn::device::cpu(), precision).map_err(model_err)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .build()
            .map_err(|e| PyValueError::new_err(format!("threads: {e}")))?;
        Ok(Self {
            model: loaded,
            path,
            pool,
        })
    }

    /// The model directory this encoder was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Sample rate, hop, layers, width and name.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.model.info();
        let d = PyDict::new(py);
        d.set_item("name", i.name.clone())?;
        d.set_item("sample_rate", i.sample_rate_hz)?;
        d.set_item("hop_samples", i.hop_samples)?;
        d.set_item("frame_rate_hz", i.frame_rate_hz())?;
        d.set_item("num_layers", i.num_layers)?;
        d.set_item("hidden_size", i.hidden_size)?;
        d.set_item("threads", self.pool.current_num_threads())?;
        Ok(d)
    }

    /// Embed mono float32 `samples` at `sample_rate` (resampled to the model's rate).
    #[pyo3(signature = (samples, sample_rate, layer="last", pool="mean", what="array"))]
    fn embed_samples<'py>(
        &self,
        py: Python<'py>,
        samples: PyReadonlyArray1<'py, f32>,
        sample_rate: u32,
        layer: &str,
        pool: &str,
        what: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let options = options(layer, pool)?;
        let target = self.model.info().sample_rate_hz;
        let owned: Vec<f32> = match samples.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => samples.as_array().iter().copied().collect(),
        };
        let what = what.to_string();
        let result = py.detach(|| {
            let samples = prepare(&owned, sample_rate, target, &what).map_err(Fail::Audio)?;
            self.run(&samples, options, &what)
        });
        embedding_to_py(py, result?)
    }

    /// Decode `path` (mono, resampled to the model's rate) and embed it.
    #[pyo3(signature = (path, layer="last", pool="mean", max_duration_secs=None))]
    fn embed_file<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        layer: &str,
        pool: &str,
        max_duration_secs: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let options = options(layer, pool)?;
        let target = self.model.info().sample_rate_hz;
        let result = py.detach(|| {
            let mut load = LoadOptions {
                target_rate_hz: Some(target),
                ..LoadOptions::default()
            };
            if let Some(m) = max_duration_secs {
                load.max_duration_secs = m;
            }
            let audio = load_audio(&path, &load).map_err(|e| Fail::Audio(e.to_string()))?;
            self.run(&audio.samples, options, &path.display().to_string())
        });
        embedding_to_py(py, result?)
    }

    fn __repr__(&self) -> String {
        let i = self.model.info();
        format!(
            "tutti.Encoder({:?}: {} layers x {}, {} Hz, {} threads)",
            self.path.display().to_string(),
            i.num_layers,
            i.hidden_size,
            i.sample_rate_hz,
            self.pool.current_num_threads()
        )
    }
}

impl Encoder {
    fn run(&self, samples: &[f32], options: EmbedOptions, what: &str) -> Result<Embedding, Fail> {
        self.pool.install(|| {
            let embedder = Embedder::new(self.model.as_ref(), options)
                .map_err(|e| Fail::Model(e.to_string()))?;
            embedder.embed(samples).map_err(|e| match e {
                tutti_models::ModelError::Audio(a) => Fail::Audio(format!("{what}: {a}")),
                tutti_models::ModelError::Input(i) => Fail::Audio(format!("{what}: {i}")),
                other => Fail::Model(format!("{what}: {other}")),
            })
        })
    }
}

fn options(layer: &str, pool: &str) -> PyResult<EmbedOptions> {
    let layer: LayerSelection = layer
        .parse()
        .map_err(|e: String| PyValueError::new_err(e))?;
    let pooling = match pool {
        "mean" => Pooling::Mean,
        "none" => Pooling::None,
        other => {
            return Err(PyValueError::new_err(format!(
                "pool must be 'mean' or 'none', not {other:?}"
            )));
        }
    };
    Ok(EmbedOptions {
        layer,
        pooling,
        ..EmbedOptions::default()
    })
}

/// Decode an audio file to mono float32 at `sample_rate` (None keeps the file's rate); returns
/// `(samples, rate)`.
#[pyfunction]
#[pyo3(signature = (path, sample_rate=Some(16000)))]
fn load_audio_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    sample_rate: Option<u32>,
) -> PyResult<(Bound<'py, PyArray1<f32>>, u32)> {
    let audio = py
        .detach(|| {
            load_audio(
                &path,
                &LoadOptions {
                    target_rate_hz: sample_rate,
                    ..LoadOptions::default()
                },
            )
        })
        .map_err(audio_err)?;
    let rate = audio.sample_rate_hz;
    Ok((PyArray1::from_vec(py, audio.samples), rate))
}

/// Features of mono float32 samples at 16 kHz: `kind` "fbank" (Kaldi, 128 bins, as the tutti
/// encoder uses) or "whisper-mel" (80 bins, padded to 30 s unless `pad` is False).
#[pyfunction]
#[pyo3(signature = (samples, kind="fbank", pad=true, what="array"))]
fn features_samples<'py>(
    py: Python<'py>,
    samples: PyReadonlyArray1<'py, f32>,
    kind: &str,
    pad: bool,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let owned: Vec<f32> = samples.as_array().iter().copied().collect();
    let what = what.to_string();
    let kind = kind.to_string();
    let out = py.detach(|| -> Result<tutti_audio::Features, String> {
        let s = prepare(&owned, 16_000, 16_000, &what)?;
        match kind.as_str() {
            "fbank" => KaldiFbank::new(FbankConfig::default())
                .and_then(|f| f.compute(&s))
                .map_err(|e| format!("{what}: {e}")),
            "whisper-mel" => WhisperMel::new(WhisperMelConfig {
                pad_to_samples: if pad { Some(480_000) } else { None },
                ..WhisperMelConfig::default()
            })
            .and_then(|f| f.compute(&s))
            .map_err(|e| format!("{what}: {e}")),
            other => Err(format!(
                "kind must be 'fbank' or 'whisper-mel', not {other:?}"
            )),
        }
    });
    let f = out.map_err(audio_err)?;
    Ok(PyArray1::from_vec(py, f.data)
        .reshape([f.frames, f.bins])?
        .into_any())
}

/// Mono float32 samples from `rate_in` to `rate_out` Hz (the resampler files go through).
#[pyfunction]
#[pyo3(signature = (samples, rate_in, rate_out, what="array"))]
fn resample_samples<'py>(
    py: Python<'py>,
    samples: PyReadonlyArray1<'py, f32>,
    rate_in: u32,
    rate_out: u32,
    what: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let owned: Vec<f32> = samples.as_array().iter().copied().collect();
    let what = what.to_string();
    let out = py
        .detach(|| {
            if rate_out == 0 {
                return Err(format!("{what}: target rate 0"));
            }
            prepare(&owned, rate_in, rate_out, &what)
        })
        .map_err(audio_err)?;
    Ok(PyArray1::from_vec(py, out))
}

/// The default model's directory ($TUTTI_MODEL, else $TUTTI_HOME/models/default).
#[pyfunction]
fn default_model() -> PyResult<PathBuf> {
    default_model_dir().map_err(model_err)
}

#[pymodule]
fn _tutti(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()?;
    m.add_function(wrap_pyfunction!(load_audio_file, m)?)?;
    m.add_function(wrap_pyfunction!(features_samples, m)?)?;
    m.add_function(wrap_pyfunction!(default_model, m)?)?;
    m.add_function(wrap_pyfunction!(resample_samples, m)?)?;
    m.add("AudioError", m.py().get_type::<AudioError>())?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
