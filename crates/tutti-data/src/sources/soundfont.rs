//! General MIDI soundfonts played by rustysynth: the suite renders its music tasks with FluidR3
//! and TimGM6mb; the pool renders procedural pieces with fonts the suite does not use. Also the
//! composer of those pieces ([`compose`]): a seeded key, tempo, chord progression, bass line,
//! melody and drum pattern, each part its own GM program.

use std::path::Path;
use std::sync::Arc;

use super::{SAMPLE_RATE, SR};
use crate::rng::Rng;
use crate::{DataError, file_error};

/// A loaded soundfont and the short name its sources carry (`fluidr3:40`).
pub(crate) struct Font {
    pub name: String,
    pub font: Arc<rustysynth::SoundFont>,
}

impl Font {
    pub fn open(name: &str, path: &Path) -> Result<Self, DataError> {
        let mut file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
        let font = rustysynth::SoundFont::new(&mut file).map_err(|e| file_error(path, e))?;
        Ok(Self {
            name: name.to_string(),
            font: Arc::new(font),
        })
    }

    /// Does the font have a preset for this bank and program.
    pub fn has_preset(&self, bank: i32, program: i32) -> bool {
        self.font
            .get_presets()
            .iter()
            .any(|p| p.get_bank_number() == bank && p.get_patch_number() == program)
    }
}

/// A note: start and length in seconds, MIDI key, velocity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Note {
    pub start: f64,
    pub length: f64,
    pub key: i32,
    pub velocity: i32,
}

/// Render `notes` with `program` (melodic) or drum `kit` (channel 10) for `secs`, mono.
pub(crate) fn render(
    font: &Font,
    program: i32,
    drums: bool,
    notes: &[Note],
    secs: f64,
) -> Vec<f32> {
    let mut settings = rustysynth::SynthesizerSettings::new(SAMPLE_RATE as i32);
    settings.enable_reverb_and_chorus = false;
    let mut synth =
        rustysynth::Synthesizer::new(&font.font, &settings).expect("valid synthesizer settings");
    let channel = if drums { 9 } else { 0 };
    synth.process_midi_message(channel, 0xC0, program, 0);
    let mut events: Vec<(usize, bool, i32, i32)> = Vec::new();
    for n in notes {
        events.push(((n.start * SR) as usize, true, n.key, n.velocity));
        events.push((((n.start + n.length) * SR) as usize, false, n.key, 0));
    }
    // Note-offs before note-ons at the same sample.
    events.sort_by_key(|e| (e.0, e.1));
    let total = (secs * SR) as usize;
    let (mut left, mut right) = (vec![0.0f32; total], vec![0.0f32; total]);
    let mut at = 0usize;
    for (time, on, key, velocity) in events {
        let time = time.min(total);
        if time > at {
            synth.render(&mut left[at..time], &mut right[at..time]);
            at = time;
        }
        if on {
            synth.note_on(channel, key, velocity);
        } else {
            synth.note_off(channel, key);
        }
    }
    if at < total {
        synth.render(&mut left[at..], &mut right[at..]);
    }
    left.iter()
        .zip(&right)
        .map(|(l, r)| 0.5 * (l + r))
        .collect()
}

/// One part of a composed piece: a GM program (or the drum kit) and its notes.
pub(crate) struct Part {
    pub program: i32,
    pub drums: bool,
    pub notes: Vec<Note>,
}

/// A seeded piece of `secs` seconds: major or minor key, 60-180 BPM, a four-chord progression
/// (one chord per bar), a pad or comping part on the chords, a bass line on the roots, a melody on
/// the scale (steps and leaps, rests, held notes), and, in most pieces, a drum pattern. Programs
/// are drawn from the GM families that carry pitch (piano .. pipe, leads, pads), so the same
/// seed gives the same piece with any soundfont.
pub(crate) fn compose(seed: u64, secs: f64) -> Vec<Part> {
    compose_with_facts(seed, secs).0
}

/// What a composed piece is, known exactly from its seed (the instruction data's music labels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PieceFacts {
    /// Pitch class of the tonic, 0 = C.
    pub tonic: i32,
    pub minor: bool,
    pub bpm: f64,
    /// GM programs of the chord, bass and melody parts.
    pub chord_program: i32,
    pub bass_program: i32,
    pub lead_program: i32,
    pub drums: bool,
}

/// The facts of the piece [`compose`] makes from `seed` (the same draws, so they cannot drift).
pub fn piece_facts(seed: u64, secs: f64) -> PieceFacts {
    compose_with_facts(seed, secs).1
}

pub(crate) fn compose_with_facts(seed: u64, secs: f64) -> (Vec<Part>, PieceFacts) {
    const MAJOR: [i32; 7] = [0, 2, 4, 5, 7, 9, 11];
    const MINOR: [i32; 7] = [0, 2, 3, 5, 7, 8, 10];
    const PROGRESSIONS: [[usize; 4]; 6] = [
        [0, 4, 5, 3],
        [0, 3, 4, 0],
        [0, 5, 3, 4],
        [5, 3, 0, 4],
        [0, 3, 5, 4],
        [1, 4, 0, 0],
    ];
    let mut rng = Rng::new(seed);
    let tonic = 48 + rng.below(12) as i32;
    let minor = rng.below(2) != 0;
    let scale = if minor { MINOR } else { MAJOR };
    let bpm = rng.range(60.0, 180.0);
    let beat = 60.0 / bpm;
    let bar = 4.0 * beat;
    let progression = PROGRESSIONS[rng.below(PROGRESSIONS.len())];
    let degree = |d: usize| -> i32 { tonic + scale[d % 7] + 12 * (d / 7) as i32 };
    let pick = |rng: &mut Rng, programs: &[i32]| programs[rng.below(programs.len())];
    let chord_program = pick(
        &mut rng,
        &[0, 1, 4, 5, 16, 19, 24, 25, 48, 49, 50, 52, 88, 89, 90],
    );
    let bass_program = pick(&mut rng, &[32, 33, 34, 35, 36, 38, 39, 42, 43, 58]);
    let lead_program = pick(
        &mut rng,
        &[
            0, 6, 8, 11, 13, 22, 24, 26, 40, 41, 56, 60, 64, 65, 66, 68, 71, 73, 75, 80, 81,
        ],
    );
    let comp_style = rng.below(3);
    let (mut chords, mut bass, mut lead, mut drums) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut t = 0.0;
    let mut b = 0usize;
    let velocity = |rng: &mut Rng, base: i32| base + rng.below(20) as i32;
    let mut melody_degree = 7 + rng.below(5);
    while t < secs {
        let root = progression[b % 4];
        let triad = [root, root + 2, root + 4];
        match comp_style {
            // Held chords.
            0 => {
                for &d in &triad {
                    chords.push(Note {
                        start: t,
                        length: bar * 0.95,
                        key: degree(d),
                        velocity: velocity(&mut rng, 55),
                    });
                }
            }
            // Chords on every beat.
            1 => {
                for k in 0..4 {
                    for &d in &triad {
                        chords.push(Note {
                            start: t + k as f64 * beat,
                            length: beat * 0.8,
                            key: degree(d),
                            velocity: velocity(&mut rng, 50),
                        });
                    }
                }
            }
            // Arpeggios in eighths.
            _ => {
                for k in 0..8 {
                    let d = triad[[0, 1, 2, 1][k % 4]] + if k >= 4 { 7 } else { 0 };
                    chords.push(Note {
                        start: t + k as f64 * beat / 2.0,
                        length: beat * 0.45,
                        key: degree(d),
                        velocity: velocity(&mut rng, 50),
                    });
                }
            }
        }
        for k in 0..2 {
            bass.push(Note {
                start: t + 2.0 * k as f64 * beat,
                length: 1.8 * beat,
                key: degree(root) - 12,
                velocity: velocity(&mut rng, 70),
            });
        }
        let mut s = 0.0;
        while s < bar - 1e-9 {
            let length = [0.5, 1.0, 1.0, 2.0][rng.below(4)] * beat;
            let step = [-2i64, -1, -1, 0, 1, 1, 2, 3][rng.below(8)];
            melody_degree = (melody_degree as i64 + step).clamp(5, 16) as usize;
            if rng.below(6) != 0 {
                lead.push(Note {
                    start: t + s,
                    length: length * 0.9,
                    key: degree(melody_degree) + 12,
                    velocity: velocity(&mut rng, 75),
                });
            }
            s += length;
        }
        for k in 0..8 {
            let at = t + k as f64 * beat / 2.0;
            drums.push(Note {
                start: at,
                length: 0.05,
                key: 42,
                velocity: velocity(&mut rng, 50),
            });
            if k % 4 == 0 {
                drums.push(Note {
                    start: at,
                    length: 0.1,
                    key: 36,
                    velocity: velocity(&mut rng, 85),
                });
            }
            if k % 4 == 2 {
                drums.push(Note {
                    start: at,
                    length: 0.1,
                    key: 38,
                    velocity: velocity(&mut rng, 80),
                });
            }
        }
        t += bar;
        b += 1;
    }
    let keep = |v: Vec<Note>| -> Vec<Note> { v.into_iter().filter(|n| n.start < secs).collect() };
    let mut parts = vec![
        Part {
            program: chord_program,
            drums: false,
            notes: keep(chords),
        },
        Part {
            program: bass_program,
            drums: false,
            notes: keep(bass),
        },
        Part {
            program: lead_program,
            drums: false,
            notes: keep(lead),
        },
    ];
    let with_drums = rng.below(4) != 0;
    if with_drums {
        parts.push(Part {
            program: 0,
            drums: true,
            notes: keep(drums),
        });
    }
    let facts = PieceFacts {
        tonic: tonic.rem_euclid(12),
        minor,
        bpm,
        chord_program,
        bass_program,
        lead_program,
        drums: with_drums,
    };
    (parts, facts)
}

/// Render a composed piece with `font` and mix its parts (each part at its own peak first, so no
/// program drowns the others); `None` when every part is silent in this font.
pub(crate) fn render_piece(font: &Font, parts: &[Part], secs: f64) -> Option<Vec<f32>> {
    let mut mix = vec![0.0f32; (secs * SR) as usize];
    let mut any = false;
    for part in parts {
        let bank = if part.drums { 128 } else { 0 };
        if !part.drums && !font.has_preset(bank, part.program) {
            continue;
        }
        let x = render(font, part.program, part.drums, &part.notes, secs);
        let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if peak < 1e-4 || x.iter().any(|v| !v.is_finite()) {
            continue;
        }
        any = true;
        let gain = 0.5 / peak;
        for (m, v) in mix.iter_mut().zip(&x) {
            *m += v * gain;
        }
    }
    any.then_some(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_facts_are_the_pieces_own() {
        for seed in 0..50u64 {
            let (parts, facts) = compose_with_facts(seed, 10.0);
            assert_eq!(parts[0].program, facts.chord_program);
            assert_eq!(parts[1].program, facts.bass_program);
            assert_eq!(parts[2].program, facts.lead_program);
            assert_eq!(parts.len() == 4 && parts[3].drums, facts.drums);
            assert!((60.0..180.0).contains(&facts.bpm));
            // The bass plays the progression's roots an octave below the chords: its lowest
            // note's pitch class is a scale degree of the key.
            let scale: &[i32] = if facts.minor {
                &[0, 2, 3, 5, 7, 8, 10]
            } else {
                &[0, 2, 4, 5, 7, 9, 11]
            };
            for n in &parts[1].notes {
                let degree = (n.key - facts.tonic).rem_euclid(12);
                assert!(scale.contains(&degree), "seed {seed}: {degree}");
            }
            // Same draws as compose.
            assert_eq!(compose(seed, 10.0).len(), parts.len());
        }
    }

    #[test]
    fn compositions_are_seeded_and_fill_the_clip() {
        let a = compose(7, 10.0);
        let b = compose(7, 10.0);
        let c = compose(8, 10.0);
        let keys = |p: &[Part]| -> Vec<(i32, i32, usize)> {
            p.iter()
                .flat_map(|part| {
                    part.notes
                        .iter()
                        .map(move |n| (part.program, n.key, (n.start * 1000.0) as usize))
                })
                .collect()
        };
        assert_eq!(keys(&a), keys(&b));
        assert_ne!(keys(&a), keys(&c));
        for part in &a {
            assert!(!part.notes.is_empty());
            assert!(
                part.notes
                    .iter()
                    .all(|n| n.start < 10.0 && (0..128).contains(&n.key))
            );
        }
        // The chords span the whole clip.
        let last = a[0].notes.iter().map(|n| n.start).fold(0.0, f64::max);
        assert!(last > 6.0, "{last}");
    }
}
