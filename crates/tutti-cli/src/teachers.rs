use std::process::ExitCode;

use clap::Subcommand;
use tutti_models::teachers::{TEACHERS, teacher_dir, tutti_home, weights_file};

#[derive(Subcommand)]
pub enum TeachersCommand {
    /// List the registered teachers, their domain, frame rate, target layers and whether they
    /// are fetched (scripts/fetch_teachers.sh fetches them into $TUTTI_HOME/teachers).
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: TeachersCommand) -> anyhow::Result<ExitCode> {
    let TeachersCommand::List { json } = command;
    let home = tutti_home();
    let rows: Vec<serde_json::Value> = TEACHERS
        .iter()
        .map(|t| {
            let dir = teacher_dir(&home, t);
            serde_json::json!({
                "teacher": t,
                "path": dir,
                "fetched": dir.join(weights_file(t)).exists(),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<8} {:>8} {:<15} {:<18} {:<8} path",
        "teacher", "domain", "rate Hz", "layers", "granularity", "fetched"
    );
    for (t, row) in TEACHERS.iter().zip(&rows) {
        println!(
            "{:<18} {:<8} {:>8} {:<15} {:<18} {:<8} {}",
            t.name,
            t.domain,
            format!("{:.3}", t.frame_rate_hz)
                .trim_end_matches('0')
                .trim_end_matches('.'),
            format!("{:?}", t.target_layers),
            match t.granularity {
                tutti_models::teachers::Granularity::Frame => "frame".to_string(),
                tutti_models::teachers::Granularity::Patch {
                    window_seconds,
                    hop_seconds,
                } => format!("patch {window_seconds:.2}/{hop_seconds:.2} s"),
            },
            if row["fetched"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            row["path"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
