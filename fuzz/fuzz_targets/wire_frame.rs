//! Fuzz target for the peer-protocol codec (`basalt::wire`): every parser that sees bytes from
//! the network gets the fuzzer's bytes. None may panic; a frame that decodes must re-encode to
//! the exact bytes it came from (the codec is canonical), and a handshake fed only attacker
//! bytes must never establish.
//!
//! The first input byte picks where the stream is split into two reads, so framing is also
//! exercised across partial input.

#![no_main]

use basalt::ids::{ClusterId, NodeId};
use basalt::wire::{
    BytesMut, ClusterSecret, ControlEnvelope, Features, Frame, FrameDecoder, Handshake,
    HandshakeConfig, Hello, NONCE_SIZE_BYTES, Nonce, Opcode,
};
use libfuzzer_sys::fuzz_target;

/// Most frames decoded from one input; inputs are small, this only bounds the loop.
const FRAMES_PER_INPUT_MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first), rest),
        None => (0, data),
    };
    let split = split.min(bytes.len());
    whole_frame(bytes);
    stream(bytes, split);
    handshake(bytes, split);
    let _ = Hello::decode(bytes);
});

/// Whole-buffer decode: any frame found re-encodes to the input, byte for byte.
fn whole_frame(bytes: &[u8]) {
    let Ok(frame) = Frame::decode(bytes) else {
        return;
    };
    let mut out = Vec::new();
    frame.encode(&mut out).expect("a decoded frame re-encodes");
    assert_eq!(out, bytes, "decoding is canonical");
    if frame.header.opcode == Opcode::Control
        && let Ok(envelope) = ControlEnvelope::decode(frame.payload.clone())
    {
        let _ = envelope.decode_body::<(u64, Vec<u8>, String)>();
    }
}

/// The session decoder over a stream delivered in two reads, then end of stream.
fn stream(bytes: &[u8], split: usize) {
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&bytes[..split]);
    let mut frames = 0;
    for rest in [&bytes[split..], &[][..]] {
        input.extend_from_slice(rest);
        while frames < FRAMES_PER_INPUT_MAX {
            match decoder.handle_input(&mut input) {
                Ok(Some(_)) => frames += 1,
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = decoder.handle_eof(&input);
}

fn config(node: u64) -> HandshakeConfig {
    HandshakeConfig {
        cluster: ClusterId(uuid::Uuid::from_bytes([1; 16])),
        node: NodeId(node),
        secret: ClusterSecret::new(&[7; 32]).expect("a valid secret"),
        features: Features::NONE,
    }
}

/// Both handshake roles fed the fuzzer's bytes as the peer's: no panic, never established.
fn handshake(bytes: &[u8], split: usize) {
    let roles = [
        Handshake::acceptor(config(2), Nonce([2; NONCE_SIZE_BYTES])),
        Handshake::initiator(config(1), Nonce([1; NONCE_SIZE_BYTES]), None),
    ];
    for mut handshake in roles {
        let mut out = BytesMut::new();
        handshake.poll_transmit(&mut out);
        let mut input = BytesMut::from(&bytes[..split]);
        let _ = handshake.handle_input(&mut input);
        input.extend_from_slice(&bytes[split..]);
        let _ = handshake.handle_input(&mut input);
        let _ = handshake.handle_eof(&input);
        handshake.poll_transmit(&mut out);
        assert!(handshake.poll_established().is_none(), "forged handshake");
    }
}
