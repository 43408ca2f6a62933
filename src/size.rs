//! Human sizes ("10G", "512M", "1GiB", "4096") for the config file, the API and the CLI.
//!
//! # Why our own parser
//! `bytesize` reads "10G" as 10 × 10⁹ bytes. For a block device operators mean GiB (that is what
//! `qemu-img`, `truncate` and LVM do), and a volume of 10 × 10⁹ bytes is not even a multiple of
//! 4 KiB. So here a bare unit letter is binary: `K`, `M`, `G`, `T`, `P` (any case) and the
//! explicit `KiB`..`PiB` are powers of 1024; the SI spellings `KB`..`PB` are powers of 1000 for
//! the rare operator who means them; `B` or no unit is bytes. Only whole numbers are accepted
//! (no "1.5G": ambiguous rounding on a size that must be block-aligned).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Longest size string accepted, in bytes: a u64 in decimal plus a unit, with room for spaces.
pub const SIZE_TEXT_LENGTH_MAX: usize = 32;

/// Why a size string was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Empty, too long, not a whole number, or an unknown unit.
    #[error(
        "invalid size {text:?}: expected a whole number with an optional unit \
         (K, M, G, T, P = KiB..PiB; KB..PB = powers of 1000; B = bytes)"
    )]
    Syntax {
        /// The text given (truncated to `SIZE_TEXT_LENGTH_MAX`).
        text: String,
    },
    /// The number times its unit does not fit in 64 bits.
    #[error("size {text:?} overflows 64 bits")]
    Overflow {
        /// The text given.
        text: String,
    },
}

/// Parses a size: `"10G"` → 10 GiB, `"512M"`, `"1GiB"`, `"4096"`, `"1 TB"` → 10¹² bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax {
        text: text.chars().take(SIZE_TEXT_LENGTH_MAX).collect(),
    };
    if text.len() > SIZE_TEXT_LENGTH_MAX {
        return Err(syntax());
    }
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(syntax());
    }
    let multiplier = unit_multiplier(unit.trim_start()).ok_or_else(syntax)?;
    let number: u64 = digits.parse().map_err(|_| SizeError::Overflow {
        text: text.to_owned(),
    })?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow {
            text: text.to_owned(),
        })
}

/// The multiplier of a unit suffix (case-insensitive), `None` if unknown.
fn unit_multiplier(unit: &str) -> Option<u64> {
    const UNITS: [(&str, &str, &str); 5] = [
        ("k", "kib", "kb"),
        ("m", "mib", "mb"),
        ("g", "gib", "gb"),
        ("t", "tib", "tb"),
        ("p", "pib", "pb"),
    ];
    let unit = unit.to_ascii_lowercase();
    if unit.is_empty() || unit == "b" {
        return Some(1);
    }
    let mut binary: u64 = 1;
    let mut decimal: u64 = 1;
    for (letter, iec, si) in UNITS {
        binary *= 1024;
        decimal *= 1000;
        if unit == letter || unit == iec {
            return Some(binary);
        }
        if unit == si {
            return Some(decimal);
        }
    }
    None
}

/// Formats a byte count with the largest binary unit that divides it exactly ("10GiB",
/// "4KiB", "1000B"), so the text parses back to the same number.
pub fn format_size(size_bytes: u64) -> String {
    const UNITS: [&str; 5] = ["PiB", "TiB", "GiB", "MiB", "KiB"];
    for (index, unit) in UNITS.iter().enumerate() {
        let multiplier = 1u64 << (10 * (UNITS.len() - index));
        if size_bytes != 0 && size_bytes.is_multiple_of(multiplier) {
            return format!("{}{unit}", size_bytes / multiplier);
        }
    }
    format!("{size_bytes}B")
}

/// A size in bytes that deserialises from an integer (bytes) or a string ("10G"), and
/// serialises as an integer. Used by the config file (`drives.size`) and the volume API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl FromStr for Size {
    type Err = SizeError;
    fn from_str(text: &str) -> Result<Self, SizeError> {
        parse_size(text).map(Size)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes, or a string such as \"10G\" or \"512MiB\"")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Size, E> {
        Ok(Size(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Size, E> {
        u64::try_from(value)
            .map(Size)
            .map_err(|_| E::custom(format!("size must not be negative, got {value}")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Size, E> {
        parse_size(text).map(Size).map_err(E::custom)
    }
}

impl utoipa::PartialSchema for Size {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        use utoipa::openapi::{KnownFormat, schema::SchemaType};
        let integer = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Integer))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .description(Some("Size in bytes."));
        let text = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .pattern(Some(r"^\s*[0-9]+\s*([kKmMgGtTpP]([iI]?[bB])?|[bB])?\s*$"))
            .description(Some(
                "Whole number with a unit: K, M, G, T, P (and KiB..PiB) are powers of 1024, \
                 KB..PB powers of 1000.",
            ));
        OneOfBuilder::new()
            .item(integer)
            .item(text)
            .description(Some(
                "A size: bytes as an integer, or a string such as \"10G\".",
            ))
            .examples([
                serde_json::json!("10G"),
                serde_json::json!(1_073_741_824u64),
            ])
            .into()
    }
}

impl utoipa::ToSchema for Size {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_letters_and_explicit_units() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size(" 3k "), Ok(3072));
    }

    #[test]
    fn refuses_garbage_fractions_negative_and_overflow() {
        for bad in ["", "G", "1.5G", "-1G", "10X", "10 G B", "ten", "1e9"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Syntax { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_size("16384P"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(parse_size(&"1".repeat(40)).is_err());
    }

    #[test]
    fn format_round_trips() {
        for size in [0, 1, 1000, 4096, 10 << 30, (1 << 50) * 3, u64::MAX] {
            assert_eq!(parse_size(&format_size(size)), Ok(size), "{size}");
        }
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
    }

    #[test]
    fn deserialises_integer_or_string() {
        let from_number: Size = serde_json::from_str("4096").unwrap();
        let from_text: Size = serde_json::from_str("\"1G\"").unwrap();
        assert_eq!(from_number, Size(4096));
        assert_eq!(from_text, Size(1 << 30));
        assert!(serde_json::from_str::<Size>("-5").is_err());
        assert!(serde_json::from_str::<Size>("\"5X\"").is_err());
        assert_eq!(serde_json::to_string(&from_text).unwrap(), "1073741824");
    }
}
