//! The retry decision for one piece, pure: what the last attempt produced goes in, what to do
//! next comes out, with every wait bounded by the request's deadline. The clock is a parameter.
//!
//! | outcome | next |
//! |---|---|
//! | OK | done |
//! | `STALE_EPOCH` carrying epoch `e` | wait for a map with epoch ≥ `e`, re-route, resend |
//! | `NOT_PRIMARY`, `BUSY` | back off (cut short by a newer map), re-route, resend |
//! | `TIMEOUT` (the primary gave up: outcome unknown) | the same: block writes, trims and zeroing are idempotent, so resending is safe |
//! | no route (no pool, no primary, no address) | the same: wait for a better map |
//! | connection refused, lost or timed out | the same: a lost request is resent like a `TIMEOUT` |
//! | `IO_ERROR`, `CORRUPT`, `UNSUPPORTED`, a transport bug | fail: `VolumeError::Io` |
//! | `OUT_OF_RANGE`, `INVALID` | fail: `VolumeError::Invalid` |
//! | `NO_SPACE` | fail: `VolumeError::NoSpace` |
//!
//! Once the deadline has passed, the next decision is a failure naming the last error. A piece
//! has two: while the routed map gives its PG at least `min_size` acting members, a failover is
//! in progress and the piece keeps retrying until the later one (the client sees a pause);
//! otherwise the PG cannot serve and the earlier one applies.

use std::time::Duration;

use basalt::ids::Epoch;
use basalt::wire::Status;
use tokio::time::Instant;

use crate::frontends::VolumeError;

/// What one attempt produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The primary answered with `status`; `epoch` is its map epoch.
    Reply {
        /// The reply's status.
        status: Status,
        /// The responder's epoch.
        epoch: Epoch,
    },
    /// The current map does not say where to send the piece.
    NoRoute(String),
    /// The transport failed. `retryable`: the peer was unreachable, or the connection was lost
    /// or timed out; otherwise the request itself could not be encoded (a bug).
    Transport {
        /// Whether resending may succeed.
        retryable: bool,
        /// The error, for the final message.
        detail: String,
    },
}

/// What to do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// The piece is complete.
    Done,
    /// Wait for a map with epoch ≥ `epoch` (until `until` at most), then route again.
    AwaitEpoch {
        /// The epoch the responder has.
        epoch: Epoch,
        /// When to stop waiting (the request's deadline).
        until: Instant,
    },
    /// Wait until `until` or until the map moves past the routed epoch, then route again.
    Backoff {
        /// End of the back-off.
        until: Instant,
    },
    /// Give up with this error.
    Fail(VolumeError),
}

/// Back-off bounds of [`Retry`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// First back-off.
    pub(crate) delay_min: Duration,
    /// Largest back-off (the delay doubles up to it).
    pub(crate) delay_max: Duration,
}

/// When a piece gives up (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// While the PG has fewer than `min_size` acting members (it cannot serve): the request's
    /// start plus `unavailable_for`, or, if the PG became unavailable later, that moment plus
    /// `unavailable_for` (a brief dip below `min_size` late in a long failover does not fail
    /// the request at once).
    pub(crate) unavailable: Instant,
    /// How long a piece waits for a PG below `min_size`.
    pub(crate) unavailable_for: Duration,
    /// The latest a piece may finish in any case (a failover pause): not before
    /// `unavailable`.
    pub(crate) available: Instant,
}

/// The retry state of one piece.
#[derive(Debug)]
pub(crate) struct Retry {
    deadlines: Deadlines,
    /// The last routed map gave the piece's PG at least `min_size` acting members.
    available: bool,
    /// Since when the routed maps have shown the PG below `min_size` (if they do).
    unavailable_since: Option<Instant>,
    delay: Duration,
    policy: RetryPolicy,
    attempts: u32,
    last_error: Option<String>,
}

impl Retry {
    /// A piece that must complete by `deadlines`; its PG counts as unavailable until told.
    pub(crate) fn new(deadlines: Deadlines, policy: RetryPolicy) -> Self {
        debug_assert!(policy.delay_min <= policy.delay_max);
        Retry {
            deadlines,
            available: false,
            unavailable_since: None,
            delay: policy.delay_min,
            policy,
            attempts: 0,
            last_error: None,
        }
    }

    /// Records whether the map the next attempt is routed by (at `now`) gives the PG at least
    /// `min_size` acting members.
    pub(crate) fn set_available(&mut self, now: Instant, available: bool) {
        self.available = available;
        if available {
            self.unavailable_since = None;
        } else {
            self.unavailable_since.get_or_insert(now);
        }
    }

    /// The deadline that applies now.
    fn deadline(&self) -> Instant {
        let latest = self.deadlines.available.max(self.deadlines.unavailable);
        match self.unavailable_since {
            _ if self.available => latest,
            Some(since) => latest.min(
                self.deadlines
                    .unavailable
                    .max(since + self.deadlines.unavailable_for),
            ),
            None => self.deadlines.unavailable,
        }
    }

    /// Time left before the deadline (zero once passed).
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.deadline().saturating_duration_since(now)
    }

    /// The failure to report if the deadline has passed, before another attempt.
    pub(crate) fn expired(&self, now: Instant) -> Option<VolumeError> {
        (now >= self.deadline()).then(|| self.give_up())
    }

    /// Attempts decided on so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    fn give_up(&self) -> VolumeError {
        let last = self
            .last_error
            .as_deref()
            .unwrap_or("no attempt could be made");
        VolumeError::Io(format!(
            "gave up after {} attempt(s): {last}",
            self.attempts
        ))
    }

    /// Decides after an attempt routed by a map of `routed_epoch` produced `outcome` at `now`.
    pub(crate) fn handle(&mut self, now: Instant, routed_epoch: Epoch, outcome: Outcome) -> Next {
        self.attempts = self.attempts.saturating_add(1);
        let deadline = self.deadline();
        let detail = match outcome {
            Outcome::Reply {
                status: Status::Ok, ..
            } => return Next::Done,
            Outcome::Reply {
                status: Status::StaleEpoch,
                epoch,
            } if epoch > routed_epoch => {
                self.last_error = Some(format!(
                    "stale epoch: routed by {routed_epoch}, primary has {epoch}"
                ));
                if now >= deadline {
                    return Next::Fail(self.give_up());
                }
                return Next::AwaitEpoch {
                    epoch,
                    until: deadline,
                };
            }
            Outcome::Reply { status, epoch } => match fatal(status) {
                Some(error) => return Next::Fail(error),
                None => format!("primary answered {status:?} (its epoch {epoch})"),
            },
            Outcome::NoRoute(detail) => detail,
            Outcome::Transport {
                retryable: false,
                detail,
            } => return Next::Fail(VolumeError::Io(detail)),
            Outcome::Transport { detail, .. } => detail,
        };
        self.last_error = Some(detail);
        if now >= deadline {
            return Next::Fail(self.give_up());
        }
        let until = (now + self.delay).min(deadline);
        self.delay = self.delay.saturating_mul(2).min(self.policy.delay_max);
        Next::Backoff { until }
    }
}

/// The error a status ends a piece with, or `None` if it is worth retrying.
fn fatal(status: Status) -> Option<VolumeError> {
    match status {
        // A stale-epoch reply whose epoch is not newer than ours: the responder is confused or
        // restarting; treat it like NOT_PRIMARY.
        Status::Ok | Status::StaleEpoch | Status::NotPrimary | Status::Busy | Status::Timeout => {
            None
        }
        Status::IoError | Status::Corrupt | Status::Unsupported => {
            Some(VolumeError::Io(format!("primary answered {status:?}")))
        }
        Status::OutOfRange | Status::Invalid | Status::Unsynced => {
            Some(VolumeError::Invalid(format!("primary answered {status:?}")))
        }
        Status::NoSpace => Some(VolumeError::NoSpace),
    }
}

#[cfg(test)]
impl PartialEq for Next {
    fn eq(&self, other: &Self) -> bool {
        // Volume errors carry text only: compare the whole value as printed.
        format!("{self:?}") == format!("{other:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        delay_min: Duration::from_millis(10),
        delay_max: Duration::from_millis(35),
    };

    /// The same deadline whether or not the PG is available.
    fn only(deadline: Instant) -> Deadlines {
        Deadlines {
            unavailable: deadline,
            unavailable_for: Duration::ZERO,
            available: deadline,
        }
    }

    /// Goal: a piece whose PG keeps `min_size` acting members (a failover in progress) retries
    /// past the short deadline until the long one; once the map shows the PG below
    /// `min_size`, the short one applies again.
    #[test]
    fn an_available_pg_gets_the_longer_deadline() {
        let start = Instant::now();
        let deadlines = Deadlines {
            unavailable: start + Duration::from_secs(1),
            unavailable_for: Duration::from_secs(1),
            available: start + Duration::from_secs(10),
        };
        let mut retry = Retry::new(deadlines, POLICY);
        let later = start + Duration::from_secs(2);
        assert!(retry.expired(later).is_some(), "unavailable until told");
        retry.set_available(later, true);
        assert!(retry.expired(later).is_none());
        assert!(matches!(
            retry.handle(later, Epoch(1), reply(Status::NotPrimary, 1)),
            Next::Backoff { .. }
        ));
        assert_eq!(retry.remaining(later), Duration::from_secs(8));
        // The PG drops below min_size at 2 s: the piece waits `unavailable_for` from then.
        retry.set_available(later, false);
        assert_eq!(retry.remaining(later), Duration::from_secs(1));
        let after = later + Duration::from_millis(1500);
        retry.set_available(after, false);
        assert!(matches!(
            retry.handle(after, Epoch(1), reply(Status::NotPrimary, 1)),
            Next::Fail(VolumeError::Io(_))
        ));
    }

    fn reply(status: Status, epoch: u64) -> Outcome {
        Outcome::Reply {
            status,
            epoch: Epoch(epoch),
        }
    }

    /// Goal: OK completes; a stale epoch waits for the responder's epoch; retryable statuses
    /// and transport failures back off with a doubling, capped delay.
    #[test]
    fn decisions_by_outcome() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);
        let mut retry = Retry::new(only(deadline), POLICY);
        assert_eq!(
            retry.handle(start, Epoch(3), reply(Status::Ok, 3)),
            Next::Done
        );
        assert_eq!(
            retry.handle(start, Epoch(3), reply(Status::StaleEpoch, 5)),
            Next::AwaitEpoch {
                epoch: Epoch(5),
                until: deadline
            }
        );
        let ms = Duration::from_millis;
        let outcomes = [
            reply(Status::NotPrimary, 3),
            reply(Status::Busy, 3),
            reply(Status::Timeout, 3),
            // Not newer than ours: treated as a confused responder.
            reply(Status::StaleEpoch, 2),
            Outcome::NoRoute("no primary".into()),
            Outcome::Transport {
                retryable: true,
                detail: "lost".into(),
            },
        ];
        let delays = [10, 20, 35, 35, 35, 35];
        for (outcome, delay) in outcomes.into_iter().zip(delays) {
            assert_eq!(
                retry.handle(start, Epoch(3), outcome),
                Next::Backoff {
                    until: start + ms(delay)
                }
            );
        }
        assert_eq!(retry.attempts(), 8);
    }

    /// Goal: errors the primary is sure of end the piece at once with the matching volume
    /// error; the deadline turns any retry into an I/O error naming the last failure.
    #[test]
    fn failures_and_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut retry = Retry::new(only(deadline), POLICY);
        let fail = |retry: &mut Retry, outcome| match retry.handle(start, Epoch(1), outcome) {
            Next::Fail(error) => error,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert!(matches!(
            fail(&mut retry, reply(Status::IoError, 1)),
            VolumeError::Io(_)
        ));
        assert!(matches!(
            fail(&mut retry, reply(Status::Corrupt, 1)),
            VolumeError::Io(_)
        ));
        assert!(matches!(
            fail(&mut retry, reply(Status::OutOfRange, 1)),
            VolumeError::Invalid(_)
        ));
        assert!(matches!(
            fail(&mut retry, reply(Status::NoSpace, 1)),
            VolumeError::NoSpace
        ));
        let bug = Outcome::Transport {
            retryable: false,
            detail: "encode".into(),
        };
        assert!(matches!(fail(&mut retry, bug), VolumeError::Io(_)));

        // Near the deadline the back-off is clipped to it; past it, the piece fails.
        let late = deadline - Duration::from_millis(1);
        assert_eq!(
            retry.handle(late, Epoch(1), reply(Status::Busy, 1)),
            Next::Backoff { until: deadline }
        );
        assert!(retry.expired(late).is_none());
        match retry.expired(deadline) {
            Some(VolumeError::Io(text)) => assert!(text.contains("Busy"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            retry.handle(deadline, Epoch(1), reply(Status::StaleEpoch, 4)),
            Next::Fail(VolumeError::Io(_))
        ));
    }
}
