//! Block-aligned heap buffers for O_DIRECT I/O.
//!
//! O_DIRECT needs the buffer address, file offset and length aligned to the device's logical
//! block size; Basalt aligns everything to its 4 KiB block, which covers 512-byte and 4 KiB
//! devices alike. Buffers are plain owned memory: the drive engine keeps a buffer (or an `Arc`
//! to it) alive from submission until the kernel completes the operation.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use basalt::units::BLOCK_SIZE_BYTES;

/// Alignment of every I/O buffer, in bytes.
pub const BUFFER_ALIGNMENT_BYTES: usize = BLOCK_SIZE_BYTES as usize;

/// A zero-initialised, 4 KiB-aligned byte buffer whose length is a whole number of blocks
/// (or zero).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like `Vec<u8>`); nothing else holds
// the pointer, so moving it to or sharing it between threads is as safe as for `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads (`as_slice`); mutation needs `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; `len` must be a multiple of the block size.
    pub fn zeroed(len: usize) -> Self {
        assert!(
            len.is_multiple_of(BUFFER_ALIGNMENT_BYTES),
            "buffer length {len} is not block-aligned"
        );
        if len == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (len > 0) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    /// A buffer holding `data`, padded with zeroes up to the next block boundary.
    pub fn copy_from(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(round_up_to_block(data.len()));
        buf.as_mut_slice()[..data.len()].copy_from_slice(data);
        buf
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, BUFFER_ALIGNMENT_BYTES) {
            Ok(layout) => layout,
            Err(e) => panic!("invalid buffer layout for {len} bytes: {e}"),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes owned by `self` (or is dangling with
        // len 0, which is valid for an empty slice).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Raw pointer for the drive engine; valid while `self` is alive and not moved out of its
    /// allocation (the heap allocation never moves).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable pointer for the drive engine (see `as_ptr`).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout and not freed before.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// `len` rounded up to a whole number of blocks.
pub fn round_up_to_block(len: usize) -> usize {
    len.div_ceil(BUFFER_ALIGNMENT_BYTES) * BUFFER_ALIGNMENT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(8192);
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGNMENT_BYTES, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[5] = 7;
        assert_eq!(b.as_slice()[5], 7);
        let c = AlignedBuf::copy_from(&[1, 2, 3]);
        assert_eq!(c.len(), 4096);
        assert_eq!(&c.as_slice()[..4], &[1, 2, 3, 0]);
        assert!(AlignedBuf::zeroed(0).is_empty());
    }
}
