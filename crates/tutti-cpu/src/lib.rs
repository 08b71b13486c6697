//! What the CPU can do, detected once, and which code path each of tutti's hot kernels takes.
//!
//! Every kernel with more than one implementation (portable Rust, AVX2 + FMA, AVX-512, AVX-512
//! VNNI / AVX-VNNI int8, AVX512-BF16 and AMX tiles) asks this crate which one to run instead of
//! probing the CPU itself, so the choice is made once per process, is the same in every crate
//! (tutti-audio's front ends, tutti-nn's kernels, the engines built on them), and can be reported
//! (`tutti bench speed` prints [`kernel_paths`] in its machine facts).
//!
//! `TUTTI_CPU` caps the choice, for comparing paths on one machine and for testing the lower ones:
//! `portable`, `avx2`, `avx512` (AVX-512 without AMX tiles) or `native` (the default: the best
//! the CPU has). A cap never enables what the CPU lacks. The `gemm` crate, which does tutti's f32
//! products, makes its own choice (it is built with its AVX-512 kernels and picks them where the
//! CPU has AVX-512F); the cap does not reach it.
//!
//! AMX needs the operating system's consent: on Linux a process asks once for the tile data state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); where that is refused, AMX is treated
//! as absent.

use std::sync::OnceLock;

/// The vector instruction set tutti's own element-wise and reduction kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust (what the compiler makes of it for the build target).
    Portable,
    /// AVX2 + FMA, 256-bit vectors.
    Avx2,
    /// AVX-512 F/BW/DQ/VL, 512-bit vectors.
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }
}

/// The CPU features tutti's kernels care about (all false off x86-64).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512dq: bool,
    pub avx512vl: bool,
    /// AVX-512 VNNI (`vpdpbusd` on 512-bit vectors).
    pub avx512vnni: bool,
    /// AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX encoded).
    pub avxvnni: bool,
    /// AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
    pub avx512bf16: bool,
    /// AMX tiles (the CPU's; see [`Features::amx_permitted`]).
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    /// The operating system granted this process the AMX tile state.
    pub amx_permitted: bool,
}

impl Features {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            // AMX is not yet in std's stable detection macro: CPUID leaf 7, EDX bits 22 (bf16),
            // 24 (tile), 25 (int8); the OS side is checked by asking for the permission.
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let bit = |b: u32| (leaf7.edx >> b) & 1 == 1;
            let (amx_bf16, amx_tile, amx_int8) = (bit(22), bit(24), bit(25));
            let amx_permitted = amx_tile && request_amx_permission();
            Self {
                avx2: has!("avx2"),
                fma: has!("fma"),
                f16c: has!("f16c"),
                avx512f: has!("avx512f"),
                avx512bw: has!("avx512bw"),
                avx512dq: has!("avx512dq"),
                avx512vl: has!("avx512vl"),
                avx512vnni: has!("avx512vnni"),
                avxvnni: has!("avxvnni"),
                avx512bf16: has!("avx512bf16"),
                amx_tile,
                amx_bf16,
                amx_int8,
                amx_permitted,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self::default()
    }

    /// The names of the features present, as `lscpu` spells them.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512dq, "avx512dq"),
            (self.avx512vl, "avx512vl"),
            (self.avx512vnni, "avx512_vnni"),
            (self.avxvnni, "avx_vnni"),
            (self.avx512bf16, "avx512_bf16"),
            (self.amx_tile, "amx_tile"),
            (self.amx_bf16, "amx_bf16"),
            (self.amx_int8, "amx_int8"),
        ]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect()
    }

    /// The best [`Level`] the CPU supports.
    pub fn best_level(&self) -> Level {
        if self.avx512f && self.avx512bw && self.avx512dq && self.avx512vl && self.fma {
            Level::Avx512
        } else if self.avx2 && self.fma {
            Level::Avx2
        } else {
            Level::Portable
        }
    }

    /// AMX bf16 tiles usable by this process.
    pub fn amx_bf16_usable(&self) -> bool {
        self.amx_tile && self.amx_bf16 && self.amx_permitted && self.best_level() == Level::Avx512
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_amx_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted XSAVE state;
    // it reads and writes no memory of ours.
    let status = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    status == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_amx_permission() -> bool {
    false
}

/// The features of this CPU (detected on first use).
pub fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(Features::detect)
}

/// What `TUTTI_CPU` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Native,
    /// At most this level, and no AMX.
    Level(Level),
}

impl Cap {
    /// Parse a `TUTTI_CPU` value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "native" => Ok(Self::Native),
            "portable" => Ok(Self::Level(Level::Portable)),
            "avx2" => Ok(Self::Level(Level::Avx2)),
            "avx512" => Ok(Self::Level(Level::Avx512)),
            other => Err(format!(
                "TUTTI_CPU={other}: expected portable, avx2, avx512 or native"
            )),
        }
    }
}

/// The cap in force (`TUTTI_CPU`, read once; an unknown value is reported on stderr and ignored).
pub fn cap() -> Cap {
    static CAP: OnceLock<Cap> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("TUTTI_CPU") {
        Err(_) => Cap::Native,
        Ok(value) => Cap::parse(&value).unwrap_or_else(|message| {
            eprintln!("warning: {message}; using the CPU's best path");
            Cap::Native
        }),
    })
}

/// The paths chosen for this process: the CPU's features under the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub level: Level,
    pub int8: Int8Path,
    pub bf16: Option<Bf16Path>,
}

/// How int8 products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Path {
    Portable,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2).
    Avx2,
    /// `vpdpbusd` on 256-bit vectors (AVX-VNNI).
    AvxVnni,
    /// `vpdpbusd` on 512-bit vectors (AVX-512 VNNI).
    Avx512Vnni,
}

/// How bf16 products run (none: the mode is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Path {
    /// `vdpbf16ps` on 512-bit vectors.
    Avx512Bf16,
    /// AMX tiles (`tdpbf16ps`), 16 x 16 f32 accumulators.
    Amx,
}

impl Int8Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2 (vpmaddubsw)",
            Self::AvxVnni => "avx-vnni (vpdpbusd, 256-bit)",
            Self::Avx512Vnni => "avx512-vnni (vpdpbusd, 512-bit)",
        }
    }
}

impl Bf16Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512-bf16 (vdpbf16ps)",
            Self::Amx => "amx (tdpbf16ps)",
        }
    }
}

impl Choice {
    /// What `features` allow under `cap`.
    pub fn new(features: &Features, cap: Cap) -> Self {
        let best = features.best_level();
        let (level, amx) = match cap {
            Cap::Native => (best, true),
            Cap::Level(limit) => (best.min(limit), false),
        };
        let int8 = match level {
            Level::Avx512 if features.avx512vnni => Int8Path::Avx512Vnni,
            Level::Avx512 | Level::Avx2 if features.avxvnni => Int8Path::AvxVnni,
            Level::Avx512 | Level::Avx2 => Int8Path::Avx2,
            Level::Portable => Int8Path::Portable,
        };
        let bf16 = match level {
            Level::Avx512 if amx && features.amx_bf16_usable() => Some(Bf16Path::Amx),
            Level::Avx512 if features.avx512bf16 => Some(Bf16Path::Avx512Bf16),
            _ => None,
        };
        Self { level, int8, bf16 }
    }
}

/// The choice for this process (made on first use).
pub fn choice() -> Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    *CHOICE.get_or_init(|| Choice::new(features(), cap()))
}

/// The vector level of tutti's own kernels in this process.
pub fn level() -> Level {
    choice().level
}

/// Why bf16 is unavailable here, or `None` where it is.
pub fn bf16_unavailable() -> Option<String> {
    if choice().bf16.is_some() {
        return None;
    }
    let f = features();
    Some(if matches!(cap(), Cap::Level(l) if l < Level::Avx512) {
        format!("TUTTI_CPU caps this process at {}", level().name())
    } else if f.amx_bf16 && !f.amx_permitted {
        "the CPU has AMX but the operating system did not grant this process its tile state, \
         and the CPU has no AVX512-BF16"
            .into()
    } else {
        "this CPU has neither AMX-BF16 nor AVX512-BF16".into()
    })
}

/// The kernel path each hot operation takes in this process, for reports.
pub fn kernel_paths() -> Vec<(&'static str, String)> {
    let f = features();
    let c = choice();
    let vector = c.level.name().to_string();
    let gemm = if f.avx512f {
        "gemm 0.19, its avx512 (x86-v4) kernels"
    } else if f.avx2 && f.fma {
        "gemm 0.19, its avx2+fma kernels"
    } else {
        "gemm 0.19, scalar"
    };
    vec![
        ("products_f32", gemm.to_string()),
        ("attention_softmax_exp", vector.clone()),
        ("gelu", vector.clone()),
        ("layer_norm", vector.clone()),
        ("fbank_frames", vector.clone()),
        (
            "mel_products",
            if c.level >= Level::Avx2 {
                "avx2+fma (8 banks a group)".to_string()
            } else {
                "portable".to_string()
            },
        ),
        ("int8_products", c.int8.name().to_string()),
        (
            "bf16_products",
            c.bf16
                .map(|p| p.name().to_string())
                .unwrap_or_else(|| "unavailable".into()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Features {
        Features {
            avx2: true,
            fma: true,
            f16c: true,
            avx512f: true,
            avx512bw: true,
            avx512dq: true,
            avx512vl: true,
            avx512vnni: true,
            avxvnni: true,
            avx512bf16: true,
            amx_tile: true,
            amx_bf16: true,
            amx_int8: true,
            amx_permitted: true,
        }
    }

    #[test]
    fn choices_follow_features_and_cap() {
        let full = all();
        let native = Choice::new(&full, Cap::Native);
        assert_eq!(native.level, Level::Avx512);
        assert_eq!(native.bf16, Some(Bf16Path::Amx));
        assert_eq!(native.int8, Int8Path::Avx512Vnni);
        // Without the OS's permission AMX is not used, AVX512-BF16 is.
        let refused = Features {
            amx_permitted: false,
            ..full.clone()
        };
        assert_eq!(
            Choice::new(&refused, Cap::Native).bf16,
            Some(Bf16Path::Avx512Bf16)
        );
        // Capped at avx512: no AMX.
        let capped = Choice::new(&full, Cap::Level(Level::Avx512));
        assert_eq!(capped.bf16, Some(Bf16Path::Avx512Bf16));
        // Capped at avx2: no bf16; int8 keeps AVX-VNNI (a 256-bit instruction).
        let avx2 = Choice::new(&full, Cap::Level(Level::Avx2));
        assert_eq!(
            (avx2.level, avx2.bf16, avx2.int8),
            (Level::Avx2, None, Int8Path::AvxVnni)
        );
        // An AVX2-only CPU (the AMD machines): AVX2 everywhere, no bf16.
        let amd = Features {
            avx2: true,
            fma: true,
            ..Features::default()
        };
        let c = Choice::new(&amd, Cap::Native);
        assert_eq!(
            (c.level, c.int8, c.bf16),
            (Level::Avx2, Int8Path::Avx2, None)
        );
        // A cap never enables what the CPU lacks.
        assert_eq!(
            Choice::new(&amd, Cap::Level(Level::Avx512)).level,
            Level::Avx2
        );
        assert_eq!(
            Choice::new(&Features::default(), Cap::Native).level,
            Level::Portable
        );
    }

    #[test]
    fn cap_values_parse() {
        assert_eq!(Cap::parse("AVX2"), Ok(Cap::Level(Level::Avx2)));
        assert_eq!(Cap::parse("native"), Ok(Cap::Native));
        assert!(Cap::parse("avx1024").is_err());
    }

    #[test]
    fn this_machine_reports_its_paths() {
        let f = features();
        println!("features: {:?}", f.names());
        for (op, path) in kernel_paths() {
            println!("{op}: {path}");
        }
        // Detection agrees with std's where std can tell.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(f.avx2, std::arch::is_x86_feature_detected!("avx2"));
        assert!(kernel_paths().len() >= 8);
    }
}
