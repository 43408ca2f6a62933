//! Attach, detach and list: the one-shot commands. Each either finishes its job or leaves
//! nothing behind (sockets closed, no device connected, no state file).

use std::os::fd::AsRawFd;
use std::time::Duration;

use basalt::nbd::consts::{FLAG_CAN_MULTI_CONN, FLAG_READ_ONLY};
use serde::Serialize;

use crate::endpoints::{self, Connection, Export, Source};
use crate::error::Error;
use crate::kernel::Kernel;
use crate::netlink::ConnectParams;
use crate::state::{DeviceState, StateDir, device_path, parse_device};

/// Logical block size of every device (Basalt's block size).
pub const BLOCK_SIZE_BYTES: u64 = 4096;
/// Most connections per device (the kernel allows more; more than this only adds overhead).
pub const CONNECTIONS_MAX: u32 = 16;
/// Longest dead-connection timeout accepted (a day): beyond it a hung host is likelier than a
/// recovering cluster.
pub const DEAD_CONN_TIMEOUT_SECS_MAX: u64 = 24 * 3600;

/// What `attach` was asked for.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Volume name.
    pub volume: String,
    /// Where endpoints come from.
    pub source: Source,
    /// Connections to hand to the kernel.
    pub connections: u32,
    /// A specific device, or the first free one.
    pub device: Option<u32>,
    /// Per-request timeout for the kernel (seconds, 0 = kernel default).
    pub timeout_secs: u64,
    /// How long I/O waits for a reconnect when every connection is dead (seconds).
    pub dead_conn_timeout_secs: u64,
    /// Bound on each API call, TCP connect and handshake.
    pub connect_timeout: Duration,
}

impl AttachOptions {
    fn validate(&self) -> Result<(), Error> {
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(Error::BadArgument(format!(
                "--connections must be 1 to {CONNECTIONS_MAX}"
            )));
        }
        if self.dead_conn_timeout_secs > DEAD_CONN_TIMEOUT_SECS_MAX {
            return Err(Error::BadArgument(format!(
                "--dead-conn-timeout must be at most {DEAD_CONN_TIMEOUT_SECS_MAX} s"
            )));
        }
        if self.volume.is_empty() {
            return Err(Error::BadArgument("empty volume name".into()));
        }
        Ok(())
    }
}

/// Checks that a connection can back a kernel device with `connections` connections and,
/// for a replacement, that it matches what the device was attached with.
pub fn check_compatible(
    connection: &Connection,
    connections: u32,
    expected: Option<(u64, u16)>,
) -> Result<(), String> {
    let negotiated = &connection.negotiated;
    if let Some(sizes) = negotiated.block_sizes
        && u64::from(sizes.minimum) > BLOCK_SIZE_BYTES
    {
        return Err(format!("minimum block size {} > 4096", sizes.minimum));
    }
    if connections > 1 && negotiated.transmission_flags & FLAG_CAN_MULTI_CONN == 0 {
        return Err("server does not allow multiple connections".into());
    }
    if let Some((size, flags)) = expected {
        if negotiated.size_bytes != size {
            return Err(format!(
                "export size {} differs from the device's {size}",
                negotiated.size_bytes
            ));
        }
        let ro = FLAG_READ_ONLY;
        if negotiated.transmission_flags & ro != flags & ro {
            return Err("read-only flag differs from the device's".into());
        }
    }
    Ok(())
}

/// Opens `count` negotiated connections to the first endpoint that gives them all.
pub fn open_connections(
    export: &Export,
    endpoints: &[String],
    count: u32,
    timeout: Duration,
    expected: Option<(u64, u16)>,
) -> Result<Vec<Connection>, Error> {
    let mut reasons = Vec::new();
    'endpoints: for address in endpoints {
        let mut connections = Vec::new();
        for _ in 0..count {
            match endpoints::open(address, &export.export_name, timeout).and_then(|connection| {
                check_compatible(&connection, count, expected).map(|()| connection)
            }) {
                Ok(connection) => connections.push(connection),
                Err(reason) => {
                    tracing::warn!(%address, %reason, "endpoint unusable");
                    reasons.push(format!("{address}: {reason}"));
                    continue 'endpoints;
                }
            }
        }
        return Ok(connections);
    }
    if reasons.is_empty() {
        reasons.push("the volume has no NBD endpoint (no node up?)".into());
    }
    Err(Error::NoEndpoint {
        volume: export.volume.clone(),
        reasons: reasons.join("; "),
    })
}

fn fd_of(connection: &Connection) -> u32 {
    // File descriptors are non-negative.
    u32::try_from(connection.stream.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Refuses a volume attached already and a requested device in use.
fn check_free(
    kernel: &mut Kernel,
    states: &StateDir,
    options: &AttachOptions,
) -> Result<(), Error> {
    let devices = kernel.status(None)?;
    for state in states.all()? {
        let connected = devices
            .iter()
            .any(|d| d.index == state.index && d.connected);
        if connected && state.volume == options.volume {
            return Err(Error::BadArgument(format!(
                "volume {:?} is attached already as {}",
                state.volume, state.device
            )));
        }
    }
    if let Some(index) = options.device
        && devices.iter().any(|d| d.index == index && d.connected)
    {
        return Err(Error::DeviceBusy {
            device: device_path(index),
        });
    }
    Ok(())
}

/// Attaches a volume: export lookup, handshakes, `NBD_CMD_CONNECT`, state file.
pub fn attach(
    kernel: &mut Kernel,
    states: &StateDir,
    options: &AttachOptions,
) -> Result<DeviceState, Error> {
    options.validate()?;
    check_free(kernel, states, options)?;
    let export = endpoints::lookup(&options.volume, &options.source, options.connect_timeout)?;
    let connections = open_connections(
        &export,
        &export.endpoints,
        options.connections,
        options.connect_timeout,
        None,
    )?;
    let first = &connections[0].negotiated;
    let params = ConnectParams {
        index: options.device,
        size_bytes: first.size_bytes,
        block_size_bytes: BLOCK_SIZE_BYTES,
        timeout_secs: options.timeout_secs,
        dead_conn_timeout_secs: options.dead_conn_timeout_secs,
        server_flags: u64::from(first.transmission_flags),
        client_flags: 0,
        sockets: connections.iter().map(fd_of).collect(),
    };
    let index = kernel.connect(params).map_err(|error| match error {
        Error::Kernel { error: ref io, .. } if io.raw_os_error() == Some(16) => Error::DeviceBusy {
            device: options
                .device
                .map_or_else(|| "every nbd device".into(), device_path),
        },
        other => other,
    })?;
    let state = DeviceState {
        index,
        device: device_path(index),
        volume: export.volume.clone(),
        export_name: export.export_name.clone(),
        size_bytes: first.size_bytes,
        transmission_flags: first.transmission_flags,
        connections: options.connections,
        servers: connections.iter().map(|c| c.address.clone()).collect(),
        endpoints: export.endpoints.clone(),
        api: options.source.api.clone(),
        timeout_secs: options.timeout_secs,
        dead_conn_timeout_secs: options.dead_conn_timeout_secs,
        supervisor_pid: None,
        reconnects: 0,
        last_event: "attached".into(),
    };
    // The kernel holds its own references to the sockets now.
    drop(connections);
    if let Err(error) = states.save(&state) {
        // Leave nothing half-attached: a device nobody can find by volume is worse than none.
        if let Err(undo) = kernel.disconnect(index) {
            tracing::error!(%undo, device = %state.device, "could not undo the attach");
        }
        return Err(error);
    }
    tracing::info!(device = %state.device, volume = %state.volume,
        servers = ?state.servers, size_bytes = state.size_bytes, "attached");
    Ok(state)
}

/// Resolves a detach target (`/dev/nbdN`, `nbdN` or a volume name) to a device index.
pub fn resolve_target(states: &StateDir, target: &str) -> Result<u32, Error> {
    if let Some(index) = parse_device(target) {
        return Ok(index);
    }
    if target.starts_with("/dev/") {
        return Err(Error::BadDevice(target.to_owned()));
    }
    states
        .all()?
        .into_iter()
        .find(|state| state.volume == target)
        .map(|state| state.index)
        .ok_or_else(|| Error::NotAttached(target.to_owned()))
}

/// Detaches a device (`NBD_CMD_DISCONNECT`) and forgets it; a running supervisor sees its
/// state file go and exits.
pub fn detach(kernel: &mut Kernel, states: &StateDir, target: &str) -> Result<String, Error> {
    let index = resolve_target(states, target)?;
    let connected = kernel
        .status(Some(index))
        .unwrap_or_default()
        .iter()
        .any(|d| d.index == index && d.connected);
    let recorded = states.load(index)?.is_some();
    if !connected && !recorded {
        return Err(Error::NotAttached(target.to_owned()));
    }
    states.remove(index)?;
    if connected {
        kernel.disconnect(index)?;
    }
    let device = device_path(index);
    tracing::info!(%device, "detached");
    Ok(device)
}

/// One line of `list`.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    /// Device path.
    pub device: String,
    /// Volume (`None` for a device this initiator did not attach).
    pub volume: Option<String>,
    /// Whether the kernel has the device configured.
    pub connected: bool,
    /// Server of each connection.
    pub servers: Vec<String>,
    /// Connections replaced since attach.
    pub reconnects: u64,
    /// Whether a supervisor process is alive for it.
    pub supervised: bool,
    /// Last supervisor transition.
    pub last_event: String,
}

/// Devices from `NBD_CMD_STATUS` joined with the state files.
pub fn list(kernel: &mut Kernel, states: &StateDir) -> Result<Vec<ListEntry>, Error> {
    let devices = kernel.status(None)?;
    let recorded = states.all()?;
    let mut out = Vec::new();
    for device in devices.iter().filter(|d| d.connected) {
        let state = recorded.iter().find(|s| s.index == device.index);
        out.push(entry(device.index, true, state));
    }
    for state in &recorded {
        if !devices
            .iter()
            .any(|d| d.index == state.index && d.connected)
        {
            out.push(entry(state.index, false, Some(state)));
        }
    }
    out.sort_by_key(|e| parse_device(&e.device));
    Ok(out)
}

fn entry(index: u32, connected: bool, state: Option<&DeviceState>) -> ListEntry {
    ListEntry {
        device: device_path(index),
        volume: state.map(|s| s.volume.clone()),
        connected,
        servers: state.map(|s| s.servers.clone()).unwrap_or_default(),
        reconnects: state.map_or(0, |s| s.reconnects),
        supervised: state
            .and_then(|s| s.supervisor_pid)
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()),
        last_event: state.map_or_else(
            || "not attached by basalt-initiator".into(),
            |s| s.last_event.clone(),
        ),
    }
}
