//! Sizes every layer agrees on.
//!
//! The 4 KiB block is Basalt's unit of checksums, thin allocation and write atomicity
//! (DESIGN §1). Requests may be aligned to 512-byte sectors; anything smaller than a block is
//! read-modify-written inside the store.

/// Unit of checksums, thin allocation and atomicity, in bytes.
pub const BLOCK_SIZE_BYTES: u32 = 4096;
/// Smallest alignment a client request may have, in bytes (the classic disk sector).
pub const SECTOR_SIZE_BYTES: u32 = 512;
/// Default chunk size a volume is cut into, in bytes (a power of two, fixed per cluster).
pub const CHUNK_SIZE_BYTES_DEFAULT: u32 = 4 * 1024 * 1024;
/// Smallest chunk size a cluster may choose: one block.
pub const CHUNK_SIZE_BYTES_MIN: u32 = BLOCK_SIZE_BYTES;
/// Largest chunk size a cluster may choose. Bounded so a chunk's block map stays small
/// enough to live in memory and in one metadata slot (see `docs/store-format.md`).
pub const CHUNK_SIZE_BYTES_MAX: u32 = 64 * 1024 * 1024;

const _: () = assert!(BLOCK_SIZE_BYTES.is_power_of_two());
const _: () = assert!(BLOCK_SIZE_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));
const _: () = assert!(CHUNK_SIZE_BYTES_DEFAULT.is_power_of_two());
const _: () = assert!(CHUNK_SIZE_BYTES_MIN <= CHUNK_SIZE_BYTES_DEFAULT);
const _: () = assert!(CHUNK_SIZE_BYTES_DEFAULT <= CHUNK_SIZE_BYTES_MAX);

/// Whether `chunk_size_bytes` is a size a cluster may be created with.
pub fn is_valid_chunk_size(chunk_size_bytes: u32) -> bool {
    chunk_size_bytes.is_power_of_two()
        && (CHUNK_SIZE_BYTES_MIN..=CHUNK_SIZE_BYTES_MAX).contains(&chunk_size_bytes)
}

/// Number of 4 KiB blocks in a chunk of `chunk_size_bytes`.
pub fn blocks_per_chunk(chunk_size_bytes: u32) -> u32 {
    debug_assert!(is_valid_chunk_size(chunk_size_bytes));
    chunk_size_bytes / BLOCK_SIZE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert!(is_valid_chunk_size(CHUNK_SIZE_BYTES_DEFAULT));
        assert!(is_valid_chunk_size(4096));
        assert!(!is_valid_chunk_size(4096 * 3));
        assert!(!is_valid_chunk_size(2048));
        assert!(!is_valid_chunk_size(128 * 1024 * 1024));
        assert_eq!(blocks_per_chunk(CHUNK_SIZE_BYTES_DEFAULT), 1024);
    }
}
