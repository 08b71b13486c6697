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
                crate::model::Front::Adapter { .. } | crate::model::Front::Direct { .. } => None,
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

/// The mean accuracy over a report's trained (not zero-shot) tasks.
pub fn mean_accuracy(report: &EvalReport) -> f64 {
    let trained: Vec<f64> = report
        .tasks
        .iter()
        .filter(|t| !t.zero_shot)
        .map(|t| t.accuracy)
        .collect();
    trained.iter().sum::<f64>() / trained.len().max(1) as f64
}

/// Several models' instruction tests side by side as a markdown table: accuracy per task (WER
/// beside transcription's, zero-shot tasks marked), the mean over trained tasks, and each
/// routed model's mean expert weights per task.
pub fn comparison_table(reports: &[(String, EvalReport)]) -> String {
    let mut tasks: Vec<&str> = reports
        .iter()
        .flat_map(|(_, r)| r.tasks.iter().map(|t| t.task.as_str()))
        .collect();
    tasks.sort();
    tasks.dedup();
    let mut out = format!(
        "| model | {} | mean (trained tasks) |\n|---|{}---|\n",
        tasks.join(" | "),
        "---|".repeat(tasks.len())
    );
    for (name, r) in reports {
        let cells: Vec<String> = tasks
            .iter()
            .map(|task| match r.tasks.iter().find(|t| t.task == *task) {
                None => String::new(),
                Some(t) => {
                    let mut c = format!("{:.2}", t.accuracy);
                    if let Some(w) = t.wer {
                        c.push_str(&format!(" (WER {w:.2})"));
                    }
                    if t.zero_shot {
                        c.push_str(" (zero-shot)");
                    }
                    c
                }
            })
            .collect();
        out.push_str(&format!(
            "| {name} | {} | {:.3} |\n",
            cells.join(" | "),
            mean_accuracy(r)
        ));
    }
    let routed: Vec<&(String, EvalReport)> = reports
        .iter()
        .filter(|(_, r)| {
            r.tasks
                .iter()
                .any(|t| t.router.as_ref().is_some_and(|w| w.len() > 1))
        })
        .collect();
    if !routed.is_empty() {
        out.push_str("\nMean router weights per task (experts 1 / 2 / 3):\n\n");
        for (name, r) in routed {
            let parts: Vec<String> = r
                .tasks
                .iter()
                .filter_map(|t| {
                    t.router.as_ref().map(|w| {
                        let w: Vec<String> = w.iter().map(|x| format!("{x:.2}")).collect();
                        format!("{} {}", t.task, w.join(" / "))
                    })
                })
                .collect();
            out.push_str(&format!("- {name}: {}\n", parts.join("; ")));
        }
    }
    out
}

/// The router's mean expert weights per task as an HTML page with one stacked bar per task (an
/// inline SVG): does routing follow the domain?
pub fn router_chart(name: &str, report: &EvalReport) -> String {
    let colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"];
    let rows: Vec<(&str, &Vec<f64>)> = report
        .tasks
        .iter()
        .filter_map(|t| t.router.as_ref().map(|w| (t.task.as_str(), w)))
        .collect();
    let (bar, left, width) = (22.0, 110.0, 400.0);
    let height = rows.len() as f64 * (bar + 8.0) + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">",
        left + width + 20.0
    );
    for (i, (task, w)) in rows.iter().enumerate() {
        let y = 10.0 + i as f64 * (bar + 8.0);
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{task}</text>",
            left - 6.0,
            y + bar * 0.7
        ));
        let mut x = left;
        for (e, v) in w.iter().enumerate() {
            let dx = v * width;
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{dx:.1}\" height=\"{bar}\" fill=\"{}\"><title>expert {} {v:.3}</title></rect>",
                colours[e % colours.len()],
                e + 1
            ));
            x += dx;
        }
    }
    let y = height - 12.0;
    let experts = rows.first().map_or(0, |(_, w)| w.len());
    for e in 0..experts {
        let x = left + e as f64 * 90.0;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">expert {}</text>",
            y - 10.0,
            colours[e % colours.len()],
            x + 16.0,
            e + 1
        ));
    }
    svg.push_str("</svg>");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{name}: router weights</title></head><body><h1>{name}: the router's mean expert weights per task</h1>{svg}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(router: Option<Vec<f64>>) -> EvalReport {
        let task = |name: &str, acc: f64, zero: bool| TaskScore {
            task: name.into(),
            pairs: 10,
            accuracy: acc,
            wer: (name == "transcribe").then_some(0.5),
            zero_shot: zero,
            majority: 0.5,
            router: router.clone(),
        };
        EvalReport {
            tasks: vec![
                task("domain", 0.9, false),
                task("gender", 0.5, true),
                task("transcribe", 0.1, false),
            ],
            answers: vec![],
            secs: 1.0,
        }
    }

    #[test]
    fn the_table_means_trained_tasks_and_lists_router_weights() {
        let t = comparison_table(&[
            ("fused".into(), report(Some(vec![0.5, 0.3, 0.2]))),
            ("single".into(), report(None)),
        ]);
        // Mean over the two trained tasks (0.9, 0.1), not the zero-shot one.
        assert!(
            t.contains("| fused | 0.90 | 0.50 (zero-shot) | 0.10 (WER 0.50) | 0.500 |"),
            "{t}"
        );
        assert!(t.contains("- fused: domain 0.50 / 0.30 / 0.20"), "{t}");
        assert!(!t.contains("- single"), "{t}");
        let html = router_chart("fused", &report(Some(vec![0.5, 0.3, 0.2])));
        assert_eq!(html.matches("<rect").count(), 3 * 3 + 3);
    }
}
