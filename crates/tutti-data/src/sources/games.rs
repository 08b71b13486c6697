//! Game packages' audio for the distillation pool: which folders hold effects and ambience,
//! spoken messages, or music, per package. None of these packages is read by the standard suite
//! (its game audio comes from 0 A.D., Wesnoth's data package, Hedgewars and Frozen Bubble), so
//! the pool's game sources cannot meet an evaluation split.
//!
//! Licences: SuperTuxKart (GPL-3 / CC BY-SA), Widelands (GPL-2+ / CC BY-SA), Colobot (GPL-3),
//! Pingus (GPL-3), Warzone 2100 (GPL-2+), Wesnoth music (GPL-2+), SuperTux (GPL-3 / CC BY-SA),
//! Extreme Tux Racer (GPL-2+), Warmux (GPL-2+), Freedroid (GPL-2+).

/// A folder (relative to the package root) and the domain of what is inside it.
#[derive(Debug, Clone, Copy)]
pub struct Folder {
    pub package: &'static str,
    pub path: &'static str,
    pub domain: &'static str,
}

/// The pool's game folders. Warzone 2100's audio sits in `audio-x/` (unzipped from `base.wz` by
/// `scripts/build_pool.sh`); its spoken mission messages and unit reports are speech.
pub const FOLDERS: &[Folder] = &[
    Folder {
        package: "supertuxkart-data",
        path: "usr/share/games/supertuxkart/data/sfx",
        domain: "sound",
    },
    Folder {
        package: "supertuxkart-data",
        path: "usr/share/games/supertuxkart/data/music",
        domain: "music",
    },
    Folder {
        package: "widelands-data",
        path: "usr/share/games/widelands/data/sound",
        domain: "sound",
    },
    Folder {
        package: "widelands-data",
        path: "usr/share/games/widelands/data/music",
        domain: "music",
    },
    Folder {
        package: "colobot-common-sounds",
        path: "usr/share/games/colobot/sounds",
        domain: "sound",
    },
    Folder {
        package: "colobot-common-sounds",
        path: "usr/share/games/colobot/music",
        domain: "music",
    },
    Folder {
        package: "pingus-data",
        path: "usr/share/games/pingus/data/sounds",
        domain: "sound",
    },
    Folder {
        package: "warzone2100-data",
        path: "audio-x/audio/sfx",
        domain: "sound",
    },
    Folder {
        package: "warzone2100-data",
        path: "audio-x/audio/tutorial",
        domain: "speech",
    },
    Folder {
        package: "warzone2100-data",
        path: "audio-x/audio/memressp",
        domain: "speech",
    },
    Folder {
        package: "warzone2100-data",
        path: "audio-x/audio/countdown",
        domain: "speech",
    },
    Folder {
        package: "warzone2100-data",
        path: "audio-x/audio/vtoltalk",
        domain: "speech",
    },
    Folder {
        package: "warzone2100-music",
        path: "usr/share/games/warzone2100/music",
        domain: "music",
    },
    Folder {
        package: "wesnoth-1.16-music",
        path: "usr/share/games/wesnoth/1.16/data/core/music",
        domain: "music",
    },
    Folder {
        package: "supertux-data",
        path: "usr/share/games/supertux2/sounds",
        domain: "sound",
    },
    Folder {
        package: "supertux-data",
        path: "usr/share/games/supertux2/speech",
        domain: "speech",
    },
    Folder {
        package: "supertux-data",
        path: "usr/share/games/supertux2/music",
        domain: "music",
    },
    Folder {
        package: "extremetuxracer-data",
        path: "usr/share/games/etr/sounds",
        domain: "sound",
    },
    Folder {
        package: "extremetuxracer-data",
        path: "usr/share/games/etr/music",
        domain: "music",
    },
    Folder {
        package: "warmux-data",
        path: "usr/share/games/warmux/sound/default/weapons",
        domain: "sound",
    },
    Folder {
        package: "warmux-data",
        path: "usr/share/games/warmux/sound/default/misc",
        domain: "sound",
    },
    Folder {
        package: "warmux-data",
        path: "usr/share/games/warmux/sound/default/voices",
        domain: "speech",
    },
    Folder {
        package: "warmux-data",
        path: "usr/share/games/warmux/music",
        domain: "music",
    },
    Folder {
        package: "freedroid-data",
        path: "usr/share/games/freedroid/sound",
        domain: "sound",
    },
];

/// The audio file extensions the game packages use.
pub const EXTENSIONS: &[&str] = &["ogg", "wav", "flac", "mp3", "opus"];
