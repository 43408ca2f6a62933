//! Arbitrary bytes into every on-disk decoder of the drive store: each must return a value or
//! a typed error, never panic (a damaged drive must not crash the daemon).
#![no_main]

use blockd::store::format::{Anchor, BatchHeader, Superblock, decode_records, decode_slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    let _ = Anchor::decode(data, 1);
    let _ = BatchHeader::decode(data, 1, 1 << 20);
    let _ = decode_slot(data, 1, 1024, 1 << 20);
    let _ = decode_records(data, 256, 1024);
});
