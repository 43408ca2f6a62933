//! Token commands. Only hashes are stored; see `types::token_sha256`.

use super::outcome::{CommandResult, MetaError, Outcome, truncated};
use super::state::MetaState;
use super::types::{ApiToken, TokenRole, is_valid_name};

/// Most API tokens in a cluster.
pub const TOKENS_MAX: usize = 1024;

impl MetaState {
    pub(super) fn add_token(
        &mut self,
        name: &str,
        role: TokenRole,
        sha256: &[u8; 32],
    ) -> CommandResult {
        if !is_valid_name(name) {
            return Err(MetaError::InvalidTokenName {
                name: truncated(name),
            });
        }
        if self.tokens.contains_key(name) || self.token_hashes.contains_key(sha256) {
            return Err(MetaError::TokenExists {
                name: name.to_owned(),
            });
        }
        if self.tokens.len() >= TOKENS_MAX {
            return Err(MetaError::TooManyTokens { limit: TOKENS_MAX });
        }
        let token = ApiToken {
            name: name.to_owned(),
            role,
            sha256: *sha256,
            created_unix_ms: self.clock_unix_ms,
        };
        self.token_hashes.insert(*sha256, name.to_owned());
        self.tokens.insert(name.to_owned(), token);
        Ok(Outcome::TokenAdded {
            name: name.to_owned(),
        })
    }

    pub(super) fn remove_token(&mut self, name: &str) -> CommandResult {
        let token = self
            .tokens
            .remove(name)
            .ok_or_else(|| MetaError::TokenNotFound {
                name: truncated(name),
            })?;
        let removed = self.token_hashes.remove(&token.sha256);
        debug_assert!(removed.is_some());
        Ok(Outcome::TokenRemoved { name: token.name })
    }
}
