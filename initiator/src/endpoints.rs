//! Where a volume is exported and how to get a negotiated connection to it: the API's
//! `GET /v1/exports/{volume}` (or endpoints given on the command line), then a TCP connection
//! per endpoint with the NBD handshake run in userspace by `basalt::nbd::client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use basalt::api::client::{Client, ClientError};
use basalt::nbd::{ClientHandshake, ClientNegotiated};
use bytes::BytesMut;
use socket2::{SockRef, TcpKeepalive};

use crate::error::Error;

/// Reads allowed for one handshake (a handshake is a few hundred bytes; each read returns
/// at least one).
const HANDSHAKE_READS_MAX: usize = 1024;

/// Where endpoints come from.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// API base URLs, tried in order.
    pub api: Vec<String>,
    /// Bearer token for the API.
    pub token: Option<String>,
    /// Fixed NBD endpoints (`HOST:PORT`); when set the API is not asked.
    pub servers: Vec<String>,
}

/// A volume's export as the API (or the command line) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// Volume name.
    pub volume: String,
    /// NBD export name.
    pub export_name: String,
    /// Size the API reported (the handshake's size is what the kernel gets).
    pub size_bytes: Option<u64>,
    /// NBD endpoints, preferred first.
    pub endpoints: Vec<String>,
}

fn map_client_error(volume: &str, url: &str, error: ClientError) -> Error {
    match error {
        ClientError::Problem(problem) if problem.status == 404 => Error::VolumeNotFound {
            volume: volume.to_owned(),
            url: url.to_owned(),
        },
        ClientError::Problem(problem) if matches!(problem.status, 401 | 403) => {
            Error::Unauthorized {
                url: url.to_owned(),
                detail: problem.detail.unwrap_or(problem.title),
            }
        }
        ClientError::InvalidUrl { .. } => Error::BadArgument(error.to_string()),
        other => Error::Api(other.to_string()),
    }
}

/// Looks the volume's export up: the command line's servers, or the first API that answers.
pub fn lookup(volume: &str, source: &Source, timeout: Duration) -> Result<Export, Error> {
    if !source.servers.is_empty() {
        return Ok(Export {
            volume: volume.to_owned(),
            export_name: volume.to_owned(),
            size_bytes: None,
            endpoints: source.servers.clone(),
        });
    }
    if source.api.is_empty() {
        return Err(Error::BadArgument(
            "give --api URL or --server HOST:PORT".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Api(format!("cannot start the HTTP runtime: {e}")))?;
    let mut unreachable = Vec::new();
    for url in &source.api {
        let client = Client::new(url, source.token.clone(), timeout)
            .map_err(|e| map_client_error(volume, url, e))?;
        match runtime.block_on(client.export(volume)) {
            Ok(view) => {
                return Ok(Export {
                    volume: view.volume,
                    export_name: view.export_name,
                    size_bytes: Some(view.size_bytes),
                    endpoints: view.endpoints.into_iter().map(|e| e.address).collect(),
                });
            }
            Err(error) if error.is_unreachable() => {
                tracing::warn!(%url, %error, "API unreachable, trying the next one");
                unreachable.push(error.to_string());
            }
            Err(error) => return Err(map_client_error(volume, url, error)),
        }
    }
    Err(Error::ApiUnreachable(unreachable.join("; ")))
}

/// One connection in transmission phase, ready for the kernel.
#[derive(Debug)]
pub struct Connection {
    /// The socket (blocking, no timeouts, `TCP_NODELAY`, keepalive on).
    pub stream: TcpStream,
    /// The endpoint.
    pub address: String,
    /// What the server agreed to.
    pub negotiated: ClientNegotiated,
}

/// Connects to `address` and negotiates `export_name`; errors are one line for the operator.
pub fn open(address: &str, export_name: &str, timeout: Duration) -> Result<Connection, String> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last = format!("connect {addr}: {error}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    stream.set_nodelay(true).map_err(|e| io("TCP_NODELAY", e))?;
    // A server host that vanishes without a reset is noticed within about 20 s.
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(2);
    SockRef::from(&stream)
        .set_tcp_keepalive(&keepalive)
        .map_err(|e| io("keepalive", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| io("timeout", e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| io("timeout", e))?;
    let negotiated = handshake(&mut stream, export_name)?;
    // The kernel reads and writes this socket from now on; a timeout left here would turn an
    // idle moment into a dead connection.
    stream
        .set_read_timeout(None)
        .map_err(|e| io("timeout", e))?;
    stream
        .set_write_timeout(None)
        .map_err(|e| io("timeout", e))?;
    Ok(Connection {
        stream,
        address: address.to_owned(),
        negotiated,
    })
}

fn handshake(stream: &mut TcpStream, export_name: &str) -> Result<ClientNegotiated, String> {
    let mut client = ClientHandshake::new(export_name).map_err(|e| e.to_string())?;
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..HANDSHAKE_READS_MAX {
        let outcome = client.handle_input(&mut input).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        if !out.is_empty() {
            stream
                .write_all(&out)
                .map_err(|e| format!("handshake write: {e}"))?;
        }
        if let Some(negotiated) = outcome {
            return Ok(negotiated);
        }
        let read = stream
            .read(&mut chunk)
            .map_err(|e| format!("handshake read: {e}"))?;
        if read == 0 {
            return Err("server closed the connection during the handshake".into());
        }
        input.extend_from_slice(&chunk[..read]);
    }
    Err("handshake did not finish".into())
}
