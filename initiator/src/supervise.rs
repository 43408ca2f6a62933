//! Keeps an attached device alive: waits for the kernel's `NBD_CMD_LINK_DEAD` multicast,
//! opens a new negotiated connection to an endpoint of the same volume (the dead server last)
//! and swaps it in with `NBD_CMD_RECONFIGURE`. While every connection is dead the kernel holds
//! I/O for the dead-connection timeout, so a reconnect inside it is invisible to the
//! filesystem above. Retries back off exponentially; every transition is logged and recorded
//! in the state file.

use std::sync::mpsc;
use std::time::Duration;

use crate::attach::open_connections;
use crate::endpoints::{self, Export, Source};
use crate::error::Error;
use crate::kernel::Kernel;
use crate::state::{DeviceState, StateDir};

/// How often the supervisor checks that its device is still attached.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reconnect pacing.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First retry delay.
    pub initial: Duration,
    /// Longest retry delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay before retry `attempt` (0-based): doubling from `initial`, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Endpoints to try for a replacement: preference order, the one that just died last.
pub fn reconnect_order(endpoints: &[String], dead: Option<&str>) -> Vec<String> {
    let (mut alive, dead): (Vec<String>, Vec<String>) = endpoints
        .iter()
        .cloned()
        .partition(|address| Some(address.as_str()) != dead);
    alive.extend(dead);
    alive
}

/// Supervises device `index` until it is detached (its state file disappears or the kernel
/// no longer has it).
pub fn run(
    kernel: &mut Kernel,
    states: &StateDir,
    index: u32,
    source: &Source,
    backoff: Backoff,
    connect_timeout: Duration,
) -> Result<(), Error> {
    let notifications = kernel.subscribe()?;
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("nbd-multicast".into())
        .spawn(move || {
            loop {
                match notifications.recv() {
                    Ok(indexes) => {
                        for dead in indexes {
                            if sender.send(dead).is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "multicast receive failed");
                        std::thread::sleep(POLL_INTERVAL);
                    }
                }
            }
        })
        .map_err(|e| Error::Netlink(format!("cannot start the multicast thread: {e}")))?;
    let Some(mut state) = states.load(index)? else {
        return Err(Error::NotAttached(crate::state::device_path(index)));
    };
    state.supervisor_pid = Some(std::process::id());
    state.last_event = "supervising".into();
    states.save(&state)?;
    tracing::info!(device = %state.device, volume = %state.volume, "supervising");
    loop {
        match receiver.recv_timeout(POLL_INTERVAL) {
            Ok(dead) if dead == index => {
                let slot = usize::try_from(state.reconnects % u64::from(state.connections.max(1)))
                    .unwrap_or(0);
                let dead_server = state.servers.get(slot).cloned();
                tracing::warn!(device = %state.device, server = ?dead_server,
                    "connection dead; reconnecting");
                match reconnect(
                    kernel,
                    states,
                    &mut state,
                    slot,
                    source,
                    backoff,
                    connect_timeout,
                )? {
                    true => {}
                    false => return Ok(()),
                }
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !still_attached(kernel, states, index)? {
                    tracing::info!(device = %state.device, "detached; supervisor exits");
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Netlink("multicast thread ended".into()));
            }
        }
    }
}

fn still_attached(kernel: &mut Kernel, states: &StateDir, index: u32) -> Result<bool, Error> {
    if states.load(index)?.is_none() {
        return Ok(false);
    }
    let devices = kernel.status(Some(index))?;
    Ok(devices.iter().any(|d| d.index == index && d.connected))
}

/// Fresh endpoints from the API when it answers, else the last known ones.
fn refresh_endpoints(state: &DeviceState, source: &Source, timeout: Duration) -> Vec<String> {
    if source.api.is_empty() {
        return state.endpoints.clone();
    }
    match endpoints::lookup(&state.volume, source, timeout) {
        Ok(export) if !export.endpoints.is_empty() => export.endpoints,
        Ok(_) => state.endpoints.clone(),
        Err(error) => {
            tracing::warn!(%error, "endpoint refresh failed; using the last known endpoints");
            state.endpoints.clone()
        }
    }
}

/// Retries until a replacement is in (`true`) or the device is detached (`false`).
fn reconnect(
    kernel: &mut Kernel,
    states: &StateDir,
    state: &mut DeviceState,
    slot: usize,
    source: &Source,
    backoff: Backoff,
    connect_timeout: Duration,
) -> Result<bool, Error> {
    let dead_server = state.servers.get(slot).cloned();
    let export = Export {
        volume: state.volume.clone(),
        export_name: state.export_name.clone(),
        size_bytes: Some(state.size_bytes),
        endpoints: Vec::new(),
    };
    for attempt in 0u32.. {
        if !still_attached(kernel, states, state.index)? {
            return Ok(false);
        }
        let endpoints = refresh_endpoints(state, source, connect_timeout);
        let order = reconnect_order(&endpoints, dead_server.as_deref());
        let expected = Some((state.size_bytes, state.transmission_flags));
        let outcome = open_connections(&export, &order, 1, connect_timeout, expected).and_then(
            |connections| {
                let connection = connections
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Netlink("no connection opened".into()))?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&connection.stream);
                let fd = u32::try_from(fd).unwrap_or(u32::MAX);
                kernel.reconfigure(state.index, vec![fd])?;
                Ok(connection.address)
            },
        );
        match outcome {
            Ok(address) => {
                if let Some(entry) = state.servers.get_mut(slot) {
                    entry.clone_from(&address);
                }
                state.endpoints = endpoints;
                state.reconnects += 1;
                state.last_event =
                    format!("reconnected to {address} after {} attempts", attempt + 1);
                tracing::info!(device = %state.device, server = %address, attempt = attempt + 1,
                    "reconnected");
                if states.load(state.index)?.is_some() {
                    states.save(state)?;
                }
                return Ok(true);
            }
            Err(error) => {
                let delay = backoff.delay(attempt);
                state.last_event = format!("reconnect attempt {} failed: {error}", attempt + 1);
                tracing::warn!(device = %state.device, attempt = attempt + 1, %error,
                    retry_in = ?delay, "reconnect failed");
                std::thread::sleep(delay);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (0..6).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn dead_server_goes_last() {
        let endpoints: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        assert_eq!(
            reconnect_order(&endpoints, Some("a:1")),
            ["b:1", "c:1", "a:1"]
        );
        assert_eq!(reconnect_order(&endpoints, Some("z:1")), endpoints);
        assert_eq!(reconnect_order(&endpoints, None), endpoints);
    }
}
