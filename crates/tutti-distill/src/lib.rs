//! tutti-distill: multi-teacher, layer-to-layer distillation (USAD / USAD 2.0, PAPERS.md §2).
//!
//! This first part holds the pieces a training step needs: the loss, the per-teacher prediction
//! heads, the student/teacher layer mapping, frame-rate alignment, domain-aware teacher weights,
//! and one complete step (forward, backward, AdamW) that the speed benchmark times and the full
//! trainer will reuse.

pub mod acoustic;
pub mod align;
pub mod fast;
pub mod frontfit;
pub mod heads;
pub mod loss;
pub mod recipe;
pub mod step;
pub mod teacher;
pub mod train;
pub mod weights;

pub use fast::{
    FastDistillStep, FastTargets, NonFiniteStep, PrecisionCost, StateError, StepReport,
};
pub use heads::PredictionHead;
pub use loss::distillation_loss;
pub use step::{DistillModel, DistillStep, StepTargets};
pub use weights::domain_weights;
