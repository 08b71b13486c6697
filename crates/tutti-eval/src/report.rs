//! `results.json` and the self-contained HTML report drawn from it (inline SVG, no scripts, no
//! external files): the score table, grouped bars per task and per domain, and layer-wise
//! curves when more than one layer was evaluated.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::bench::ModelResults;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResults {
    pub format: String,
    pub tutti_version: String,
    /// The suite directory as given to `tutti bench` (for display: the same suite may sit at
    /// another path, or be named by a relative one, in another run).
    pub suite: String,
    /// What the suite is: the sha256 of its tasks' definitions and splits
    /// ([`crate::bench::suite_fingerprint`]). Absent in results written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite_id: Option<String>,
    pub threads: usize,
    pub models: Vec<ModelResults>,
}

/// What a model was scored on, task by task: name, metric and test size.
fn task_signature(model: &ModelResults) -> Vec<(&str, &str, usize)> {
    model
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.metric.as_str(), t.test_size))
        .collect()
}

impl BenchResults {
    /// Several results files of one suite as one (models in the order given), so that models
    /// benchmarked by separate `tutti bench` runs share one report. One suite means the same
    /// fingerprint where both files record one, and always the same tasks, metrics and test
    /// sizes for every model; the path the suite was named by does not matter. Refused, with
    /// the reason: no files, another format or suite, or a model name that appears twice.
    pub fn join(parts: Vec<BenchResults>) -> Result<BenchResults, String> {
        let mut parts = parts.into_iter();
        let mut joined = parts.next().ok_or("no results to join")?;
        for part in parts {
            if part.format != joined.format {
                return Err(format!(
                    "results format {} against {}",
                    part.format, joined.format
                ));
            }
            if let (Some(a), Some(b)) = (&part.suite_id, &joined.suite_id)
                && a != b
            {
                return Err(format!(
                    "results of suite {} ({a}) cannot join those of suite {} ({b}): \
                     the suites differ",
                    part.suite, joined.suite
                ));
            }
            joined.suite_id = joined.suite_id.or(part.suite_id);
            for model in part.models {
                if let Some(first) = joined.models.first()
                    && task_signature(first) != task_signature(&model)
                {
                    return Err(format!(
                        "model {} (suite {}) was scored on other tasks or test sets than \
                         model {} (suite {})",
                        model.name, part.suite, first.name, joined.suite
                    ));
                }
                if joined.models.iter().any(|m| m.name == model.name) {
                    return Err(format!("model {} appears in two results files", model.name));
                }
                joined.models.push(model);
            }
        }
        Ok(joined)
    }
}

const PROBES: [&str; 3] = ["knn", "linear", "mlp"];
const COLOURS: [&str; 8] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG chart's opening (`total_width` x `total_height`, bold title) and its horizontal grid:
/// five lines for values 0..=1 over the plot area, labelled on the left.
fn chart_start(title: &str, plot: (f64, f64, f64, f64), total: (f64, f64)) -> String {
    let (left, top, width, height) = plot;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif" font-size="11"><text x="{left}" y="18" font-size="12" font-weight="bold">{}</text>"#,
        total.0,
        total.1,
        escape(title)
    );
    for tick in 0..=4 {
        let v = tick as f64 / 4.0;
        let y = top + height * (1.0 - v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            left + width,
            left - 4.0,
            y + 4.0
        );
    }
    svg
}

/// Grouped bars: one group per `groups` entry, one bar per series, values in [0, 1].
fn grouped_bars(title: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> String {
    let (left, top, bar, gap, height) = (50.0, 30.0, 14.0, 18.0, 200.0);
    let group_width = bar * series.len() as f64 + gap;
    let width = left + group_width * groups.len() as f64 + 20.0;
    let total_height = top + height + 110.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_height:.0}" font-family="sans-serif" font-size="11"><text x="{left}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for tick in 0..=4 {
        let v = tick as f64 / 4.0;
        let y = top + height * (1.0 - v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            width - 10.0,
            left - 4.0,
            y + 4.0
        );
    }
    for (g, group) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_width + gap / 2.0;
        for (s, (name, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let h = height * v;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                x0 + s as f64 * bar,
                top + height - h,
                COLOURS[s % COLOURS.len()],
                escape(name)
            );
        }
        let cx = x0 + bar * series.len() as f64 / 2.0;
        let cy = top + height + 10.0;
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{cy:.1}" transform="rotate(40 {cx:.1} {cy:.1})">{}</text>"#,
            escape(group)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Layer-wise curves: x = layer, y = score, one line per series.
fn curves(title: &str, series: &[(String, Vec<(usize, f64)>)]) -> String {
    let (left, top, width, height) = (50.0, 30.0, 320.0, 160.0);
    let max_layer = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = chart_start(
        title,
        (left, top, width, height),
        (left + width + 20.0, top + height + 30.0),
    );
    let _ = write!(
        svg,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">layer (0 - {max_layer:.0})</text>"#,
        left + width / 2.0,
        top + height + 22.0
    );
    for (s, (name, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(l, v)| {
                format!(
                    "{:.1},{:.1}",
                    left + width * l as f64 / max_layer,
                    top + height * (1.0 - v.clamp(0.0, 1.0))
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></polyline>"#,
            path.join(" "),
            COLOURS[s % COLOURS.len()],
            escape(name)
        );
        for point in &path {
            let (x, y) = point.split_once(',').expect("x,y");
            let _ = write!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                COLOURS[s % COLOURS.len()]
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Lines over `x` in [0, 1] (values in [0, 1]) with dashed horizontal reference lines.
fn sweep_chart(
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    references: &[(String, f64)],
) -> String {
    let (left, top, width, height) = (50.0, 30.0, 360.0, 180.0);
    let x_of = |x: f64| left + width * x.clamp(0.0, 1.0);
    let y_of = |v: f64| top + height * (1.0 - v.clamp(0.0, 1.0));
    let mut svg = chart_start(
        title,
        (left, top, width, height),
        (left + width + 150.0, top + height + 34.0),
    );
    for tick in 0..=4 {
        let v = tick as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{v:.2}</text>"#,
            x_of(v),
            top + height + 14.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text>"#,
        left + width / 2.0,
        top + height + 30.0,
        escape(x_label)
    );
    for (s, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, v)| format!("{:.1},{:.1}", x_of(x), y_of(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="sweep" points="{}" fill="none" stroke="{colour}" stroke-width="2"><title>{}</title></polyline>"#,
            path.join(" "),
            escape(name)
        );
        if let Some(&(x, v)) = points.last() {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                x_of(x) + 6.0,
                y_of(v) + 4.0,
                escape(name)
            );
        }
    }
    for (r, (name, value)) in references.iter().enumerate() {
        let colour = COLOURS[(series.len() + r) % COLOURS.len()];
        let _ = write!(
            svg,
            r#"<line class="reference" x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="5,4"><title>{}</title></line><text x="{:.0}" y="{:.1}" fill="{colour}">{}</text>"#,
            left + width,
            escape(name),
            left + width + 6.0,
            y_of(*value) + 4.0,
            escape(name),
            y = y_of(*value),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The sweep section: task-arithmetic merges of the same two models at several weights, each
/// domain's MLP score (and the overall score) against the first model's weight; every model that
/// is not a merge is drawn as a reference line (e.g. the ensemble-distilled student). Empty when
/// the results hold fewer than two such merges.
fn merge_sweep(results: &BenchResults) -> String {
    let mut html = String::new();
    let mut groups: Vec<(Vec<String>, Vec<&crate::bench::ModelResults>)> = Vec::new();
    for m in &results.models {
        let Some(merge) = &m.merge else { continue };
        if merge.method != "task-arithmetic" || merge.inputs.len() != 2 {
            continue;
        }
        let names: Vec<String> = merge.inputs.iter().map(|i| i.0.clone()).collect();
        match groups.iter_mut().find(|g| g.0 == names) {
            Some(g) => g.1.push(m),
            None => groups.push((names, vec![m])),
        }
    }
    let references: Vec<&crate::bench::ModelResults> = results
        .models
        .iter()
        .filter(|m| m.merge.is_none())
        .collect();
    for (names, mut merges) in groups {
        if merges.len() < 2 {
            continue;
        }
        let weight =
            |m: &crate::bench::ModelResults| m.merge.as_ref().map_or(0.0, |g| g.inputs[0].1);
        merges.sort_by(|a, b| weight(a).total_cmp(&weight(b)));
        let mut domains: Vec<String> = merges
            .iter()
            .flat_map(|m| m.suite["mlp"].per_domain.keys().cloned())
            .collect();
        domains.sort();
        domains.dedup();
        let mut keys = vec!["overall".to_string()];
        keys.extend(domains);
        let score = |m: &crate::bench::ModelResults, key: &str| {
            let s = &m.suite["mlp"];
            if key == "overall" {
                Some(s.overall)
            } else {
                s.per_domain.get(key).copied()
            }
        };
        let _ = write!(
            html,
            "<h2>Merge sweep: {} + {}</h2><p>Task arithmetic <code>base + l tau({}) + l' tau({})</code>; MLP scores against l. Dashed: models that are not merges.</p>",
            escape(&names[0]),
            escape(&names[1]),
            escape(&names[0]),
            escape(&names[1])
        );
        for key in &keys {
            let series = vec![(
                "merges".to_string(),
                merges
                    .iter()
                    .filter_map(|m| Some((weight(m), score(m, key)?)))
                    .collect(),
            )];
            let refs: Vec<(String, f64)> = references
                .iter()
                .filter_map(|m| Some((m.name.clone(), score(m, key)?)))
                .collect();
            html.push_str(&sweep_chart(
                &format!("MLP, {key}"),
                &format!("weight of {}", names[0]),
                &series,
                &refs,
            ));
        }
        html.push_str("<table><tr><th>model</th><th>weights</th><th>MLP overall</th></tr>");
        for m in &merges {
            let merge = m.merge.as_ref().expect("a merge");
            let weights: Vec<String> = merge
                .inputs
                .iter()
                .map(|(n, l)| format!("{} {l}", escape(n)))
                .collect();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
                escape(&m.name),
                weights.join(", "),
                m.suite["mlp"].overall
            );
        }
        html.push_str("</table>");
    }
    html
}

/// The report page for `results`.
pub fn render_html(results: &BenchResults) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>tutti benchmark</title><style>
body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}} .legend span{{display:inline-block;margin-right:14px}}
.swatch{{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}}
</style></head><body><h1>tutti benchmark</h1><p>suite <code>{}</code>, tutti {}, {} threads.
Scores are each task's metric in [0, 1] (R² clipped at 0); suite scores are averages weighted by
test size x eval_weight at each model's last evaluated layer.</p>"#,
        escape(&results.suite),
        escape(&results.tutti_version),
        results.threads
    );
    let domains: Vec<String> = {
        let mut d: Vec<String> = results
            .models
            .iter()
            .flat_map(|m| m.tasks.iter().map(|t| t.domain.clone()))
            .collect();
        d.sort();
        d.dedup();
        d
    };
    html.push_str("<h2>Scores</h2><table><tr><th>model</th><th>probe</th><th>overall</th>");
    for d in &domains {
        let _ = write!(html, "<th>{}</th>", escape(d));
    }
    html.push_str("<th>layer</th><th>time (s)</th></tr>");
    for m in &results.models {
        for probe in PROBES {
            let s = &m.suite[probe];
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{probe}</td><td><b>{:.3}</b></td>",
                escape(&m.name),
                s.overall
            );
            for d in &domains {
                let _ = write!(
                    html,
                    "<td>{}</td>",
                    s.per_domain
                        .get(d)
                        .map_or("-".into(), |v| format!("{v:.3}"))
                );
            }
            let _ = write!(
                html,
                "<td>{}</td><td>{:.1}</td></tr>",
                m.score_layer, m.seconds
            );
        }
    }
    html.push_str("</table><div class=\"legend\">");
    for (i, m) in results.models.iter().enumerate() {
        let _ = write!(
            html,
            r#"<span><span class="swatch" style="background:{}"></span>{}</span>"#,
            COLOURS[i % COLOURS.len()],
            escape(&m.name)
        );
    }
    html.push_str("</div>");
    let tasks: Vec<String> = results
        .models
        .first()
        .map(|m| m.tasks.iter().map(|t| t.task.clone()).collect())
        .unwrap_or_default();
    for probe in PROBES {
        let pick = |l: &crate::bench::LayerScores| match probe {
            "knn" => l.knn,
            "linear" => l.linear,
            _ => l.mlp,
        };
        let series: Vec<(String, Vec<f64>)> = results
            .models
            .iter()
            .map(|m| {
                let values = tasks
                    .iter()
                    .map(|t| {
                        m.tasks
                            .iter()
                            .find(|x| &x.task == t)
                            .and_then(|x| x.per_layer.last())
                            .map_or(0.0, pick)
                    })
                    .collect();
                (m.name.clone(), values)
            })
            .collect();
        let _ = write!(
            html,
            "<h2>Per task: {probe}</h2>{}",
            grouped_bars(&format!("{probe} probe, per task"), &tasks, &series)
        );
        let per_domain: Vec<(String, Vec<f64>)> = results
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    domains
                        .iter()
                        .map(|d| m.suite[probe].per_domain.get(d).copied().unwrap_or(0.0))
                        .collect(),
                )
            })
            .collect();
        html.push_str(&grouped_bars(
            &format!("{probe} probe, per domain"),
            &domains,
            &per_domain,
        ));
    }
    html.push_str(&merge_sweep(results));
    let layered = results
        .models
        .iter()
        .any(|m| m.tasks.iter().any(|t| t.per_layer.len() > 1));
    if layered {
        html.push_str("<h2>Layer-wise (kNN)</h2>");
        for t in &tasks {
            let series: Vec<(String, Vec<(usize, f64)>)> = results
                .models
                .iter()
                .filter_map(|m| {
                    let task = m.tasks.iter().find(|x| &x.task == t)?;
                    Some((
                        m.name.clone(),
                        task.per_layer.iter().map(|l| (l.layer, l.knn)).collect(),
                    ))
                })
                .collect();
            html.push_str(&curves(t, &series));
        }
    }
    html.push_str("<h2>Tasks</h2><table><tr><th>task</th><th>domain</th><th>level</th><th>target</th><th>metric</th><th>classes</th><th>test items</th></tr>");
    if let Some(m) = results.models.first() {
        for t in &m.tasks {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.task),
                escape(&t.domain),
                escape(&t.level),
                escape(&t.target),
                escape(&t.metric),
                if t.classes == 0 {
                    "-".to_string()
                } else {
                    t.classes.to_string()
                },
                t.test_size
            );
        }
    }
    html.push_str("</table></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::{MergeWeights, ModelResults};
    use crate::score::SuiteScore;

    fn suite_results(suite: &str, models: Vec<ModelResults>) -> BenchResults {
        BenchResults {
            format: "tutti-bench-1".into(),
            tutti_version: "0".into(),
            suite: suite.into(),
            suite_id: Some(format!("id-{suite}")),
            threads: 2,
            models,
        }
    }

    #[test]
    fn join_appends_models_and_refuses_mismatches() {
        let a = suite_results("s", vec![model("a", 0.1, 0.2, None)]);
        let b = suite_results(
            "s",
            vec![model("b", 0.3, 0.4, None), model("c", 0.5, 0.6, None)],
        );
        let joined = BenchResults::join(vec![a.clone(), b.clone()]).unwrap();
        let names: Vec<&str> = joined.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(joined.models[1], b.models[0]);
        assert_eq!(BenchResults::join(vec![a.clone()]).unwrap(), a);
        assert!(BenchResults::join(Vec::new()).is_err());
        let other_suite = suite_results("t", vec![model("d", 0.1, 0.1, None)]);
        let err = BenchResults::join(vec![a.clone(), other_suite.clone()]).unwrap_err();
        assert!(err.contains("suite t (id-t)"), "{err}");
        // The same suite named by another path joins; without fingerprints (older files) the
        // task lists decide.
        let mut same_elsewhere = suite_results("/abs/s", vec![model("e", 0.1, 0.1, None)]);
        same_elsewhere.suite_id = a.suite_id.clone();
        assert_eq!(
            BenchResults::join(vec![a.clone(), same_elsewhere.clone()])
                .unwrap()
                .models
                .len(),
            2
        );
        let mut old = other_suite;
        old.suite_id = None;
        assert!(BenchResults::join(vec![a.clone(), old.clone()]).is_ok());
        old.models[0].tasks.push(task("x", 10));
        let err = BenchResults::join(vec![a.clone(), old]).unwrap_err();
        assert!(
            err.contains("model d (suite t) was scored on other tasks"),
            "{err}"
        );
        let mut resized = a.clone();
        resized.models[0].name = "f".into();
        resized.suite_id = None;
        let mut a_sized = a.clone();
        a_sized.models[0].tasks.push(task("x", 10));
        resized.models[0].tasks.push(task("x", 11));
        assert!(BenchResults::join(vec![a_sized, resized]).is_err());
        let err = BenchResults::join(vec![a.clone(), a.clone()]).unwrap_err();
        assert!(err.contains("model a appears in two"), "{err}");
        let mut other_format = b;
        other_format.format = "x".into();
        assert!(BenchResults::join(vec![a, other_format]).is_err());
    }

    fn task(name: &str, test_size: usize) -> crate::bench::TaskScores {
        crate::bench::TaskScores {
            task: name.into(),
            domain: "speech".into(),
            level: "clip".into(),
            target: String::new(),
            metric: "accuracy".into(),
            test_size,
            eval_weight: 1.0,
            classes: 2,
            per_layer: Vec::new(),
            seconds: 0.0,
        }
    }

    fn model(name: &str, speech: f64, music: f64, merge: Option<(&str, f64)>) -> ModelResults {
        let score = SuiteScore {
            overall: (speech + music) / 2.0,
            per_domain: BTreeMap::from([("music".into(), music), ("speech".into(), speech)]),
            tasks: 2,
            test_items: 20,
        };
        ModelResults {
            name: name.into(),
            key: name.into(),
            score_layer: 1,
            tasks: Vec::new(),
            suite: PROBES
                .iter()
                .map(|p| (p.to_string(), score.clone()))
                .collect(),
            seconds: 1.0,
            merge: merge.map(|(method, l)| MergeWeights {
                method: method.into(),
                inputs: vec![
                    ("speech-student".into(), l),
                    ("music-student".into(), 1.0 - l),
                ],
            }),
        }
    }

    fn results(models: Vec<ModelResults>) -> BenchResults {
        BenchResults {
            format: "tutti-bench/1".into(),
            tutti_version: "0".into(),
            suite: "suite".into(),
            suite_id: None,
            threads: 1,
            models,
        }
    }

    /// The y coordinate of each vertex of the first sweep polyline in `html`.
    fn first_sweep_ys(html: &str) -> Vec<f64> {
        let start = html
            .find(r#"class="sweep" points=""#)
            .expect("a sweep line")
            + 22;
        let points = &html[start..start + html[start..].find('"').unwrap()];
        points
            .split(' ')
            .map(|p| p.split_once(',').unwrap().1.parse().unwrap())
            .collect()
    }

    #[test]
    fn merges_of_two_models_are_drawn_as_a_sweep_in_weight_order() {
        // Out of order on purpose; the ensemble is a reference line; TIES is not on the sweep.
        let html = render_html(&results(vec![
            model("merge-0.8", 0.8, 0.2, Some(("task-arithmetic", 0.8))),
            model("merge-0.2", 0.2, 0.8, Some(("task-arithmetic", 0.2))),
            model("merge-0.5", 0.5, 0.5, Some(("task-arithmetic", 0.5))),
            model("ties", 0.9, 0.9, Some(("ties", 0.5))),
            model("ensemble", 0.6, 0.6, None),
        ]));
        assert!(html.contains("Merge sweep: speech-student + music-student"));
        // One chart per key: overall, music, speech (sorted domains after overall).
        assert_eq!(html.matches(r#"class="sweep""#).count(), 3);
        assert_eq!(html.matches(r#"class="reference""#).count(), 3);
        // The overall chart: three points, all 0.5 (every model here averages to 0.5).
        let overall = first_sweep_ys(&html);
        assert_eq!(overall.len(), 3);
        // The music chart (second): sorted by weight 0.2, 0.5, 0.8 the music score falls, so
        // the SVG y (downward) rises.
        let music_at = html.find("MLP, music").unwrap();
        let music = first_sweep_ys(&html[music_at..]);
        assert!(music[0] < music[1] && music[1] < music[2], "{music:?}");
        assert!(html.contains("ensemble") && !html[music_at..].contains(">ties<"));
    }

    #[test]
    fn no_sweep_without_two_merges_of_the_same_models() {
        let one = render_html(&results(vec![
            model("merge-0.5", 0.5, 0.5, Some(("task-arithmetic", 0.5))),
            model("ensemble", 0.6, 0.6, None),
        ]));
        assert!(!one.contains("Merge sweep"));
        let ties = render_html(&results(vec![
            model("a", 0.5, 0.5, Some(("ties", 0.5))),
            model("b", 0.5, 0.5, Some(("ties", 0.2))),
        ]));
        assert!(!ties.contains("Merge sweep"));
    }

    #[test]
    fn a_merge_record_is_read_and_a_broken_one_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MergeWeights::read(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("merge.json"),
            r#"{"format":"tutti-merge/1","method":{"method":"task-arithmetic"},"inputs":[
                {"dir":"/m/init","role":"base","lambda":null,"sha256":"x"},
                {"dir":"/m/speech","role":"model","lambda":0.7,"sha256":"y"},
                {"dir":"/m/music","role":"model","lambda":0.3,"sha256":"z"}]}"#,
        )
        .unwrap();
        let merge = MergeWeights::read(dir.path()).unwrap().unwrap();
        assert_eq!(merge.method, "task-arithmetic");
        assert_eq!(
            merge.inputs,
            vec![("speech".to_string(), 0.7), ("music".to_string(), 0.3)]
        );
        std::fs::write(dir.path().join("merge.json"), "{not json").unwrap();
        let error = MergeWeights::read(dir.path()).unwrap_err();
        assert!(error.contains("merge.json"), "{error}");
    }
}
