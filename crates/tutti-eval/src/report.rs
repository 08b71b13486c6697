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
    pub suite: String,
    pub threads: usize,
    pub models: Vec<ModelResults>,
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
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif" font-size="11"><text x="{left}" y="18" font-size="12" font-weight="bold">{}</text>"#,
        left + width + 20.0,
        top + height + 30.0,
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
