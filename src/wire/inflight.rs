//! Matching out-of-order replies to pipelined requests (DESIGN §6).
//!
//! The requesting side of a connection records each request it sends in an [`InFlight`] table
//! and hands every reply to it. The table refuses what the frame rules alone cannot see: a
//! reply to no request, a second reply to one request, or a reply whose opcode or address
//! differs from its request's (which would let a confused or hostile peer acknowledge a write
//! to one chunk with the reply to another). Caller bugs (a reused id, a full table) and peer
//! faults (a bad reply, fatal to the connection) are separate error types.
//!
//! A `BTreeMap` keeps iteration deterministic, so [`InFlight::drain`] yields the same order in
//! every simulation run with the same seed.

use std::collections::BTreeMap;

use super::header::{Header, RequestId};

/// Most requests one connection may have in flight. Bounds the table (and the replies a
/// peer owes us) per connection; 1024 covers a deep NBD queue (128) times a handful of chunk
/// pieces per request, and a gateway opens several connections per primary for more.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Why a request cannot be recorded: a caller bug, the connection is fine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The header is a reply, not a request.
    #[error("a reply cannot be recorded as a request")]
    NotARequest,
    /// The id is already in flight: its replies could not be told apart.
    #[error("request id {} is already in flight", request_id.0)]
    DuplicateId {
        /// The reused id.
        request_id: RequestId,
    },
    /// The table is at its limit; wait for replies before sending more.
    #[error("{limit} requests already in flight")]
    Full {
        /// The table's limit.
        limit: usize,
    },
}

/// Why a reply from the peer does not answer a request in flight. Fatal to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The frame is a request where a reply was expected.
    #[error("expected a reply, got a request")]
    NotAReply,
    /// No request with this id is in flight (never sent, or already answered).
    #[error("reply to request id {} which is not in flight", request_id.0)]
    UnknownId {
        /// The reply's id.
        request_id: RequestId,
    },
    /// The reply's opcode or address differs from its request's.
    #[error("reply to request id {} does not match the request", request_id.0)]
    Mismatch {
        /// The reply's id.
        request_id: RequestId,
    },
}

/// The requests one connection has sent and not yet seen answered, by request id.
#[derive(Clone, Debug)]
pub struct InFlight {
    requests: BTreeMap<RequestId, Header>,
    limit: usize,
}

impl InFlight {
    /// An empty table holding at most `limit` requests.
    ///
    /// # Panics
    /// If `limit` is zero or above [`REQUESTS_IN_FLIGHT_MAX`]: a caller bug.
    pub fn new(limit: usize) -> Self {
        assert!(
            (1..=REQUESTS_IN_FLIGHT_MAX).contains(&limit),
            "in-flight limit out of range"
        );
        InFlight {
            requests: BTreeMap::new(),
            limit,
        }
    }

    /// Records a request about to be sent. Call before the frame goes out, so its reply always
    /// finds it.
    pub fn handle_request(&mut self, request: &Header) -> Result<(), RequestError> {
        if request.is_reply() {
            return Err(RequestError::NotARequest);
        }
        let request_id = request.request_id;
        if self.requests.contains_key(&request_id) {
            return Err(RequestError::DuplicateId { request_id });
        }
        if self.requests.len() >= self.limit {
            return Err(RequestError::Full { limit: self.limit });
        }
        self.requests.insert(request_id, *request);
        debug_assert!(self.requests.len() <= self.limit);
        Ok(())
    }

    /// Matches a decoded reply to its request, removes the request and returns it. A reply
    /// echoes the request's opcode and address; its status, epoch (the responder's) and
    /// `pg_version` are the responder's to set.
    pub fn handle_reply(&mut self, reply: &Header) -> Result<Header, ReplyError> {
        if !reply.is_reply() {
            return Err(ReplyError::NotAReply);
        }
        let request_id = reply.request_id;
        let request = self
            .requests
            .get(&request_id)
            .ok_or(ReplyError::UnknownId { request_id })?;
        let matches = (request.opcode, request.pg, request.chunk)
            == (reply.opcode, reply.pg, reply.chunk)
            && (request.offset_bytes, request.length_bytes)
                == (reply.offset_bytes, reply.length_bytes);
        if !matches {
            return Err(ReplyError::Mismatch { request_id });
        }
        let request = self.requests.remove(&request_id);
        request.ok_or(ReplyError::UnknownId { request_id })
    }

    /// Removes and returns every request still in flight, in request-id order: after the
    /// connection is lost their outcome is unknown, and the caller retries or fails them.
    pub fn drain(&mut self) -> Vec<Header> {
        let requests = std::mem::take(&mut self.requests);
        requests.into_values().collect()
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether no request is in flight (a clean point to close the connection).
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChunkKey, Epoch, PgId, VolumeId};
    use crate::wire::{Opcode, Status};

    fn read(id: u64, index: u64) -> Header {
        let mut header = Header::new(Opcode::Read, RequestId(id));
        header.pg = PgId(4);
        header.epoch = Epoch(2);
        header.chunk = ChunkKey::new(VolumeId(1), index);
        header.length_bytes = 4096;
        header
    }

    /// Goal: replies arriving in another order than their requests are each matched to their
    /// own request, and the table ends empty.
    #[test]
    fn out_of_order_replies_match_their_requests() {
        let mut in_flight = InFlight::new(8);
        for id in 1..=3 {
            in_flight.handle_request(&read(id, id * 10)).unwrap();
        }
        for id in [3, 1, 2] {
            let reply = read(id, id * 10).reply(Status::Ok, Epoch(5));
            assert_eq!(in_flight.handle_reply(&reply), Ok(read(id, id * 10)));
        }
        assert!(in_flight.is_empty());
    }

    /// Goal: every peer fault and caller bug gets its typed error, and a refused reply leaves
    /// the request in flight.
    #[test]
    fn bad_replies_and_requests_are_refused() {
        let mut in_flight = InFlight::new(2);
        in_flight.handle_request(&read(1, 0)).unwrap();
        let duplicate = in_flight.handle_request(&read(1, 5));
        let request_id = RequestId(1);
        assert_eq!(duplicate, Err(RequestError::DuplicateId { request_id }));
        let reply = read(1, 0).reply(Status::Ok, Epoch(2));
        assert_eq!(
            in_flight.handle_request(&reply),
            Err(RequestError::NotARequest)
        );
        in_flight.handle_request(&read(2, 0)).unwrap();
        assert_eq!(
            in_flight.handle_request(&read(3, 0)),
            Err(RequestError::Full { limit: 2 })
        );

        let other_chunk = read(1, 9).reply(Status::Ok, Epoch(2));
        let mismatch = in_flight.handle_reply(&other_chunk);
        assert_eq!(mismatch, Err(ReplyError::Mismatch { request_id }));
        assert_eq!(
            in_flight.handle_reply(&read(1, 0)),
            Err(ReplyError::NotAReply)
        );
        assert_eq!(in_flight.handle_reply(&reply), Ok(read(1, 0)));
        let again = in_flight.handle_reply(&reply);
        assert_eq!(again, Err(ReplyError::UnknownId { request_id }));
        assert_eq!(in_flight.len(), 1);
    }

    /// Goal: on connection loss every request in flight is handed back, in id order, and the
    /// table is left empty.
    #[test]
    fn drain_returns_everything_in_order() {
        let mut in_flight = InFlight::new(REQUESTS_IN_FLIGHT_MAX);
        for id in [7, 3, 5] {
            in_flight.handle_request(&read(id, 0)).unwrap();
        }
        let ids: Vec<u64> = in_flight.drain().iter().map(|h| h.request_id.0).collect();
        assert_eq!(ids, [3, 5, 7]);
        assert!(in_flight.is_empty());
    }
}
