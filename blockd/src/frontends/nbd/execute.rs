//! Executing one NBD request against a volume and encoding its reply; the export catalog the
//! session consults during the handshake.

use basalt::nbd::consts::{BLOCK_STATUS_EXTENTS_MAX, STATE_HOLE, STATE_ZERO};
use basalt::nbd::{
    CommandFlags, CommandKind, ErrorCode, ExportCatalog, ExportFeatures, ExportInfo, ExportListing,
    Extent, ReplyEncoder, Request,
};
use basalt::units::SECTOR_SIZE_BYTES;
use bytes::Bytes;

use super::connection::Outgoing;
use crate::frontends::{Exports, VolumeBackend, VolumeError, VolumeExtent, ZeroFlags};

/// Longest range one `BLOCK_STATUS` reply describes: every extent must fit the 32-bit length
/// of compact replies. Clients ask again for the rest.
const BLOCK_STATUS_SPAN_BYTES_MAX: u64 = (u32::MAX / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES) as u64;
const _: () = assert!(BLOCK_STATUS_SPAN_BYTES_MAX.is_multiple_of(SECTOR_SIZE_BYTES as u64));
const _: () = assert!(BLOCK_STATUS_SPAN_BYTES_MAX <= u32::MAX as u64);

/// The session's view of [`Exports`]: names, sizes and features.
pub(super) struct Catalog<'a, E>(pub(super) &'a E);

impl<E: Exports> ExportCatalog for Catalog<'_, E> {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let volume = self.0.get(name)?;
        Some(ExportInfo {
            name: name.to_owned(),
            description: self.0.description(name),
            size_bytes: volume.size_bytes(),
            features: ExportFeatures {
                read_only: volume.read_only(),
                ..ExportFeatures::writable_volume()
            },
        })
    }

    fn list(&self) -> Vec<ExportListing> {
        self.0
            .list()
            .into_iter()
            .map(|entry| ExportListing {
                name: entry.name,
                description: entry.description,
            })
            .collect()
    }
}

/// Runs `request` and returns its whole reply. Never fails: a volume error becomes an NBD
/// error reply.
pub(super) async fn execute<V: VolumeBackend>(
    volume: &V,
    request: Request,
    encoder: ReplyEncoder,
    context: Option<u32>,
) -> Outgoing {
    let to = request.reply_to();
    let mut head = Vec::with_capacity(32);
    match perform(volume, &request, encoder, context, &mut head).await {
        Ok(data) => Outgoing { head, data },
        Err(error) => {
            let mut code = error.nbd_code();
            if code == ErrorCode::NotSup && !request.flags.contains(CommandFlags::FAST_ZERO) {
                // ENOTSUP is reserved for refused fast zeroes; anything else is an I/O error.
                code = ErrorCode::Io;
            }
            match &error {
                VolumeError::Io(_) | VolumeError::NoSpace => tracing::warn!(
                    kind = ?request.kind, offset = request.offset, length = request.length, %error,
                    "NBD request failed"
                ),
                _ => tracing::debug!(
                    kind = ?request.kind, offset = request.offset, length = request.length, %error,
                    "NBD request refused"
                ),
            }
            head.clear();
            encoder.encode_error(to, code, &error.to_string(), &mut head);
            Outgoing {
                head,
                data: Bytes::new(),
            }
        }
    }
}

/// Executes the request; on success `head` holds the reply header and the result is the data
/// that follows it.
async fn perform<V: VolumeBackend>(
    volume: &V,
    request: &Request,
    encoder: ReplyEncoder,
    context: Option<u32>,
    head: &mut Vec<u8>,
) -> Result<Bytes, VolumeError> {
    let to = request.reply_to();
    let fua = request.flags.contains(CommandFlags::FUA);
    let (offset, length) = (request.offset, request.length);
    match request.kind {
        CommandKind::Read => {
            let len = u32::try_from(length)
                .map_err(|_| VolumeError::Invalid(format!("read of {length} bytes")))?;
            let data = volume.read(offset, len).await?;
            encoder
                .encode_read_header(to, offset, len, true, head)
                .map_err(encode_error)?;
            return Ok(data);
        }
        CommandKind::Write => volume.write(offset, request.payload.clone(), fua).await?,
        CommandKind::Flush => volume.flush().await?,
        CommandKind::Trim => {
            volume.trim(offset, length).await?;
            if fua {
                volume.flush().await?;
            }
        }
        CommandKind::WriteZeroes => {
            let flags = ZeroFlags {
                no_hole: request.flags.contains(CommandFlags::NO_HOLE),
                fast: request.flags.contains(CommandFlags::FAST_ZERO),
            };
            volume.write_zeroes(offset, length, flags).await?;
            if fua {
                volume.flush().await?;
            }
        }
        CommandKind::BlockStatus => {
            let context = context.ok_or_else(|| {
                VolumeError::Invalid("block status without base:allocation".into())
            })?;
            let span = length.min(BLOCK_STATUS_SPAN_BYTES_MAX);
            let described = volume.block_status(offset, span).await?;
            let one = request.flags.contains(CommandFlags::REQ_ONE);
            let extents = to_nbd_extents(&described, span, one)?;
            encoder
                .encode_block_status(to, context, &extents, true, head)
                .map_err(encode_error)?;
            return Ok(Bytes::new());
        }
        // Nothing to prefetch into: the gateway keeps no cache. The session never hands out
        // Disconnect; answering it is harmless.
        CommandKind::Cache | CommandKind::Disconnect => {}
    }
    encoder.encode_ok(to, head);
    Ok(Bytes::new())
}

/// Converts backend extents to `base:allocation` extents, checking the backend kept its
/// contract (non-empty, 512-aligned, within the range), and applies `REQ_ONE` and the extent
/// count limit.
fn to_nbd_extents(
    described: &[VolumeExtent],
    span: u64,
    one: bool,
) -> Result<Vec<Extent>, VolumeError> {
    let limit = if one { 1 } else { BLOCK_STATUS_EXTENTS_MAX };
    let mut extents = Vec::with_capacity(described.len().min(limit));
    let mut covered = 0u64;
    for extent in described.iter().take(limit) {
        let sector = u64::from(SECTOR_SIZE_BYTES);
        if extent.len == 0 || !extent.len.is_multiple_of(sector) {
            return Err(VolumeError::Io(format!(
                "backend reported an extent of {} bytes",
                extent.len
            )));
        }
        covered = covered.saturating_add(extent.len);
        if covered > span {
            return Err(VolumeError::Io(
                "backend described more than was asked".into(),
            ));
        }
        let status =
            if extent.hole { STATE_HOLE } else { 0 } | if extent.zero { STATE_ZERO } else { 0 };
        extents.push(Extent {
            length: extent.len,
            status,
        });
    }
    if extents.is_empty() {
        return Err(VolumeError::Io("backend described no extents".into()));
    }
    Ok(extents)
}

fn encode_error(error: basalt::nbd::EncodeError) -> VolumeError {
    VolumeError::Io(format!("cannot encode the reply: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(len: u64, hole: bool) -> VolumeExtent {
        VolumeExtent {
            len,
            hole,
            zero: hole,
        }
    }

    #[test]
    fn extents_map_to_base_allocation_bits() {
        // Goal: holes carry HOLE|ZERO, data carries nothing, REQ_ONE keeps the first extent.
        let described = [extent(4096, true), extent(512, false)];
        let all = to_nbd_extents(&described, 8192, false).expect("valid");
        assert_eq!(all[0].status, STATE_HOLE | STATE_ZERO);
        assert_eq!(all[1].status, 0);
        let one = to_nbd_extents(&described, 8192, true).expect("valid");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn backend_contract_violations_are_io_errors() {
        // Goal: a backend bug never reaches the wire as an invalid reply.
        assert!(to_nbd_extents(&[], 4096, false).is_err());
        assert!(to_nbd_extents(&[extent(100, true)], 4096, false).is_err());
        assert!(to_nbd_extents(&[extent(8192, true)], 4096, false).is_err());
    }
}
