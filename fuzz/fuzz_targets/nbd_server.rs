//! Drives the NBD server session with arbitrary bytes, the way the daemon's shell would.
//!
//! Goal: no input, however split, makes the session panic, loop forever or grow without bound;
//! it either answers, emits events, or fails with a typed error that then sticks.
//!
//! Input layout: byte 0 picks a canned handshake prefix (none, or one reaching transmission in
//! simple, structured or extended mode with `base:allocation`), so the fuzzer reaches the
//! transmission decoder without having to discover a handshake first; byte 1 seeds the sizes
//! of the pieces the rest is fed in, to exercise partial-message handling.
#![no_main]

use basalt::nbd::{
    ErrorCode, Event, ExportCatalog, ExportFeatures, ExportInfo, ExportListing, ServerConfig,
    ServerSession,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Bound on handle_input calls per piece: each call that consumes nothing ends the loop, so
/// this only guards against a session that keeps reporting progress without consuming input.
const CALLS_PER_PIECE_MAX: usize = 1 << 16;

struct Catalog;

impl ExportCatalog for Catalog {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let read_only = match name {
            "" | "vol" => false,
            "ro" => true,
            _ => return None,
        };
        let features = ExportFeatures {
            read_only,
            ..ExportFeatures::writable_volume()
        };
        let (name, description) = (name.to_owned(), "fuzz".to_owned());
        Some(ExportInfo {
            name,
            description,
            size_bytes: 1 << 30,
            features,
        })
    }

    fn list(&self) -> Vec<ExportListing> {
        let listing = |name: &str| ExportListing {
            name: name.into(),
            description: String::new(),
        };
        vec![listing("vol"), listing("ro")]
    }
}

fn option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(b"IHAVEOPT");
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A handshake reaching transmission: 1 simple, 2 structured, 3 extended; else nothing.
fn prefix(selector: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mode = selector % 4;
    if mode == 0 {
        return bytes;
    }
    bytes.extend_from_slice(&3_u32.to_be_bytes());
    if mode >= 2 {
        option(&mut bytes, if mode == 2 { 8 } else { 11 }, &[]);
        let mut meta = Vec::new();
        meta.extend_from_slice(&3_u32.to_be_bytes());
        meta.extend_from_slice(b"vol");
        meta.extend_from_slice(&1_u32.to_be_bytes());
        meta.extend_from_slice(&15_u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        option(&mut bytes, 10, &meta);
    }
    option(&mut bytes, 7, &[0, 0, 0, 3, b'v', b'o', b'l', 0, 0]);
    bytes
}

/// Runs the session over the buffered input until it stops moving, draining output and
/// answering requests. Returns false once the session has failed (after checking that the
/// failure is sticky).
fn drive(
    session: &mut ServerSession,
    input: &mut BytesMut,
    out: &mut Vec<u8>,
    answers: &mut Vec<u8>,
) -> bool {
    for _ in 0..CALLS_PER_PIECE_MAX {
        let result = session.handle_input(&Catalog, input);
        session.poll_transmit(out);
        let mut events = 0;
        while let Some(event) = session.poll_event() {
            events += 1;
            if let Event::Request(request) = event {
                let encoder = session.reply_encoder().expect("requests follow Ready");
                encoder.encode_error(request.reply_to(), ErrorCode::Io, "fuzz", answers);
                encoder.encode_ok(request.reply_to(), answers);
            }
        }
        match result {
            Err(error) => {
                assert_eq!(session.handle_input(&Catalog, input), Err(error));
                return false;
            }
            Ok(0) if events == 0 => return true,
            Ok(_) => {}
        }
    }
    panic!("session kept reporting progress without running out of input");
}

fuzz_target!(|data: &[u8]| {
    let [selector, seed, rest @ ..] = data else {
        return;
    };
    let stream = [prefix(*selector).as_slice(), rest].concat();
    let mut session = ServerSession::new(ServerConfig::default());
    let (mut input, mut out, mut answers) = (BytesMut::new(), Vec::new(), Vec::new());
    let mut piece_bytes = usize::from(*seed).max(1);
    let mut rest = stream.as_slice();
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(piece_bytes.min(rest.len()));
        rest = tail;
        input.extend_from_slice(piece);
        if !drive(&mut session, &mut input, &mut out, &mut answers) {
            return;
        }
        out.clear();
        answers.clear();
        // Vary piece sizes deterministically from the seed, between 1 and 4096 bytes.
        piece_bytes = piece_bytes.rotate_left(1) % 4096 + 1;
    }
});
