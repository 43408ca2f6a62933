//! Peer transport tests over real TCP sockets on 127.0.0.1 with ephemeral ports: round trips,
//! pipelining, handshake refusals, bad bytes, deadlines, reconnection and connection loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use basalt::ids::{ChunkKey, ClusterId, Epoch, NodeId, PgId, VolumeId};
use basalt::wire::{
    Bytes, BytesMut, ClusterSecret, ControlKind, FRAME_PAYLOAD_SIZE_MAX, Features, Frame,
    Handshake, HandshakeConfig, HandshakeError, Header, Nonce, Opcode, RefuseReason, RequestId,
    Status,
};
use blockd::peer::{
    BoxFuture, CloseReason, ControlHandler, IoHandler, PeerClient, PeerConfig, PeerError,
    PeerServer, PeerService, PeerStats, Peers, Reply, Router,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const SERVER: NodeId = NodeId(1);
const CLIENT: NodeId = NodeId(2);
/// A control kind no production handler uses: the test services echo its body.
const ECHO: ControlKind = ControlKind(77);
/// Safety net for every wait in these tests; never reached when the code works.
const WAIT_MAX: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

fn cluster() -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(0xba5a17))
}

fn config_with(node: NodeId, cluster: ClusterId, secret: &[u8]) -> PeerConfig {
    let mut config = PeerConfig::new(HandshakeConfig {
        cluster,
        node,
        secret: ClusterSecret::new(secret).expect("test secret"),
        features: Features::NONE,
    });
    config.handshake_timeout = Duration::from_secs(5);
    config.call_timeout = Duration::from_secs(15);
    config
}

fn config(node: NodeId) -> PeerConfig {
    config_with(node, cluster(), &[7; 32])
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A service that answers READ with bytes equal to the chunk index, WRITE with OK and
/// pg_version 9, control kind [`ECHO`] with its body; it sleeps up to `delay_max` first and
/// records how many requests ran at once.
#[derive(Default)]
struct Echo {
    delay_max: Duration,
    running: AtomicUsize,
    running_max: AtomicUsize,
}

impl Echo {
    fn with_delay(delay_max: Duration) -> Self {
        Echo {
            delay_max,
            ..Echo::default()
        }
    }

    async fn work(&self) {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.running_max.fetch_max(running, Ordering::SeqCst);
        let delay_us = self.delay_max.as_micros() as u64;
        if delay_us > 0 {
            let pause = Duration::from_micros(rand::random_range(0..=delay_us));
            tokio::time::sleep(pause).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PeerService for Echo {
    async fn handle_io(&self, _peer: NodeId, request: Frame) -> Reply {
        self.work().await;
        let header = request.header;
        match header.opcode {
            Opcode::Read => {
                let data = vec![header.chunk.index as u8; header.length_bytes as usize];
                Reply::ok(header.epoch, Bytes::from(data))
            }
            Opcode::Write if request.payload.len() == header.length_bytes as usize => Reply {
                pg_version: 9,
                ..Reply::ok(header.epoch, Bytes::new())
            },
            _ => Reply::error(Status::Invalid, header.epoch),
        }
    }

    async fn handle_control(
        &self,
        _peer: NodeId,
        kind: ControlKind,
        _version: u16,
        body: Bytes,
    ) -> Result<Bytes, Status> {
        self.work().await;
        if kind == ECHO {
            Ok(body)
        } else {
            Err(Status::Unsupported)
        }
    }
}

impl IoHandler for Echo {
    fn handle_io(&self, peer: NodeId, request: Frame) -> BoxFuture<'_, Reply> {
        Box::pin(PeerService::handle_io(self, peer, request))
    }
}

/// A Raft stand-in for the router: answers with the body reversed and the version appended.
struct Reverse;

impl ControlHandler for Reverse {
    fn handle_control(
        &self,
        _peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            let mut reply: Vec<u8> = body.iter().rev().copied().collect();
            reply.push(version as u8);
            Ok(Bytes::from(reply))
        })
    }
}

async fn server<S: PeerService>(service: S, config: PeerConfig) -> PeerServer {
    PeerServer::bind(loopback(), config, Arc::new(service))
        .await
        .expect("bind server")
}

async fn client(server: &PeerServer) -> PeerClient {
    PeerClient::connect(&config(CLIENT), server.local_addr(), Some(SERVER))
        .await
        .expect("connect client")
}

fn write_header(index: u64) -> Header {
    let mut header = Header::new(Opcode::Write, RequestId(0));
    header.pg = PgId(3);
    header.epoch = Epoch(5);
    header.chunk = ChunkKey::new(VolumeId(1), index);
    header.length_bytes = 4096;
    header
}

/// Polls `condition` until it holds, at most [`WAIT_MAX`] (bounded count of short sleeps).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..(WAIT_MAX.as_millis() / 10) {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn closed(stats: &PeerStats, reason: CloseReason) -> u64 {
    stats.snapshot().closed(reason)
}

/// Goal: an I/O request and a control message each make a full round trip through a
/// [`Router`], with replies echoing the request's address, and unknown kinds answered
/// `Unsupported` without harming the connection.
#[tokio::test]
async fn io_and_control_round_trip() {
    init_logs();
    let router = Router::new()
        .with_io(Arc::new(Echo::default()))
        .with_control(ControlKind::RAFT, Arc::new(Reverse));
    let server = server(router, config(SERVER)).await;
    let client = client(&server).await;
    assert_eq!(client.peer(), SERVER);

    let header = write_header(2);
    let reply = client
        .call(header, Bytes::from(vec![0xab; 4096]))
        .await
        .unwrap();
    assert!(reply.header.is_reply());
    assert_eq!(reply.header.status, Status::Ok);
    assert_eq!(reply.header.pg_version, 9);
    assert_eq!(
        (reply.header.chunk, reply.header.pg),
        (header.chunk, header.pg)
    );

    let mut read = write_header(6);
    read.opcode = Opcode::Read;
    let reply = client.call(read, Bytes::new()).await.unwrap();
    assert_eq!(reply.payload, vec![6u8; 4096]);

    let body = client
        .call_control(ControlKind::RAFT, 3, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    assert_eq!(&body[..], b"cba\x03");
    let unknown = client.call_control(ECHO, 1, Bytes::new()).await;
    assert!(
        matches!(
            unknown,
            Err(PeerError::Status {
                status: Status::Unsupported,
                ..
            })
        ),
        "{unknown:?}"
    );
    assert!(client.is_open());
    assert_eq!(client.in_flight(), 0);
    let stats = server.stats().snapshot();
    assert_eq!((stats.established, stats.requests), (1, 4));
    server.shutdown().await;
}

/// Goal: 1000 pipelined calls on one connection, answered out of order by a handler that
/// sleeps random small amounts, each get their own reply; the server never runs more than its
/// per-connection bound at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_matched_out_of_order() {
    init_logs();
    const CALLS: usize = 1000;
    const BOUND: usize = 64;
    let service = Arc::new(Echo::with_delay(Duration::from_millis(3)));
    let mut server_config = config(SERVER);
    server_config.server_requests_concurrent_max = BOUND;
    let server = PeerServer::bind(loopback(), server_config, service.clone())
        .await
        .unwrap();
    let client = Arc::new(client(&server).await);
    let finished = Arc::new(std::sync::Mutex::new(Vec::with_capacity(CALLS)));
    let mut calls = JoinSet::new();
    for index in 0..CALLS {
        let (client, finished) = (client.clone(), finished.clone());
        calls.spawn(async move {
            let body = Bytes::from(format!("call {index}"));
            let reply = client.call_control(ECHO, 1, body.clone()).await.unwrap();
            assert_eq!(reply, body);
            finished.lock().unwrap().push(index);
        });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    assert_eq!(finished.len(), CALLS);
    assert!(
        !finished.is_sorted(),
        "replies should complete out of order"
    );
    let running_max = service.running_max.load(Ordering::SeqCst);
    assert!(
        (2..=BOUND).contains(&running_max),
        "ran {running_max} at once"
    );
    assert_eq!(client.in_flight(), 0);
    server.shutdown().await;
}

/// Goal: a client with the wrong secret is refused; the client reports the bad proof, the
/// server the refusal, both counted as authentication failures.
#[tokio::test]
async fn wrong_secret_is_refused_on_both_sides() {
    init_logs();
    let server = server(Echo::default(), config(SERVER)).await;
    let wrong = config_with(CLIENT, cluster(), &[9; 32]);
    let result = PeerClient::connect(&wrong, server.local_addr(), Some(SERVER)).await;
    assert!(
        matches!(
            result,
            Err(PeerError::Handshake {
                source: HandshakeError::BadProof,
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    let stats = server.stats().clone();
    eventually("server auth close", || {
        closed(&stats, CloseReason::Auth) == 1
    })
    .await;
    assert_eq!(stats.snapshot().established, 0);
    server.shutdown().await;
}

/// Goal: a client of another cluster is refused with a REFUSE naming the cluster; both sides
/// count it as a cluster mismatch.
#[tokio::test]
async fn wrong_cluster_is_refused_on_both_sides() {
    init_logs();
    let server = server(Echo::default(), config(SERVER)).await;
    let other = config_with(CLIENT, ClusterId(uuid::Uuid::from_u128(1)), &[7; 32]);
    let result = PeerClient::connect(&other, server.local_addr(), Some(SERVER)).await;
    let refused = matches!(
        &result,
        Err(PeerError::Handshake {
            source: HandshakeError::Refused {
                reason: RefuseReason::Cluster,
                ..
            },
            ..
        })
    );
    assert!(refused, "{:?}", result.err());
    let stats = server.stats().clone();
    eventually("server cluster close", || {
        closed(&stats, CloseReason::Cluster) == 1
    })
    .await;
    server.shutdown().await;
}

/// An authenticated connection driven by hand, so the test can send what no client would.
async fn raw_session(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect raw session");
    let nonce = Nonce(rand::random());
    let mut handshake = Handshake::initiator(config(CLIENT).handshake, nonce, Some(SERVER));
    let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
    for _ in 0..8 {
        handshake.poll_transmit(&mut output);
        stream.write_all(&output).await.expect("send handshake");
        output.clear();
        if handshake.poll_established().is_some() {
            return stream;
        }
        assert_ne!(
            stream.read_buf(&mut input).await.expect("read handshake"),
            0,
            "closed early"
        );
        handshake.handle_input(&mut input).expect("handshake step");
    }
    panic!("handshake did not finish");
}

/// Reads until the peer closes (end of stream or reset); returns what arrived.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT_MAX, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "connection was not closed");
    received
}

fn oversized_frame() -> Vec<u8> {
    let header = Header::new(Opcode::Control, RequestId(1));
    let mut bytes = header.encode(&[1, 0, 1, 0]).expect("encode header");
    bytes[68..72].copy_from_slice(&(FRAME_PAYLOAD_SIZE_MAX + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..92]);
    bytes[92..96].copy_from_slice(&crc.to_le_bytes());
    bytes.to_vec()
}

fn bad_crc_frame() -> Vec<u8> {
    let mut bytes = Vec::new();
    let frame = Frame::new(write_header(1), Bytes::from(vec![0; 4096])).expect("build frame");
    frame.encode(&mut bytes).expect("encode frame");
    bytes[40] ^= 0x01;
    bytes
}

/// Goal: garbage, an oversized frame, or a header with a bad checksum on one authenticated
/// connection closes that connection only; a second connection keeps working throughout.
#[tokio::test]
async fn bad_bytes_close_only_their_connection() {
    init_logs();
    let server = server(Echo::default(), config(SERVER)).await;
    let good = client(&server).await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage", vec![0xab; 300]),
        ("oversized", oversized_frame()),
        ("bad header crc", bad_crc_frame()),
    ];
    for (count, (name, bytes)) in cases.into_iter().enumerate() {
        let mut bad = raw_session(server.local_addr()).await;
        bad.write_all(&bytes).await.unwrap();
        read_until_closed(&mut bad).await;
        let stats = server.stats().clone();
        let expected = count as u64 + 1;
        eventually(name, || closed(&stats, CloseReason::Frame) == expected).await;
        let reply = good.call_control(ECHO, 1, Bytes::from_static(b"ok")).await;
        assert_eq!(reply.unwrap(), &b"ok"[..], "after {name}");
    }
    assert_eq!(server.stats().snapshot().established, 4);
    server.shutdown().await;
}

/// Goal: a stream that is not a Basalt peer is refused during the handshake, and the REFUSE
/// frame reaches it before the close.
#[tokio::test]
async fn foreign_stream_gets_a_refuse_frame() {
    init_logs();
    let server = server(Echo::default(), config(SERVER)).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let received = read_until_closed(&mut stream).await;
    let frame = Frame::decode(&received).unwrap();
    assert_eq!(frame.header.opcode, Opcode::Refuse);
    let stats = server.stats().clone();
    eventually("handshake close", || {
        closed(&stats, CloseReason::Handshake) == 1
    })
    .await;
    server.shutdown().await;
}

/// Goal: a client that connects and stays silent is dropped at the handshake deadline while
/// the server keeps accepting others.
#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_deadline() {
    init_logs();
    let mut server_config = config(SERVER);
    server_config.handshake_timeout = Duration::from_millis(200);
    let server = server(Echo::default(), server_config).await;
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    let received = read_until_closed(&mut silent).await;
    assert!(received.is_empty());
    let stats = server.stats().clone();
    eventually("timeout close", || {
        closed(&stats, CloseReason::HandshakeTimeout) == 1
    })
    .await;
    let good = client(&server).await;
    let reply = good.call_control(ECHO, 1, Bytes::from_static(b"hi")).await;
    assert_eq!(reply.unwrap(), &b"hi"[..]);
    server.shutdown().await;
}

/// Calls `node` through `peers` until one succeeds, sleeping between attempts (bounded).
async fn call_until_ok(peers: &Peers, node: NodeId) -> Bytes {
    let mut last_error = None;
    for _ in 0..200 {
        match peers
            .call_control(node, ECHO, 1, Bytes::from_static(b"again"))
            .await
        {
            Ok(body) => return body,
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never reconnected: {last_error:?}");
}

/// Goal: the pool connects lazily, sees the connection die with the server, backs off while
/// the port is closed, reconnects once the server is back on the same port, and follows an
/// address change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reconnect_after_server_restart() {
    init_logs();
    let mut pool_config = config(CLIENT);
    pool_config.reconnect_backoff_min = Duration::from_millis(10);
    pool_config.reconnect_backoff_max = Duration::from_millis(100);
    pool_config.connections_per_peer = 2;
    let peers = Peers::new(pool_config).unwrap();
    let unknown = peers.call_control(SERVER, ECHO, 1, Bytes::new()).await;
    assert!(matches!(unknown, Err(PeerError::UnknownPeer { .. })));

    let first = server(Echo::default(), config(SERVER)).await;
    let addr = first.local_addr();
    peers.set_address(SERVER, addr);
    assert_eq!(call_until_ok(&peers, SERVER).await, &b"again"[..]);
    assert_eq!(call_until_ok(&peers, SERVER).await, &b"again"[..]);
    assert_eq!(first.stats().snapshot().established, 2, "one per pool slot");
    first.shutdown().await;

    // Calls on connections the pool has not yet seen die fail as lost; once it has, it dials,
    // is refused, and backs off.
    let mut refused = false;
    for _ in 0..100 {
        match peers.call_control(SERVER, ECHO, 1, Bytes::new()).await {
            Err(PeerError::ConnectionLost { .. }) => {}
            Err(PeerError::Backoff { .. } | PeerError::Connect { .. }) => {
                refused = true;
                break;
            }
            other => panic!("unexpected while the server is down: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the pool never saw the server down");

    let second = PeerServer::bind(addr, config(SERVER), Arc::new(Echo::default()))
        .await
        .unwrap();
    assert_eq!(call_until_ok(&peers, SERVER).await, &b"again"[..]);
    assert!(second.stats().snapshot().established >= 1);

    let third = server(Echo::default(), config(SERVER)).await;
    peers.set_address(SERVER, third.local_addr());
    call_until_ok(&peers, SERVER).await;
    assert_eq!(third.stats().snapshot().established, 1);
    second.shutdown().await;
    third.shutdown().await;
}

/// Goal: when the server dies, every call in flight fails promptly with `ConnectionLost`
/// (well before its own timeout), and later calls on that client fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_fail_when_the_server_dies() {
    init_logs();
    const CALLS: usize = 10;
    let service = Arc::new(Echo::with_delay(Duration::from_secs(3600)));
    let server = PeerServer::bind(loopback(), config(SERVER), service.clone())
        .await
        .unwrap();
    let mut client_config = config(CLIENT);
    client_config.call_timeout = Duration::from_secs(3600);
    let client = PeerClient::connect(&client_config, server.local_addr(), Some(SERVER))
        .await
        .unwrap();
    let client = Arc::new(client);
    let mut calls = JoinSet::new();
    for _ in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move {
            client
                .call(write_header(1), Bytes::from(vec![0; 4096]))
                .await
        });
    }
    let stats = server.stats().clone();
    eventually("requests running", || {
        stats.snapshot().requests == CALLS as u64
    })
    .await;
    server.shutdown().await;
    for _ in 0..CALLS {
        let joined = tokio::time::timeout(WAIT_MAX, calls.join_next()).await;
        let result = joined.expect("call still waiting").unwrap().unwrap();
        assert!(
            matches!(result, Err(PeerError::ConnectionLost { peer: SERVER, .. })),
            "{result:?}"
        );
    }
    assert!(!client.is_open());
    let later = client
        .call(write_header(1), Bytes::from(vec![0; 4096]))
        .await;
    assert!(
        matches!(later, Err(PeerError::ConnectionLost { .. })),
        "{later:?}"
    );
}

/// Goal: a server that sends garbage after the handshake ends the client's connection with a
/// frame error, failing the call in flight with that reason.
#[tokio::test]
async fn client_closes_on_garbage_from_the_server() {
    init_logs();
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake_server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let nonce = Nonce(rand::random());
        let mut handshake = Handshake::acceptor(config(SERVER).handshake, nonce);
        let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
        for _ in 0..8 {
            if handshake.poll_established().is_some() {
                break;
            }
            assert_ne!(stream.read_buf(&mut input).await.unwrap(), 0);
            handshake.handle_input(&mut input).unwrap();
            handshake.poll_transmit(&mut output);
            stream.write_all(&output).await.unwrap();
            output.clear();
        }
        // Wait for the request so the call is in flight, then answer with garbage.
        while input.len() < 96 {
            assert_ne!(stream.read_buf(&mut input).await.unwrap(), 0);
        }
        stream.write_all(&[0x55; 200]).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let stats_client = PeerClient::connect(&config(CLIENT), addr, Some(SERVER)).await;
    let client = stats_client.unwrap();
    let result = client.call_control(ECHO, 1, Bytes::from_static(b"x")).await;
    assert!(
        matches!(
            result,
            Err(PeerError::ConnectionLost {
                reason: CloseReason::Frame,
                ..
            })
        ),
        "{result:?}"
    );
    drop(client);
    tokio::time::timeout(WAIT_MAX, fake_server)
        .await
        .unwrap()
        .unwrap();
}
