use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ConvertCommand {
    /// A CTranslate2 Whisper model (directory with model.bin) -> Hugging Face Whisper encoder
    /// checkpoint (config.json, preprocessor_config.json, model.safetensors).
    Ct2Whisper {
        /// Keep the decoder (`decoder.*` tensors, tied output projection) and copy the
        /// tokenizer (`tokenizer.json`, `vocabulary.txt`) and CTranslate2's `config.json`
        /// (as `ct2_config.json`).
        #[arg(long)]
        with_decoder: bool,
        /// CTranslate2 model directory.
        source: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
    },
}

pub fn run(command: ConvertCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConvertCommand::Ct2Whisper {
            source,
            output,
            with_decoder,
        } => {
            tutti_models::ct2::convert_ct2_whisper(
                &source,
                &output,
                tutti_models::ct2::ConvertOptions { with_decoder },
            )?;
            tracing::info!("wrote {}", output.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
