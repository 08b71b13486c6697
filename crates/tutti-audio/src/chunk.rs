//! The window plan for long audio.
//!
//! Long audio is embedded in windows of `window_frames` output frames, each computed with
//! `context_frames` of extra audio on both sides (where the file has it) and then cut back to its
//! own frames, so that every output frame sees at least `context_frames` of context on each side
//! and memory is bounded by one batch of windows. Windows start on multiples of the encoder's hop,
//! so frame `i` of a window is frame `start + i` of the file: timestamps stay exact.

/// A windowing policy, in encoder frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Output frames each window contributes.
    pub window_frames: usize,
    /// Frames of context computed, then discarded, on each side.
    pub context_frames: usize,
}

/// One window of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Audio samples `[audio_start, audio_end)` to run through the encoder.
    pub audio_start: usize,
    pub audio_end: usize,
    /// Output frames `[frame_start, frame_end)` of the whole file this window provides.
    pub frame_start: usize,
    pub frame_end: usize,
    /// Index, in the window's own output, of the frame `frame_start`.
    pub local_offset: usize,
}

impl ChunkPlan {
    /// Split a file of `total_samples` samples and `total_frames` output frames.
    /// `hop_samples` is the encoder's hop; `tail_samples` the audio past a frame's start that its
    /// computation reads (the front end's window minus its hop, for instance).
    pub fn segments(
        &self,
        total_samples: usize,
        total_frames: usize,
        hop_samples: usize,
        tail_samples: usize,
    ) -> Vec<Segment> {
        let window = self.window_frames.max(1);
        if total_frames <= window + 2 * self.context_frames {
            return vec![Segment {
                audio_start: 0,
                audio_end: total_samples,
                frame_start: 0,
                frame_end: total_frames,
                local_offset: 0,
            }];
        }
        let mut segments = Vec::new();
        let mut frame_start = 0;
        while frame_start < total_frames {
            let frame_end = (frame_start + window).min(total_frames);
            let context_start = frame_start.saturating_sub(self.context_frames);
            let context_end = (frame_end + self.context_frames).min(total_frames);
            let audio_end = if context_end == total_frames {
                total_samples
            } else {
                (context_end * hop_samples + tail_samples).min(total_samples)
            };
            segments.push(Segment {
                audio_start: context_start * hop_samples,
                audio_end,
                frame_start,
                frame_end,
                local_offset: frame_start - context_start,
            });
            frame_start = frame_end;
        }
        segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_the_frames_exactly_once() {
        let plan = ChunkPlan {
            window_frames: 100,
            context_frames: 20,
        };
        let segments = plan.segments(160_000, 500, 320, 240);
        assert_eq!(segments.len(), 5);
        let mut next = 0;
        for s in &segments {
            assert_eq!(s.frame_start, next);
            assert_eq!(s.audio_start, (s.frame_start - s.local_offset) * 320);
            next = s.frame_end;
        }
        assert_eq!(next, 500);
        assert_eq!(segments[0].local_offset, 0);
        assert_eq!(segments[1].local_offset, 20);
        assert_eq!(segments[4].audio_end, 160_000);
    }

    #[test]
    fn short_audio_is_one_segment() {
        let plan = ChunkPlan {
            window_frames: 1500,
            context_frames: 100,
        };
        assert_eq!(plan.segments(16_000, 50, 320, 240).len(), 1);
    }
}
