//! The cryptography of the handshake: the cluster secret and the proofs.
//!
//! Both proofs are HMAC-SHA256 under the cluster secret over the same transcript (the
//! initiator's HELLO bytes, then the acceptor's), each with its own length-prefixed label.
//! Both HELLOs carry a fresh nonce, so no proof is valid on any other connection; the labels
//! make the initiator's and acceptor's proofs distinct values, so neither can be reflected as
//! the other.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::messages::{HELLO_SIZE_BYTES, PROOF_SIZE_BYTES, Proof, Role};

/// Smallest cluster secret accepted, in bytes: 128 bits, so one recorded handshake cannot be
/// used to guess the secret offline.
pub const CLUSTER_SECRET_SIZE_MIN: usize = 16;
/// Largest cluster secret accepted, in bytes: the SHA-256 block size. HMAC hashes longer keys
/// down to 32 bytes, so longer secrets add nothing but a way to misconfigure.
pub const CLUSTER_SECRET_SIZE_MAX: usize = 64;

const LABEL_PROOF_INITIATOR: &[u8] = b"basalt/peer/v1/proof/initiator";
const LABEL_PROOF_ACCEPTOR: &[u8] = b"basalt/peer/v1/proof/acceptor";

const _: () = assert!(CLUSTER_SECRET_SIZE_MIN <= CLUSTER_SECRET_SIZE_MAX);
const _: () = assert!(PROOF_SIZE_BYTES == 32);
const _: () = assert!(LABEL_PROOF_INITIATOR.len() <= u8::MAX as usize);
const _: () = assert!(LABEL_PROOF_ACCEPTOR.len() <= u8::MAX as usize);

/// The secret every node of a cluster shares; knowing it is what makes a node a member.
/// `Debug` never prints it.
///
/// Held as the HMAC key block: the secret zero-padded to the SHA-256 block size. HMAC pads
/// shorter keys exactly that way, so the MAC equals HMAC under the raw secret, and building
/// the MAC from a full block cannot fail.
#[derive(Clone)]
pub struct ClusterSecret {
    key_block: [u8; CLUSTER_SECRET_SIZE_MAX],
    size_bytes: usize,
}

/// Why bytes cannot be a cluster secret (a configuration error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Shorter than [`CLUSTER_SECRET_SIZE_MIN`].
    #[error("cluster secret of {size_bytes} bytes is shorter than {CLUSTER_SECRET_SIZE_MIN}")]
    TooShort {
        /// Size given.
        size_bytes: usize,
    },
    /// Longer than [`CLUSTER_SECRET_SIZE_MAX`].
    #[error("cluster secret of {size_bytes} bytes is longer than {CLUSTER_SECRET_SIZE_MAX}")]
    TooLong {
        /// Size given.
        size_bytes: usize,
    },
}

impl ClusterSecret {
    /// A secret from raw bytes (decoded from configuration by the caller).
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        let size_bytes = bytes.len();
        if size_bytes < CLUSTER_SECRET_SIZE_MIN {
            return Err(SecretError::TooShort { size_bytes });
        }
        if size_bytes > CLUSTER_SECRET_SIZE_MAX {
            return Err(SecretError::TooLong { size_bytes });
        }
        let mut key_block = [0; CLUSTER_SECRET_SIZE_MAX];
        key_block[..size_bytes].copy_from_slice(bytes);
        Ok(ClusterSecret {
            key_block,
            size_bytes,
        })
    }

    /// HMAC-SHA256 of `label_size || label || initiator HELLO || acceptor HELLO`. Both HELLOs
    /// are fixed-size, so the input splits into its parts one way only.
    fn mac(&self, label: &[u8], transcript: &Transcript) -> [u8; PROOF_SIZE_BYTES] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.key_block.into());
        // Labels are constants, each const-asserted to fit in one length byte.
        mac.update(&[label.len() as u8]);
        mac.update(label);
        mac.update(&transcript.initiator_hello);
        mac.update(&transcript.acceptor_hello);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret(<{} bytes redacted>)", self.size_bytes)
    }
}

/// Both HELLO payloads, initiator's first: what the proofs are bound to.
#[derive(Clone)]
pub(crate) struct Transcript {
    pub(crate) initiator_hello: [u8; HELLO_SIZE_BYTES],
    pub(crate) acceptor_hello: [u8; HELLO_SIZE_BYTES],
}

impl Transcript {
    /// The proof the node in `role` sends.
    pub(crate) fn proof(&self, secret: &ClusterSecret, role: Role) -> Proof {
        let label = match role {
            Role::Initiator => LABEL_PROOF_INITIATOR,
            Role::Acceptor => LABEL_PROOF_ACCEPTOR,
        };
        Proof(secret.mac(label, self))
    }

    /// Whether `proof` is the one the node in `role` must send; constant time, so timing
    /// reveals nothing about how much of a forged proof was right.
    pub(crate) fn verify(&self, secret: &ClusterSecret, role: Role, proof: &Proof) -> bool {
        let expected = self.proof(secret, role);
        expected.0[..].ct_eq(&proof.0[..]).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a proof is exactly the documented HMAC (docs/wire-protocol.md): HMAC-SHA256 under
    /// the raw secret of `label_size || label || initiator HELLO || acceptor HELLO`. Method:
    /// recompute it with the `hmac` crate from the raw secret for the shortest and longest
    /// secrets, which also shows the zero-padded key block changes nothing.
    #[test]
    fn proof_is_the_documented_hmac() {
        let transcript = Transcript {
            initiator_hello: [1; HELLO_SIZE_BYTES],
            acceptor_hello: [2; HELLO_SIZE_BYTES],
        };
        for size in [CLUSTER_SECRET_SIZE_MIN, 33, CLUSTER_SECRET_SIZE_MAX] {
            let raw: Vec<u8> = (1..=size as u8).collect();
            let secret = ClusterSecret::new(&raw).unwrap();
            for (role, label) in [
                (Role::Initiator, LABEL_PROOF_INITIATOR),
                (Role::Acceptor, LABEL_PROOF_ACCEPTOR),
            ] {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&raw).unwrap();
                mac.update(&[label.len() as u8]);
                mac.update(label);
                mac.update(&[1; HELLO_SIZE_BYTES]);
                mac.update(&[2; HELLO_SIZE_BYTES]);
                let expected: [u8; PROOF_SIZE_BYTES] = mac.finalize().into_bytes().into();
                assert_eq!(transcript.proof(&secret, role).0, expected);
                assert!(transcript.verify(&secret, role, &Proof(expected)));
                assert!(!transcript.verify(&secret, role.peer(), &Proof(expected)));
            }
        }
    }
}
