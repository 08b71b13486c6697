//! Decoding: any supported file -> mono f32 at the requested rate.
//!
//! Formats: WAV (PCM 8/16/24/32-bit integer, 32/64-bit float, ADPCM), FLAC, Ogg Vorbis and MP3,
//! through symphonia 0.6. Integer samples are scaled to [-1, 1) as symphonia does (`s / 2^(bits-1)`,
//! unsigned 8-bit centred on 128), which is what `soundfile.read(dtype="float32")` returns.
//! Channels are averaged (mono mixdown) packet by packet and the mono stream is resampled on the
//! fly, so peak memory is the output at the target rate, whatever the source's rate and layout.
//!
//! Validation is strict: a file that does not decode cleanly (a packet that fails, fewer frames
//! than the header announces, a non-finite sample) is an error that names the file; nothing is
//! skipped silently.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::error::AudioError;
use crate::resample::StreamResampler;

/// Decoded mono audio.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Mono samples in [-1, 1] (nominally) at `sample_rate_hz`.
    pub samples: Vec<f32>,
    pub sample_rate_hz: u32,
    /// The file's own rate and channel count, before mixdown and resampling.
    pub source_rate_hz: u32,
    pub source_channels: usize,
}

impl Audio {
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate_hz as f64
    }
}

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Output rate; `None` keeps the file's rate.
    pub target_rate_hz: Option<u32>,
    /// Start of the segment to keep, in seconds of the source.
    pub start_secs: f64,
    /// Length of the segment to keep; `None` reads to the end.
    pub duration_secs: Option<f64>,
    /// Files longer than this are refused before they are decoded in full.
    pub max_duration_secs: f64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            target_rate_hz: Some(16_000),
            start_secs: 0.0,
            duration_secs: None,
            max_duration_secs: 4.0 * 3600.0,
        }
    }
}

/// Decode `path` into mono audio at `options.target_rate_hz`.
pub fn load_audio(path: &Path, options: &LoadOptions) -> Result<Audio, AudioError> {
    let file = File::open(path).map_err(|error| AudioError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let owned = || path.to_path_buf();
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|error| AudioError::NotAudio {
            path: owned(),
            reason: error.to_string(),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::NotAudio {
            path: owned(),
            reason: "no audio track".into(),
        })?;
    let track_id = track.id;
    let expected_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::Unsupported {
            path: owned(),
            reason: "the track has no audio codec parameters".into(),
        })?
        .clone();
    let source_rate_hz = params.sample_rate.ok_or_else(|| AudioError::Unsupported {
        path: owned(),
        reason: "the stream does not state its sample rate".into(),
    })?;
    if !(1000..=768_000).contains(&source_rate_hz) {
        return Err(AudioError::BadSampleRate {
            path: owned(),
            sample_rate_hz: source_rate_hz,
        });
    }
    if let Some(frames) = expected_frames {
        let duration_secs = frames as f64 / source_rate_hz as f64;
        let wanted_end = options
            .duration_secs
            .map(|d| options.start_secs + d)
            .unwrap_or(duration_secs);
        if wanted_end.min(duration_secs) - options.start_secs > options.max_duration_secs {
            return Err(AudioError::TooLong {
                path: owned(),
                duration_secs,
                limit_secs: options.max_duration_secs,
            });
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|error| AudioError::Unsupported {
            path: owned(),
            reason: error.to_string(),
        })?;

    let target_rate_hz = options.target_rate_hz.unwrap_or(source_rate_hz);
    let mut resampler = StreamResampler::new(source_rate_hz, target_rate_hz)?;
    let start_frame = (options.start_secs.max(0.0) * source_rate_hz as f64).round() as u64;
    let end_frame = options
        .duration_secs
        .map(|d| start_frame + (d.max(0.0) * source_rate_hz as f64).round() as u64);
    let max_frames = (options.max_duration_secs * source_rate_hz as f64).ceil() as u64;

    let mut interleaved: Vec<f32> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let mut decoded_frames: u64 = 0;
    let mut source_channels = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::IoError(error))
                if error.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                if let Some(expected) = expected_frames.filter(|&e| decoded_frames < e) {
                    return Err(AudioError::Truncated {
                        path: owned(),
                        decoded: decoded_frames,
                        expected,
                    });
                }
                break;
            }
            Err(error) => {
                return Err(AudioError::Corrupt {
                    path: owned(),
                    reason: format!("after {decoded_frames} frames: {error}"),
                });
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buffer = decoder
            .decode(&packet)
            .map_err(|error| AudioError::Corrupt {
                path: owned(),
                reason: format!("packet at frame {decoded_frames} failed to decode: {error}"),
            })?;
        let channels = buffer.spec().channels().count().max(1);
        source_channels = source_channels.max(channels);
        let frames = buffer.frames();
        interleaved.resize(buffer.samples_interleaved(), 0.0);
        buffer.copy_to_slice_interleaved(&mut interleaved[..]);

        // Keep only the requested segment of this packet.
        let packet_start = decoded_frames;
        let packet_end = decoded_frames + frames as u64;
        decoded_frames = packet_end;
        let keep_from = start_frame.max(packet_start);
        let keep_to = end_frame.map_or(packet_end, |end| end.min(packet_end));
        if keep_to > keep_from {
            mono.clear();
            let scale = 1.0 / channels as f32;
            for frame in (keep_from - packet_start) as usize..(keep_to - packet_start) as usize {
                let row = &interleaved[frame * channels..(frame + 1) * channels];
                let mut sum = 0.0f32;
                for (channel, &value) in row.iter().enumerate() {
                    if !value.is_finite() {
                        let index = packet_start + frame as u64;
                        return Err(AudioError::NonFinite {
                            path: owned(),
                            index,
                            seconds: index as f64 / source_rate_hz as f64,
                            value: row[channel],
                        });
                    }
                    sum += value;
                }
                mono.push(sum * scale);
            }
            resampler.push(&mono)?;
        }
        if keep_to.saturating_sub(start_frame) > max_frames {
            return Err(AudioError::TooLong {
                path: owned(),
                duration_secs: decoded_frames as f64 / source_rate_hz as f64,
                limit_secs: options.max_duration_secs,
            });
        }
        if end_frame.is_some_and(|end| decoded_frames >= end) {
            break;
        }
    }
    if let Some(expected) = expected_frames
        && decoded_frames < expected
        && end_frame.is_none_or(|end| decoded_frames < end)
    {
        return Err(AudioError::Truncated {
            path: owned(),
            decoded: decoded_frames,
            expected,
        });
    }
    if decoded_frames == 0 {
        return Err(AudioError::Empty { path: owned() });
    }
    if start_frame >= decoded_frames {
        return Err(AudioError::SegmentOutOfRange {
            path: owned(),
            start_secs: options.start_secs,
            duration_secs: decoded_frames as f64 / source_rate_hz as f64,
        });
    }
    let samples = resampler.finish()?;
    Ok(Audio {
        samples,
        sample_rate_hz: target_rate_hz,
        source_rate_hz,
        source_channels,
    })
}

/// Whether a path has one of the audio extensions tutti looks for when it walks a folder.
pub fn is_audio_extension(path: &Path) -> bool {
    const EXTENSIONS: [&str; 7] = ["wav", "wave", "flac", "ogg", "oga", "mp3", "mpga"];
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}
