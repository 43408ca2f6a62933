//! Feeds arbitrary server bytes to the NBD client codecs and arbitrary logs to the audit log
//! decoder.
//!
//! Goal: no input makes the client handshake, the client transmission decoder or the audit
//! log decoder and replay panic or loop; errors are typed and sticky.
//!
//! Input layout: byte 0 picks the target (handshake, transmission with a write, a read and a
//! flush in flight, or the audit log) and byte 1 the piece size the rest is fed in.
#![no_main]

use basalt::audit::{Expectations, decode_log};
use basalt::nbd::{ClientHandshake, ClientNegotiated, ClientTransmission};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Bound on decode calls per piece (each reply consumes at least 16 bytes).
const CALLS_PER_PIECE_MAX: usize = 1 << 16;

fn handshake(pieces: Vec<&[u8]>) {
    let mut client = ClientHandshake::new("vol").expect("short name");
    let mut input = BytesMut::new();
    for piece in pieces {
        input.extend_from_slice(piece);
        match client.handle_input(&mut input) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(error) => {
                assert_eq!(client.handle_input(&mut input), Err(error));
                return;
            }
        }
        client.poll_transmit(&mut Vec::new());
    }
}

fn transmission(pieces: Vec<&[u8]>) {
    let mut client = ClientTransmission::new(ClientNegotiated {
        size_bytes: 1 << 20,
        transmission_flags: 0x0d4d,
        block_sizes: None,
    });
    // Cookies 1, 2, 3.
    client.write(0, &[7; 512], false).expect("valid write");
    client.read(4096, 64).expect("valid read");
    client.flush().expect("valid flush");
    let mut input = BytesMut::new();
    for piece in pieces {
        input.extend_from_slice(piece);
        for _ in 0..CALLS_PER_PIECE_MAX {
            match client.handle_input(&mut input) {
                Ok(Some(reply)) => assert!(reply.cookie <= 3),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(client.handle_input(&mut input), Err(error));
                    return;
                }
            }
        }
    }
}

/// Payload bytes a replay may regenerate per input (keeps each run fast).
const REPLAY_BYTES_MAX: u64 = 64 << 20;

fn audit_log(bytes: &[u8]) {
    if let Ok(log) = decode_log(bytes) {
        assert!(log.valid_bytes() <= bytes.len() as u64);
        let total: u64 = log.records.iter().map(|r| u64::from(r.length)).sum();
        if total <= REPLAY_BYTES_MAX {
            let _ = Expectations::replay(&log);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, seed, rest @ ..] = data else {
        return;
    };
    let piece_bytes = usize::from(*seed).max(1);
    let pieces: Vec<&[u8]> = rest.chunks(piece_bytes).collect();
    match selector % 3 {
        0 => handshake(pieces),
        1 => transmission(pieces),
        _ => audit_log(rest),
    }
});
