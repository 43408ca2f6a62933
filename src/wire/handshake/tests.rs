//! Handshake tests: initiator and acceptor run against each other in memory, and against a
//! scripted attacker that sends chosen, replayed, reflected or damaged frames.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::wire::frame::Stage;
use crate::wire::{Frame, FrameDecoder, HANDSHAKE_PAYLOAD_SIZE_MAX, encode_frame};

fn cluster(byte: u8) -> ClusterId {
    ClusterId(uuid::Uuid::from_bytes([byte; 16]))
}

fn config(node: u64) -> HandshakeConfig {
    HandshakeConfig {
        cluster: cluster(1),
        node: NodeId(node),
        secret: ClusterSecret::new(&[7; 32]).unwrap(),
        features: Features::NONE,
    }
}

fn nonce(byte: u8) -> Nonce {
    Nonce([byte; NONCE_SIZE_BYTES])
}

/// Two handshakes wired back to back through in-memory buffers.
struct Pair {
    initiator: Handshake,
    acceptor: Handshake,
    to_initiator: BytesMut,
    to_acceptor: BytesMut,
}

type Outcome = (Result<(), HandshakeError>, Result<(), HandshakeError>);

impl Pair {
    fn new(initiator: HandshakeConfig, acceptor: HandshakeConfig) -> Self {
        Pair {
            initiator: Handshake::initiator(initiator, nonce(1), None),
            acceptor: Handshake::acceptor(acceptor, nonce(2)),
            to_initiator: BytesMut::new(),
            to_acceptor: BytesMut::new(),
        }
    }

    /// Delivers bytes both ways until neither side sends more (bounded: the handshake is four
    /// frames). Returns each side's last result, initiator first.
    fn run(&mut self) -> Outcome {
        let mut outcome = (Ok(()), Ok(()));
        for _ in 0..8 {
            let sent = self.initiator.poll_transmit(&mut self.to_acceptor)
                + self.acceptor.poll_transmit(&mut self.to_initiator);
            if sent == 0 {
                return outcome;
            }
            outcome.1 = self.acceptor.handle_input(&mut self.to_acceptor);
            outcome.0 = self.initiator.handle_input(&mut self.to_initiator);
        }
        panic!("handshake did not quiesce");
    }
}

/// Decodes the frames a handshake queued for sending.
fn sent_frames(handshake: &mut Handshake) -> Vec<Frame> {
    let mut bytes = BytesMut::new();
    handshake.poll_transmit(&mut bytes);
    let mut decoder = FrameDecoder::with_stage(Stage::Handshake);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.handle_input(&mut bytes).unwrap() {
        frames.push(frame);
    }
    assert!(bytes.is_empty());
    frames
}

fn frame_bytes(opcode: Opcode, payload: &[u8]) -> BytesMut {
    let mut bytes = BytesMut::new();
    encode_frame(&Header::new(opcode, RequestId(0)), payload, &mut bytes).unwrap();
    bytes
}

fn refusal_sent(handshake: &mut Handshake) -> Refuse {
    let frames = sent_frames(handshake);
    let refuse = frames.last().expect("a REFUSE frame");
    assert_eq!(refuse.header.opcode, Opcode::Refuse);
    Refuse::decode(&refuse.payload).unwrap()
}

/// Goal: the normal run authenticates both ends and agrees on version and features.
#[test]
fn initiator_and_acceptor_establish() {
    let mut pair = Pair::new(
        HandshakeConfig {
            features: Features(0b101),
            ..config(1)
        },
        HandshakeConfig {
            features: Features(0b110),
            ..config(2)
        },
    );
    pair.initiator.handle_input(&mut BytesMut::new()).unwrap();
    assert_eq!(pair.run(), (Ok(()), Ok(())));
    let initiator = pair.initiator.poll_established().unwrap();
    let acceptor = pair.acceptor.poll_established().unwrap();
    assert_eq!((initiator.peer(), acceptor.peer()), (NodeId(2), NodeId(1)));
    assert_eq!(
        (initiator.role(), acceptor.role()),
        (Role::Initiator, Role::Acceptor)
    );
    assert_eq!(
        (initiator.version(), acceptor.version()),
        (PROTOCOL_VERSION, PROTOCOL_VERSION)
    );
    assert_eq!(initiator.features(), Features(0b100));
    assert_eq!(acceptor.features(), Features(0b100));
    assert!(pair.initiator.poll_established().is_none(), "returned once");
}

/// Goal: a session frame pipelined right behind the initiator's PROOF is not consumed by the
/// acceptor's handshake.
#[test]
fn pipelined_frames_after_the_handshake_are_left_alone() {
    let mut pair = Pair::new(config(1), config(2));
    let mut to_acceptor = BytesMut::new();
    pair.initiator.poll_transmit(&mut to_acceptor);
    pair.acceptor.handle_input(&mut to_acceptor).unwrap();
    pair.acceptor.poll_transmit(&mut pair.to_initiator);
    pair.initiator.handle_input(&mut pair.to_initiator).unwrap();
    pair.initiator.poll_transmit(&mut to_acceptor);
    let flush = Header::new(Opcode::Flush, RequestId(5));
    encode_frame(&flush, &[], &mut to_acceptor).unwrap();
    pair.acceptor.handle_input(&mut to_acceptor).unwrap();
    assert!(pair.acceptor.poll_established().is_some());
    let mut session = FrameDecoder::new();
    assert_eq!(
        session
            .handle_input(&mut to_acceptor)
            .unwrap()
            .unwrap()
            .header,
        flush
    );
}

/// Goal: once established, the session decoder refuses a handshake frame (a late or replayed
/// HELLO/PROOF/REFUSE is a protocol breach, not something to act on).
#[test]
fn session_refuses_handshake_frames() {
    for opcode in [Opcode::Hello, Opcode::Proof, Opcode::Refuse] {
        let size = match opcode {
            Opcode::Hello => HELLO_SIZE_BYTES,
            Opcode::Proof => PROOF_SIZE_BYTES,
            _ => REFUSE_SIZE_BYTES,
        };
        let mut bytes = frame_bytes(opcode, &vec![1; size]);
        let error = FrameDecoder::new().handle_input(&mut bytes);
        assert_eq!(error, Err(FrameError::OutOfStage { opcode }));
    }
}

/// Goal: the initiator's PROOF must reach the wire before the session may start.
#[test]
fn established_only_after_transmit_is_drained() {
    let mut pair = Pair::new(config(1), config(2));
    pair.initiator.poll_transmit(&mut pair.to_acceptor);
    pair.acceptor.handle_input(&mut pair.to_acceptor).unwrap();
    pair.acceptor.poll_transmit(&mut pair.to_initiator);
    pair.initiator.handle_input(&mut pair.to_initiator).unwrap();
    assert!(
        pair.initiator.poll_established().is_none(),
        "PROOF still queued"
    );
    assert_eq!(
        pair.initiator.poll_transmit(&mut pair.to_acceptor),
        FRAME_HEADER_SIZE + 32
    );
    assert!(pair.initiator.poll_established().is_some());
}

const FRAME_HEADER_SIZE: usize = crate::wire::FRAME_HEADER_SIZE_BYTES;

/// Goal: a peer with another secret is caught by the initiator (it checks the acceptor's proof
/// first) and told why; the acceptor learns it was refused for authentication.
#[test]
fn wrong_secret_is_refused() {
    let other = HandshakeConfig {
        secret: ClusterSecret::new(&[8; 32]).unwrap(),
        ..config(2)
    };
    let mut pair = Pair::new(config(1), other);
    let (initiator, acceptor) = pair.run();
    assert_eq!(initiator, Err(HandshakeError::BadProof));
    let refused = HandshakeError::Refused {
        reason: RefuseReason::Auth,
        peer_version_min: PROTOCOL_VERSION,
        peer_version_max: PROTOCOL_VERSION,
    };
    assert_eq!(acceptor, Err(refused));
    assert!(
        pair.initiator.poll_established().is_none() && pair.acceptor.poll_established().is_none()
    );
}

/// Goal: a node of another cluster is refused by the acceptor before any proof is sent.
#[test]
fn wrong_cluster_is_refused() {
    let mut pair = Pair::new(
        config(1),
        HandshakeConfig {
            cluster: cluster(9),
            ..config(2)
        },
    );
    pair.initiator.poll_transmit(&mut pair.to_acceptor);
    let error = pair
        .acceptor
        .handle_input(&mut pair.to_acceptor)
        .unwrap_err();
    assert_eq!(
        error,
        HandshakeError::ClusterMismatch {
            ours: cluster(9),
            theirs: cluster(1)
        }
    );
    let frames = sent_frames(&mut pair.acceptor);
    assert_eq!(frames.len(), 1, "only the REFUSE, no HELLO or PROOF");
    assert_eq!(
        Refuse::decode(&frames[0].payload).unwrap().reason,
        RefuseReason::Cluster
    );
}

/// Goal: a HELLO offering only versions we do not speak is refused with our version range.
#[test]
fn wrong_version_in_hello_is_refused() {
    let mut hello = *InitiatorAwaitHello::new(config(1), nonce(1), None).hello();
    (hello.version_min, hello.version_max) = (2, 3);
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let error = acceptor
        .handle_input(&mut frame_bytes(Opcode::Hello, &hello.encode()))
        .unwrap_err();
    let expected = HandshakeError::VersionMismatch {
        ours_min: 1,
        ours_max: 1,
        theirs_min: 2,
        theirs_max: 3,
    };
    assert_eq!(error, expected);
    let refuse = refusal_sent(&mut acceptor);
    assert_eq!(
        refuse,
        Refuse {
            reason: RefuseReason::Version,
            version_min: 1,
            version_max: 1
        }
    );
}

/// Goal: a frame with another header version is refused as a version mismatch too.
#[test]
fn wrong_version_in_frame_header_is_refused() {
    let hello = InitiatorAwaitHello::new(config(1), nonce(1), None)
        .hello()
        .encode();
    let mut bytes = frame_bytes(Opcode::Hello, &hello);
    bytes[4] = 2;
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let error = acceptor.handle_input(&mut bytes).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::Frame(FrameError::Version {
            found: 2,
            supported: 1
        })
    );
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Version);
}

/// Goal: versions are negotiated: a peer speaking 1..=3 and we 1..=1 agree on 1.
#[test]
fn overlapping_version_ranges_agree_on_the_highest_common() {
    let mut hello = *InitiatorAwaitHello::new(config(1), nonce(1), None).hello();
    hello.version_max = 3;
    let (_, _, _) = AcceptorAwaitHello::new(config(2), nonce(2))
        .handle_hello(&hello)
        .unwrap();
}

/// Records every frame an honest initiator sends in one run with the acceptor.
fn recorded_initiator_frames() -> Vec<BytesMut> {
    let mut pair = Pair::new(config(1), config(2));
    let mut recorded = Vec::new();
    for _ in 0..2 {
        let mut bytes = BytesMut::new();
        pair.initiator.poll_transmit(&mut bytes);
        recorded.push(bytes.clone());
        pair.acceptor.handle_input(&mut bytes).unwrap();
        pair.acceptor.poll_transmit(&mut pair.to_initiator);
        pair.initiator.handle_input(&mut pair.to_initiator).unwrap();
    }
    assert!(pair.acceptor.poll_established().is_some());
    recorded
}

/// Goal: replaying a recorded initiator (HELLO then PROOF) to a new acceptor fails: the new
/// acceptor's nonce changes the transcript the proof must cover.
#[test]
fn replayed_proof_is_refused() {
    let mut recorded = recorded_initiator_frames();
    let mut acceptor = Handshake::acceptor(config(2), nonce(3));
    acceptor.handle_input(&mut recorded[0]).unwrap();
    let error = acceptor.handle_input(&mut recorded[1]).unwrap_err();
    assert_eq!(error, HandshakeError::BadProof);
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Auth);
}

/// Goal: the acceptor's own proof reflected back as the initiator's is refused (role labels),
/// and an initiator's own HELLO reflected back to it is refused by its role byte.
#[test]
fn reflected_messages_are_refused() {
    let mut initiator_hello = BytesMut::new();
    Handshake::initiator(config(1), nonce(1), None).poll_transmit(&mut initiator_hello);
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    acceptor.handle_input(&mut initiator_hello).unwrap();
    let frames = sent_frames(&mut acceptor);
    assert_eq!(
        frames.iter().map(|f| f.header.opcode).collect::<Vec<_>>(),
        [Opcode::Hello, Opcode::Proof]
    );
    let error = acceptor
        .handle_input(&mut frame_bytes(Opcode::Proof, &frames[1].payload))
        .unwrap_err();
    assert_eq!(error, HandshakeError::BadProof);

    let mut initiator = Handshake::initiator(config(1), nonce(1), None);
    let mut own_hello = BytesMut::new();
    initiator.poll_transmit(&mut own_hello);
    let error = initiator.handle_input(&mut own_hello).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::WrongRole {
            expected: Role::Acceptor,
            found: Role::Initiator
        }
    );
}

/// Goal: a proof with one wrong byte (in a well-formed frame) fails authentication, where the
/// intact proof succeeds (same nonces, so the same transcript); the same damage on the wire is
/// caught earlier by the payload checksum.
#[test]
fn garbled_proof_is_refused() {
    let recorded = recorded_initiator_frames();
    let acceptor_after_hello = || {
        let mut acceptor = Handshake::acceptor(config(2), nonce(2));
        acceptor.handle_input(&mut recorded[0].clone()).unwrap();
        acceptor
    };
    let mut intact = acceptor_after_hello();
    assert_eq!(intact.handle_input(&mut recorded[1].clone()), Ok(()));

    let mut proof = Frame::decode(&recorded[1]).unwrap().payload.to_vec();
    proof[31] ^= 1;
    let mut acceptor = acceptor_after_hello();
    let error = acceptor
        .handle_input(&mut frame_bytes(Opcode::Proof, &proof))
        .unwrap_err();
    assert_eq!(error, HandshakeError::BadProof);

    let mut damaged = recorded[1].clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let mut acceptor = acceptor_after_hello();
    let error = acceptor.handle_input(&mut damaged).unwrap_err();
    assert!(
        matches!(
            error,
            HandshakeError::Frame(FrameError::PayloadChecksum { .. })
        ),
        "{error:?}"
    );
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Protocol);
}

/// Goal: truncated input waits without sending anything; the stream ending mid-frame is
/// `Truncated`, ending between frames is `Closed`; neither sends a REFUSE (no one to read it).
#[test]
fn truncated_input() {
    let mut hello = BytesMut::new();
    Handshake::initiator(config(1), nonce(1), None).poll_transmit(&mut hello);
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let mut half = BytesMut::from(&hello[..hello.len() / 2]);
    assert_eq!(acceptor.handle_input(&mut half), Ok(()));
    assert!(sent_frames(&mut acceptor).is_empty());
    let error = acceptor.handle_eof(&half).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::Frame(FrameError::Truncated {
            buffered_bytes: hello.len() / 2
        })
    );
    assert!(sent_frames(&mut acceptor).is_empty());

    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    assert_eq!(
        acceptor.handle_eof(&BytesMut::new()),
        Err(HandshakeError::Closed)
    );
    assert!(sent_frames(&mut acceptor).is_empty());
}

/// Goal: frames out of order (a PROOF first, an I/O frame before authentication) are
/// protocol violations.
#[test]
fn unexpected_frames_are_refused() {
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let error = acceptor
        .handle_input(&mut frame_bytes(Opcode::Proof, &[0; 32]))
        .unwrap_err();
    assert_eq!(
        error,
        HandshakeError::UnexpectedFrame {
            phase: "awaiting HELLO",
            opcode: Opcode::Proof
        }
    );
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Protocol);

    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let mut flush = BytesMut::new();
    encode_frame(&Header::new(Opcode::Flush, RequestId(1)), &[], &mut flush).unwrap();
    let error = acceptor.handle_input(&mut flush).unwrap_err();
    let out_of_stage = FrameError::OutOfStage {
        opcode: Opcode::Flush,
    };
    assert_eq!(error, HandshakeError::Frame(out_of_stage));
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Protocol);
}

/// Goal: before authentication a frame larger than any handshake frame is refused at its
/// header, so an unauthenticated peer cannot make us buffer a large payload.
#[test]
fn oversized_frame_before_authentication() {
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let mut control = BytesMut::new();
    let header = Header::new(Opcode::Control, RequestId(1));
    encode_frame(&header, &[1; 1024], &mut control).unwrap();
    control.truncate(FRAME_HEADER_SIZE);
    let error = acceptor.handle_input(&mut control).unwrap_err();
    let oversized = FrameError::Oversized {
        payload_size_bytes: 1024,
        limit_bytes: HANDSHAKE_PAYLOAD_SIZE_MAX,
    };
    assert_eq!(error, HandshakeError::Frame(oversized));
}

/// Goal: a malformed HELLO payload (in a valid frame) is refused as a protocol violation.
#[test]
fn malformed_hello_is_refused() {
    let mut hello = InitiatorAwaitHello::new(config(1), nonce(1), None)
        .hello()
        .encode();
    hello[3] = 1; // reserved
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let error = acceptor
        .handle_input(&mut frame_bytes(Opcode::Hello, &hello))
        .unwrap_err();
    assert_eq!(
        error,
        HandshakeError::MalformedHello(HelloError::ReservedNonZero)
    );
    assert_eq!(refusal_sent(&mut acceptor).reason, RefuseReason::Protocol);
}

/// Goal: identity checks: dialling ourselves, or reaching another node than the one dialled.
#[test]
fn wrong_peer_identity_is_refused() {
    let mut pair = Pair::new(config(1), config(1));
    let (initiator, acceptor) = pair.run();
    assert_eq!(
        acceptor,
        Err(HandshakeError::SelfConnection { node: NodeId(1) })
    );
    assert!(matches!(
        initiator,
        Err(HandshakeError::Refused {
            reason: RefuseReason::Peer,
            ..
        })
    ));

    let mut pair = Pair::new(config(1), config(2));
    pair.initiator = Handshake::initiator(config(1), nonce(1), Some(NodeId(3)));
    let (initiator, acceptor) = pair.run();
    let expected = HandshakeError::UnexpectedPeer {
        expected: NodeId(3),
        found: NodeId(2),
    };
    assert_eq!(initiator, Err(expected));
    assert!(matches!(
        acceptor,
        Err(HandshakeError::Refused {
            reason: RefuseReason::Peer,
            ..
        })
    ));
}

/// Goal: a failed handshake is sticky: same error on every call, exactly one REFUSE queued,
/// nothing consumed and no result, whatever arrives later.
#[test]
fn failure_is_sticky() {
    let mut acceptor = Handshake::acceptor(config(2), nonce(2));
    let first = acceptor
        .handle_input(&mut frame_bytes(Opcode::Proof, &[0; 32]))
        .unwrap_err();
    let mut hello = BytesMut::new();
    Handshake::initiator(config(1), nonce(1), None).poll_transmit(&mut hello);
    let size = hello.len();
    assert_eq!(acceptor.handle_input(&mut hello), Err(first.clone()));
    assert_eq!(hello.len(), size);
    assert_eq!(acceptor.handle_eof(&hello), Err(first.clone()));
    assert_eq!(acceptor.error(), Some(&first));
    assert_eq!(sent_frames(&mut acceptor).len(), 1);
    assert_eq!(acceptor.poll_transmit(&mut BytesMut::new()), 0);
    assert!(acceptor.poll_established().is_none());
}

/// Goal: a REFUSE with a reason code from a newer peer is still reported.
#[test]
fn refusal_with_unknown_reason_is_reported() {
    let mut initiator = Handshake::initiator(config(1), nonce(1), None);
    let refuse = Refuse {
        reason: RefuseReason::Unknown(99),
        version_min: 4,
        version_max: 6,
    };
    let error = initiator
        .handle_input(&mut frame_bytes(Opcode::Refuse, &refuse.encode()))
        .unwrap_err();
    let expected = HandshakeError::Refused {
        reason: RefuseReason::Unknown(99),
        peer_version_min: 4,
        peer_version_max: 6,
    };
    assert_eq!(error, expected);
    assert_eq!(
        sent_frames(&mut initiator).len(),
        1,
        "only our HELLO; no REFUSE back"
    );
    for code in 0..8 {
        assert_eq!(RefuseReason::from_code(code).code(), code);
    }
}

/// Goal: every HELLO decode error path.
#[test]
fn hello_decode_errors() {
    let good = InitiatorAwaitHello::new(config(1), nonce(1), None)
        .hello()
        .encode();
    assert_eq!(
        Hello::decode(&good[..71]),
        Err(HelloError::Size { found_bytes: 71 })
    );
    let mut bad = good;
    bad[2] = 3;
    assert_eq!(
        Hello::decode(&bad),
        Err(HelloError::UnknownRole { code: 3 })
    );
    let mut bad = good;
    bad[7] = 1;
    assert_eq!(Hello::decode(&bad), Err(HelloError::ReservedNonZero));
    let mut bad = good;
    (bad[0], bad[1]) = (2, 1);
    assert_eq!(
        Hello::decode(&bad),
        Err(HelloError::EmptyVersionRange { min: 2, max: 1 })
    );
    bad[0] = 0;
    assert_eq!(
        Hello::decode(&bad),
        Err(HelloError::EmptyVersionRange { min: 0, max: 1 })
    );
}

/// Goal: secrets outside the size bounds are refused and never printed.
#[test]
fn cluster_secret_bounds_and_redaction() {
    let short = CLUSTER_SECRET_SIZE_MIN - 1;
    assert_eq!(
        ClusterSecret::new(&vec![1; short]).unwrap_err(),
        SecretError::TooShort { size_bytes: short }
    );
    let long = CLUSTER_SECRET_SIZE_MAX + 1;
    assert_eq!(
        ClusterSecret::new(&vec![1; long]).unwrap_err(),
        SecretError::TooLong { size_bytes: long }
    );
    let secret = ClusterSecret::new(b"0123456789abcdef").unwrap();
    assert_eq!(format!("{secret:?}"), "ClusterSecret(<16 bytes redacted>)");
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        1..=255u8,
        any::<u8>(),
        any::<bool>(),
        any::<(u64, u64, [u8; 16], [u8; 32])>(),
    )
        .prop_map(
            |(version_min, spread, initiator, (features, node, cluster, nonce))| Hello {
                version_min,
                version_max: version_min.saturating_add(spread),
                role: if initiator {
                    Role::Initiator
                } else {
                    Role::Acceptor
                },
                features: Features(features),
                node: NodeId(node),
                cluster: ClusterId(uuid::Uuid::from_bytes(cluster)),
                nonce: Nonce(nonce),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: HELLO encoding is canonical both ways, which the transcript depends on.
    #[test]
    fn hello_is_canonical(hello in arb_hello(), bytes in prop::collection::vec(any::<u8>(), 72)) {
        prop_assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        if let Ok(decoded) = Hello::decode(&bytes) {
            prop_assert_eq!(&decoded.encode()[..], &bytes[..]);
        }
    }

    /// Goal: arbitrary bytes fed to an acceptor, in arbitrary pieces, never panic and never
    /// establish (no proof can be forged by chance).
    #[test]
    fn random_input_never_establishes(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        cut in any::<usize>(),
    ) {
        let mut acceptor = Handshake::acceptor(config(2), nonce(2));
        let cut = cut % (bytes.len() + 1);
        let _ = acceptor.handle_input(&mut BytesMut::from(&bytes[..cut]));
        let _ = acceptor.handle_input(&mut BytesMut::from(&bytes[cut..]));
        let _ = acceptor.handle_eof(&BytesMut::new());
        acceptor.poll_transmit(&mut BytesMut::new());
        prop_assert!(acceptor.poll_established().is_none());
    }
}
