//! The audio-LM on held-out instruction pairs: greedy answers, exact match after answer
//! normalisation per task, word error rate for transcription; tasks held out of training are
//! marked zero-shot.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tutti_data::instruct::{InstructPair, normalise_answer, word_error_rate};
use tutti_lm::generate::Sampling;

use crate::model::AudioLm;
use crate::train::AlignError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub pairs: usize,
    /// Share of exact matches after normalisation.
    pub accuracy: f64,
    /// Mean word error rate (transcription only).
    pub wer: Option<f64>,
    /// Never trained on.
    pub zero_shot: bool,
    /// Share of the most frequent answer among the evaluated pairs (what always answering it
    /// would score).
    pub majority: f64,
    /// The router's mean expert weights over the task's pairs (fusion audio-LMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub task: String,
    pub instruction: String,
    pub expected: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub tasks: Vec<TaskScore>,
    pub answers: Vec<Answer>,
    pub secs: f64,
}

/// Longest answer generated per task.
pub fn max_new_tokens(task: &str) -> usize {
    if task == "transcribe" { 64 } else { 12 }
}

/// Answer up to `per_task` pairs of each task (spread over the list) and score them.
pub fn evaluate(
    alm: &AudioLm,
    pairs: &[InstructPair],
    pool: &Path,
    hold_out: &[String],
    per_task: usize,
    progress: &mut dyn FnMut(&Answer),
) -> Result<EvalReport, AlignError> {
    let start = std::time::Instant::now();
    let mut by_task: BTreeMap<&str, Vec<&InstructPair>> = BTreeMap::new();
    for p in pairs {
        by_task.entry(&p.task).or_default().push(p);
    }
    let rate = alm.sample_rate_hz();
    let mut tasks = Vec::new();
    let mut answers = Vec::new();
    for (task, list) in by_task {
        let n = list.len().min(per_task.max(1));
        let chosen: Vec<&InstructPair> = (0..n).map(|i| list[i * list.len() / n]).collect();
        let (mut hits, mut wer) = (0usize, 0.0f64);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut router: Option<Vec<f64>> = None;
        for p in &chosen {
            let path = pool.join(&p.audio);
            let audio = tutti_audio::decode::load_audio(
                &path,
                &tutti_audio::decode::LoadOptions {
                    target_rate_hz: Some(rate),
                    ..Default::default()
                },
            )
            .map_err(|e| AlignError(format!("{}: {e}", path.display())))?;
            let text = alm
                .answer(
                    &audio.samples,
                    &p.instruction,
                    max_new_tokens(task),
                    Sampling::GREEDY,
                    |_| true,
                )
                .map_err(|e| AlignError(format!("{}: {e}", p.id)))?;
            let weights = match &alm.front {
                crate::model::Front::Fusion(f) => Some(
                    f.router_weights(&p.instruction)
                        .map_err(|e| AlignError(format!("{}: {e}", p.id)))?,
                ),
                crate::model::Front::Adapter { .. } => None,
            };
            if let Some(w) = &weights {
                let sum = router.get_or_insert_with(|| vec![0.0; w.len()]);
                sum.iter_mut()
                    .zip(w)
                    .for_each(|(a, b)| *a += *b as f64 / n as f64);
            }
            if normalise_answer(&text) == normalise_answer(&p.answer) {
                hits += 1;
            }
            *counts.entry(normalise_answer(&p.answer)).or_default() += 1;
            if task == "transcribe" {
                wer += word_error_rate(&p.answer, &text);
            }
            let a = Answer {
                id: p.id.clone(),
                task: task.to_string(),
                instruction: p.instruction.clone(),
                expected: p.answer.clone(),
                answer: text,
                router: weights,
            };
            progress(&a);
            answers.push(a);
        }
        tasks.push(TaskScore {
            task: task.to_string(),
            pairs: n,
            accuracy: hits as f64 / n as f64,
            wer: (task == "transcribe").then(|| wer / n as f64),
            zero_shot: hold_out.iter().any(|h| h == task),
            majority: counts.values().max().copied().unwrap_or(0) as f64 / n as f64,
            router,
        });
    }
    Ok(EvalReport {
        tasks,
        answers,
        secs: start.elapsed().as_secs_f64(),
    })
}
