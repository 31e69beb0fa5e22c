//! The volume config file `sealfs.toml`: format version, feature flags, chunk
//! size, and for a layout-1 keyring the key-derivation parameters (also in
//! the keyring header, which is authoritative). A volume with keyslots
//! (feature `keyslots`, keyring layout 2) has no `[kdf]` section: each slot
//! carries its own parameters in the keyring.
//!
//! Owns: parsing and writing the TOML text, and refusing versions and
//! features this build does not understand.
//! Must never: read files or hold secrets (the config holds none).

use serde::{Deserialize, Serialize};

use crate::crypto::Argon2Params;
use crate::format::chunk::ContentFormat;
use crate::format::layout::CHUNK_SIZE;

pub use crate::format::reserved::CONFIG_FILE;
/// Highest volume format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Feature flags this build understands; a volume naming another is refused.
pub const KNOWN_FEATURES: &[&str] = &[
    "chunked-aes256-gcm-siv",
    "group-metadata-blocks",
    "last-chunk-flag",
    "dir-ids-two-copies",
    "long-names",
    "path-bound-keys",
    "keyslots",
    "padded-names",
    FEATURE_HARD_LINKS,
    FEATURE_XATTRS,
    FEATURE_SEALED_GROUP_STATE,
    FEATURE_KEYLESS_XATTR_IDS,
    FEATURE_EXTERNAL_KEYRING,
    FEATURE_PACKED_TAILS,
    FEATURE_KEY_GRANTS,
];
/// Feature: a grant may name a key other than the default key (issue 22,
/// docs/FORMAT.md §10): it opens only that key's entries. Added by the
/// first such grant (new volumes have it); a build without it would read
/// such a grant as one on every key, so it refuses the volume instead.
pub const FEATURE_KEY_GRANTS: &str = "key-grants";
/// Feature: the keyring is kept outside CIPHERDIR (`init --keyring-dir`;
/// every command that unlocks needs `--keyring-dir DIR`). Only volumes
/// made that way have it.
pub const FEATURE_EXTERNAL_KEYRING: &str = "external-keyring";
/// The feature flag of a keyring with keyslots (layout 2): a build
/// without it refuses the volume rather than misread its keyring.
pub const FEATURE_KEYSLOTS: &str = "keyslots";
/// Feature: files may have several names, with a link table in block 0
/// (docs/FORMAT.md §4.2). Without it `link(2)` is refused (EPERM).
pub const FEATURE_HARD_LINKS: &str = "hard-links";
/// Feature: encrypted extended attributes and POSIX ACLs (docs/FORMAT.md
/// §9.1). Without it every xattr call is refused (EOPNOTSUPP).
pub const FEATURE_XATTRS: &str = "xattrs";
/// The feature flag of names padded to 16 bytes before sealing
/// (docs/FORMAT.md §7.1); volumes without it seal names as they are.
pub const PADDED_NAMES: &str = "padded-names";
/// Feature: the extended attributes of a symlink or special node are
/// bound to the node's own random id (`trusted.sealfs.node`,
/// docs/FORMAT.md §9.1) instead of the root directory's id, so a value
/// moved between two such nodes fails. Without it they stay root-bound.
pub const FEATURE_KEYLESS_XATTR_IDS: &str = "keyless-xattr-ids";
/// The feature flag of sealed group states (docs/FORMAT.md §4): new volumes
/// have it; a volume without it keeps the first content format.
pub const FEATURE_SEALED_GROUP_STATE: &str = "sealed-group-state";

/// Feature: a file that ends in group 0 keeps its final chunk's data in
/// block 0 when it fits (a packed tail, docs/FORMAT.md §4.7), so a small
/// file takes one backing block. Needs sealed group states.
pub const FEATURE_PACKED_TAILS: &str = "packed-tails";

/// Errors reading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML or missing fields.
    #[error("sealfs.toml is corrupted: {0}")]
    Parse(String),
    /// Written by a newer sealfs.
    #[error("volume format version {0} is newer than this sealfs supports ({FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// Uses a feature this build lacks.
    #[error("volume uses feature '{0}' that this sealfs does not support")]
    UnknownFeature(String),
    /// Field has an unusable value.
    #[error("sealfs.toml is corrupted: {0}")]
    Invalid(String),
    /// Key-derivation parameters outside the accepted range (weakened below
    /// the minimum, or beyond the maximum).
    #[error("sealfs.toml: refusing the volume: {0}")]
    KdfParams(String),
}

/// How the key-encryption key that seals the keyring is obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KdfConfig {
    /// A passphrase stretched with Argon2id.
    Argon2id {
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
        /// Salt, hex.
        salt: String,
    },
    /// A 32-byte key file, expanded with HKDF-SHA256.
    KeyFile {
        /// Salt, hex.
        salt: String,
    },
}

/// The parsed `sealfs.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// On-disk format version.
    pub format_version: u32,
    /// Feature flags in use.
    pub features: Vec<String>,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Random volume id, hex (bound into every key derivation and wrapping).
    pub volume_id: String,
    /// Automatic rotation period ("90d", "12h", …); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<String>,
    /// Key derivation of the unlock secret (layout-1 keyrings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfConfig>,
    /// Every mount must be a shared-storage one (`--shared-storage`): the
    /// volume lives on storage several hosts mount. Absent = false. Not a
    /// format feature: an older sealfs ignores it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared_storage: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl VolumeConfig {
    /// A new config for a fresh volume (every feature, keyslots included).
    pub fn new(volume_id: [u8; 16]) -> Self {
        VolumeConfig {
            format_version: FORMAT_VERSION,
            features: KNOWN_FEATURES
                .iter()
                .filter(|f| **f != FEATURE_EXTERNAL_KEYRING)
                .map(|s| s.to_string())
                .collect(),
            chunk_size: CHUNK_SIZE as u32,
            volume_id: hex(&volume_id),
            rotation_period: None,
            kdf: None,
            shared_storage: false,
        }
    }

    /// The config of a volume whose keyring is layout 1 (no keyslots),
    /// with the keyring's KDF: what `sealfs init` wrote before keyslots.
    pub fn layout1(volume_id: [u8; 16], kdf: KdfConfig) -> Self {
        let mut c = Self::new(volume_id);
        c.features.retain(|f| {
            ![
                FEATURE_KEYSLOTS,
                FEATURE_HARD_LINKS,
                FEATURE_XATTRS,
                FEATURE_KEYLESS_XATTR_IDS,
                FEATURE_PACKED_TAILS,
                // Named keys need keyslots (keyring layout 2).
                FEATURE_KEY_GRANTS,
            ]
            .contains(&f.as_str())
        });
        c.kdf = Some(kdf);
        c
    }

    /// Whether the volume announces a keyring with keyslots.
    pub fn has_keyslots(&self) -> bool {
        self.features.iter().any(|f| f == FEATURE_KEYSLOTS)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: VolumeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_string()))?;
        if c.format_version > FORMAT_VERSION || c.format_version == 0 {
            return Err(ConfigError::UnsupportedVersion(c.format_version));
        }
        if let Some(f) = c
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(ConfigError::UnknownFeature(f.clone()));
        }
        if c.chunk_size as u64 != CHUNK_SIZE {
            return Err(ConfigError::Invalid(format!(
                "chunk_size {} (only {CHUNK_SIZE} is supported)",
                c.chunk_size
            )));
        }
        c.volume_id_bytes()?;
        if c.has_feature(FEATURE_PACKED_TAILS) && !c.has_feature(FEATURE_SEALED_GROUP_STATE) {
            return Err(ConfigError::Invalid(format!(
                "feature '{FEATURE_PACKED_TAILS}' needs '{FEATURE_SEALED_GROUP_STATE}'"
            )));
        }
        if c.kdf.is_none() && !c.has_keyslots() {
            return Err(ConfigError::Invalid(
                "no [kdf] section (needed without the keyslots feature)".into(),
            ));
        }
        if let Some(p) = c.argon2_params() {
            p.check().map_err(|e| match e {
                crate::crypto::CryptoError::KdfParams(m) => ConfigError::KdfParams(m),
                e => ConfigError::KdfParams(e.to_string()),
            })?;
        }
        if let Some(p) = &c.rotation_period {
            parse_duration(p).map_err(|e| ConfigError::Invalid(format!("rotation_period: {e}")))?;
        }
        Ok(c)
    }

    /// Whether the volume has feature `f`.
    pub fn has_feature(&self, f: &str) -> bool {
        self.features.iter().any(|x| x == f)
    }

    /// Serializes to TOML text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("config serializes");
        format!("# sealfs volume config. Holds no secrets; do not edit by hand.\n{body}")
    }

    /// How this volume's file content is laid out (its feature flags).
    pub fn content_format(&self) -> ContentFormat {
        match (
            self.has_feature(FEATURE_SEALED_GROUP_STATE),
            self.has_feature(FEATURE_PACKED_TAILS),
        ) {
            (true, true) => ContentFormat::PackedTails,
            (true, false) => ContentFormat::SealedGroupState,
            (false, _) => ContentFormat::LastChunkFlag,
        }
    }

    /// Sets the feature flag of `format` (for a config rebuilt without the
    /// original, whose content format was found by looking at the files).
    pub fn set_content_format(&mut self, format: ContentFormat) {
        self.features
            .retain(|f| f != FEATURE_SEALED_GROUP_STATE && f != FEATURE_PACKED_TAILS);
        if format.has_group_states() {
            self.features.push(FEATURE_SEALED_GROUP_STATE.into());
        }
        if format == ContentFormat::PackedTails {
            self.features.push(FEATURE_PACKED_TAILS.into());
        }
    }

    /// The volume id as bytes.
    pub fn volume_id_bytes(&self) -> Result<[u8; 16], ConfigError> {
        unhex16(&self.volume_id).ok_or_else(|| ConfigError::Invalid("volume_id".into()))
    }

    /// Argon2 parameters if this volume uses a passphrase.
    pub fn argon2_params(&self) -> Option<Argon2Params> {
        match self.kdf.as_ref()? {
            &KdfConfig::Argon2id {
                memory_kib,
                iterations,
                parallelism,
                ..
            } => Some(Argon2Params {
                memory_kib,
                iterations,
                parallelism,
            }),
            KdfConfig::KeyFile { .. } => None,
        }
    }
}

/// Parses a duration like `90d`, `12h`, `30m`, `45s` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90d, 12h, 30m or 45s"))?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use d, h, m or s)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

/// [`parse_duration`] for what comes from a request: the unit is required
/// (`90` once meant 90 seconds; stored values keep the lenient parse).
pub fn parse_duration_with_unit(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() || t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "'{t}' has no unit: write {t}d (days), {t}h (hours), {t}m (minutes) or {t}s"
        ));
    }
    parse_duration(t)
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses 32 hex digits.
pub fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeConfig {
        VolumeConfig::layout1(
            [0xab; 16],
            KdfConfig::Argon2id {
                memory_kib: 65536,
                iterations: 3,
                parallelism: 2,
                salt: hex(&[1; 16]),
            },
        )
    }

    #[test]
    fn shared_storage_is_written_only_when_set() {
        let mut c = VolumeConfig::new([7; 16]);
        assert!(!c.to_toml().contains("shared_storage"), "old bytes kept");
        c.shared_storage = true;
        let t = c.to_toml();
        assert!(t.contains("shared_storage = true"));
        assert!(VolumeConfig::parse(&t).unwrap().shared_storage);
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let t = c.to_toml();
        assert!(t.contains("format_version = 1"));
        assert!(t.contains("argon2id"));
        assert_eq!(VolumeConfig::parse(&t).unwrap(), c);
    }

    #[test]
    fn new_volumes_have_sealed_group_states_and_old_ones_keep_theirs() {
        let mut c = sample();
        assert_eq!(c.content_format(), ContentFormat::SealedGroupState);
        let v1 = c.to_toml().replace(", \"sealed-group-state\"", "");
        let v1 = v1.replace("    \"sealed-group-state\",\n", "");
        let parsed = VolumeConfig::parse(&v1).unwrap();
        assert_eq!(parsed.content_format(), ContentFormat::LastChunkFlag);
        c.set_content_format(ContentFormat::LastChunkFlag);
        assert_eq!(c.content_format(), ContentFormat::LastChunkFlag);
        assert_eq!(c, parsed);
        c.set_content_format(ContentFormat::SealedGroupState);
        assert_eq!(c, sample());
    }

    #[test]
    fn new_volumes_pack_tails_and_the_flag_needs_group_states() {
        let c = VolumeConfig::new([0xab; 16]);
        assert_eq!(c.content_format(), ContentFormat::PackedTails);
        let mut without = c.clone();
        without.set_content_format(ContentFormat::SealedGroupState);
        assert_eq!(without.content_format(), ContentFormat::SealedGroupState);
        without.set_content_format(ContentFormat::PackedTails);
        assert_eq!(without.content_format(), ContentFormat::PackedTails);
        let mut bad = c.clone();
        bad.features.retain(|f| f != FEATURE_SEALED_GROUP_STATE);
        let e = VolumeConfig::parse(&bad.to_toml()).unwrap_err();
        assert!(e.to_string().contains("needs"), "{e}");
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(matches!(
            VolumeConfig::parse("garbage = ["),
            Err(ConfigError::Parse(_))
        ));
        let t = sample()
            .to_toml()
            .replace("format_version = 1", "format_version = 9");
        assert!(matches!(
            VolumeConfig::parse(&t),
            Err(ConfigError::UnsupportedVersion(9))
        ));
        let t = sample().to_toml().replace("\"long-names\"", "\"quantum\"");
        assert!(matches!(
            VolumeConfig::parse(&t),
            Err(ConfigError::UnknownFeature(_))
        ));
        let t = sample()
            .to_toml()
            .replace("chunk_size = 4096", "chunk_size = 8192");
        assert!(matches!(
            VolumeConfig::parse(&t),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn refuses_weakened_or_excessive_kdf_parameters() {
        let t = sample()
            .to_toml()
            .replace("memory_kib = 65536", "memory_kib = 64");
        match VolumeConfig::parse(&t) {
            Err(ConfigError::KdfParams(m)) => assert!(m.contains("below the minimum"), "{m}"),
            other => panic!("weak memory accepted: {other:?}"),
        }
        let t = sample()
            .to_toml()
            .replace("iterations = 3", "iterations = 0");
        assert!(matches!(
            VolumeConfig::parse(&t),
            Err(ConfigError::KdfParams(_))
        ));
        let t = sample()
            .to_toml()
            .replace("memory_kib = 65536", "memory_kib = 4294967295");
        match VolumeConfig::parse(&t) {
            Err(ConfigError::KdfParams(m)) => assert!(m.contains("above the maximum"), "{m}"),
            other => panic!("huge memory accepted: {other:?}"),
        }
        let t = sample()
            .to_toml()
            .replace("parallelism = 2", "parallelism = 1");
        assert!(VolumeConfig::parse(&t).is_ok());
    }

    #[test]
    fn keyslots_volumes_have_no_kdf_section() {
        let c = VolumeConfig::new([1; 16]);
        assert!(c.has_keyslots());
        let t = c.to_toml();
        assert!(!t.contains("[kdf]"), "{t}");
        assert_eq!(VolumeConfig::parse(&t).unwrap(), c);
        // Without the flag a [kdf] section is required.
        let mut without = c.clone();
        without.features.retain(|f| f != FEATURE_KEYSLOTS);
        assert!(matches!(
            VolumeConfig::parse(&without.to_toml()),
            Err(ConfigError::Invalid(_))
        ));
        assert!(!sample().has_keyslots());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3_600));
        assert_eq!(parse_duration("5s"), Ok(5));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3w").is_err());
        let mut c = sample();
        c.rotation_period = Some("30d".into());
        assert_eq!(VolumeConfig::parse(&c.to_toml()).unwrap(), c);
        let bad = c.to_toml().replace("30d", "soon");
        assert!(VolumeConfig::parse(&bad).is_err());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex16(&hex(&[0x5a; 16])), Some([0x5a; 16]));
        assert_eq!(unhex16("zz"), None);
        assert_eq!(unhex16("é".repeat(16).as_str()), None);
    }
}
