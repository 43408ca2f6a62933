//! Checks a parsed config; every error names the key it is about.

use super::{NodeConfig, SecretSource};
use crate::meta::{NodeRole, is_valid_name};
use crate::placement::{DRIVES_PER_NODE_MAX, PG_COUNT_MAX, REPLICAS_MAX, ZONE_NAME_LENGTH_MAX};
use crate::units::{BLOCK_SIZE_BYTES, is_valid_chunk_size};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Shortest accepted cluster secret or API token, in bytes: guessing must be out of reach.
pub const SECRET_LENGTH_MIN: usize = 16;
/// Most `meta.join` addresses (a few seeds are enough; any member can redirect to the leader).
pub const JOIN_ADDRESSES_MAX: usize = 16;
/// Most tokens in a config file.
pub const CONFIG_TOKENS_MAX: usize = 64;

/// Why a config file was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Not valid TOML, an unknown key, or a value of the wrong type; the message names the key
    /// and its line.
    #[error("{message}")]
    Parse {
        /// The parser's message.
        message: String,
    },
    /// A value out of range or an inconsistent combination.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `meta.down_after` or `drives[1].size`.
        key: String,
        /// What is wrong, e.g. `must be > 0`.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Checks every value and combination of a parsed config.
pub fn validate(config: &NodeConfig) -> Result<(), ConfigError> {
    if config.node_id.0 == 0 {
        return Err(invalid("node_id", "must be > 0"));
    }
    if let Some(zone) = &config.zone
        && (!is_valid_name(zone) || zone.len() > ZONE_NAME_LENGTH_MAX)
    {
        return Err(invalid("zone", "must match [a-z0-9][a-z0-9._-]{0,62}"));
    }
    if config.data_dir.as_os_str().is_empty() {
        return Err(invalid("data_dir", "must not be empty"));
    }
    validate_listen(config)?;
    validate_drives(config)?;
    validate_meta(config)?;
    validate_scrub(config)?;
    validate_cluster(config)?;
    validate_security(config)
}

fn validate_listen(config: &NodeConfig) -> Result<(), ConfigError> {
    let listens = [
        ("nbd.listen", config.nbd.listen),
        ("api.listen", config.api.listen),
        ("peer.listen", config.peer.listen),
    ];
    for (index, (key, address)) in listens.iter().enumerate() {
        if address.port() == 0 {
            return Err(invalid(*key, "port must be > 0"));
        }
        if let Some((other, _)) = listens[..index].iter().find(|(_, a)| a == address) {
            return Err(invalid(*key, format!("same address as {other}")));
        }
    }
    let advertised = [
        ("api", &config.api.advertise, config.api.listen),
        ("peer", &config.peer.advertise, config.peer.listen),
    ];
    for (table, advertise, listen) in advertised {
        match advertise {
            Some(address) if !is_host_port(address) => {
                return Err(invalid(format!("{table}.advertise"), "must be host:port"));
            }
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    format!("{table}.advertise"),
                    format!("required when {table}.listen is a wildcard address"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_drives(config: &NodeConfig) -> Result<(), ConfigError> {
    if config.drives.len() > DRIVES_PER_NODE_MAX {
        return Err(invalid(
            "drives",
            format!("at most {DRIVES_PER_NODE_MAX} drives per node"),
        ));
    }
    for (index, drive) in config.drives.iter().enumerate() {
        if drive.path.as_os_str().is_empty() {
            return Err(invalid(
                format!("drives[{index}].path"),
                "must not be empty",
            ));
        }
        if config.drives[..index].iter().any(|d| d.path == drive.path) {
            return Err(invalid(format!("drives[{index}].path"), "listed twice"));
        }
        if let Some(size) = drive.size
            && (size.0 == 0 || !size.0.is_multiple_of(u64::from(BLOCK_SIZE_BYTES)))
        {
            return Err(invalid(
                format!("drives[{index}].size"),
                "must be > 0 and a multiple of 4 KiB",
            ));
        }
    }
    Ok(())
}

fn validate_scrub(config: &NodeConfig) -> Result<(), ConfigError> {
    if config.scrub.interval == Duration::ZERO {
        return Err(invalid("scrub.interval", "must be > 0"));
    }
    Ok(())
}

fn validate_meta(config: &NodeConfig) -> Result<(), ConfigError> {
    let meta = &config.meta;
    if meta.down_after == Duration::ZERO {
        return Err(invalid("meta.down_after", "must be > 0"));
    }
    if meta.out_after <= meta.down_after {
        return Err(invalid(
            "meta.out_after",
            "must be longer than meta.down_after",
        ));
    }
    // The read lease lasts two thirds of down_after and is renewed by each heartbeat: at most
    // half of down_after between beats leaves room for one lost beat.
    if meta.heartbeat_interval == Duration::ZERO || meta.heartbeat_interval * 2 > meta.down_after {
        return Err(invalid(
            "meta.heartbeat_interval",
            "must be > 0 and at most half of meta.down_after",
        ));
    }
    if meta.bootstrap && meta.role != NodeRole::Voter {
        return Err(invalid(
            "meta.bootstrap",
            "only a voter can bootstrap a cluster",
        ));
    }
    if meta.bootstrap && !meta.join.is_empty() {
        return Err(invalid(
            "meta.join",
            "must be empty when meta.bootstrap = true",
        ));
    }
    if meta.join.len() > JOIN_ADDRESSES_MAX {
        return Err(invalid(
            "meta.join",
            format!("at most {JOIN_ADDRESSES_MAX} addresses"),
        ));
    }
    if let Some(index) = meta.join.iter().position(|a| !is_host_port(a)) {
        return Err(invalid(format!("meta.join[{index}]"), "must be host:port"));
    }
    Ok(())
}

fn validate_cluster(config: &NodeConfig) -> Result<(), ConfigError> {
    let cluster = &config.cluster;
    if !cluster.pg_count.is_power_of_two() || cluster.pg_count > PG_COUNT_MAX {
        return Err(invalid(
            "cluster.pg_count",
            format!("must be a power of two <= {PG_COUNT_MAX}"),
        ));
    }
    if !(1..=REPLICAS_MAX).contains(&cluster.replicas) {
        return Err(invalid(
            "cluster.replicas",
            format!("must be 1..={REPLICAS_MAX}"),
        ));
    }
    if !(1..=cluster.replicas).contains(&cluster.min_size) {
        return Err(invalid("cluster.min_size", "must be 1..=cluster.replicas"));
    }
    let chunk_ok = u32::try_from(cluster.chunk_size.0).is_ok_and(is_valid_chunk_size);
    if !chunk_ok {
        return Err(invalid(
            "cluster.chunk_size",
            "must be a power of two from 4KiB to 64MiB",
        ));
    }
    Ok(())
}

fn validate_security(config: &NodeConfig) -> Result<(), ConfigError> {
    let security = &config.security;
    if security.cluster_secret.is_some() == security.cluster_secret_file.is_some() {
        return Err(invalid(
            "security",
            "set exactly one of cluster_secret, cluster_secret_file",
        ));
    }
    check_secret("security.cluster_secret", config.cluster_secret())?;
    if security.tokens.len() > CONFIG_TOKENS_MAX {
        return Err(invalid(
            "security.tokens",
            format!("at most {CONFIG_TOKENS_MAX} tokens"),
        ));
    }
    for (index, token) in security.tokens.iter().enumerate() {
        let key = format!("security.tokens[{index}]");
        if !is_valid_name(&token.name) {
            return Err(invalid(
                format!("{key}.name"),
                "must match [a-z0-9][a-z0-9._-]{0,62}",
            ));
        }
        if security.tokens[..index]
            .iter()
            .any(|t| t.name == token.name)
        {
            return Err(invalid(format!("{key}.name"), "listed twice"));
        }
        if token.token.is_some() == token.token_file.is_some() {
            return Err(invalid(key, "set exactly one of token, token_file"));
        }
        check_secret(&format!("{key}.token"), token.source())?;
    }
    Ok(())
}

/// An inline secret must be long enough; a file's content is checked when it is read.
fn check_secret(key: &str, source: SecretSource<'_>) -> Result<(), ConfigError> {
    match source {
        SecretSource::Inline(secret) if secret.trim().len() < SECRET_LENGTH_MIN => Err(invalid(
            key,
            format!("must be at least {SECRET_LENGTH_MIN} bytes"),
        )),
        _ => Ok(()),
    }
}

/// `host:port` with a non-zero port; the host an IP address, `[v6]`, or a DNS name.
pub(crate) fn is_host_port(text: &str) -> bool {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return address.port() != 0;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    port_ok && host_ok
}
