//! `serde(with = ...)` for durations written the human way ("5s", "10min", "1h 30m").

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Writes a duration as humantime text ("5s").
pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

/// Reads humantime text; a bare number is refused (seconds or milliseconds would be a guess).
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({error}); write it with a unit, e.g. \"5s\" or \"10min\""
        ))
    })
}
