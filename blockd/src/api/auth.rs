//! Bearer-token auth: tokens from the node's config plus those stored (hashed) in the
//! replicated state. `admin` may call everything, `read-only` only `GET`/`HEAD`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use basalt::api::ProblemType;
use basalt::meta::{TokenRole, token_sha256};

use super::{ApiError, AuthConfig, ControlPlane, HEALTHZ_PATH, METRICS_PATH};

/// Checks bearer tokens against the config's and the state's.
pub(crate) struct Authenticator {
    cp: Arc<dyn ControlPlane>,
    config: AuthConfig,
}

impl Authenticator {
    pub(crate) fn new(cp: Arc<dyn ControlPlane>, config: AuthConfig) -> Self {
        Self { cp, config }
    }

    /// The role of the request's bearer token.
    fn role(&self, headers: &HeaderMap) -> Result<TokenRole, ApiError> {
        let unauthorized = |detail: &str| ApiError::new(ProblemType::Unauthorized, detail);
        let value = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let text = value
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let (scheme, token) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
        // Hashes are compared, never the secrets, so a timing difference reveals nothing useful.
        let sha256 = token_sha256(token);
        if let Some(token) = self.config.tokens.iter().find(|t| t.sha256 == sha256) {
            return Ok(token.role);
        }
        self.cp
            .state()
            .token_by_sha256(&sha256)
            .map(|token| token.role)
            .ok_or_else(|| unauthorized("unknown bearer token"))
    }
}

/// Middleware: lets `/healthz` (and `/metrics` with `open_metrics`) through, otherwise
/// requires a known token, and an `admin` one for anything but `GET`/`HEAD`.
pub(crate) async fn require_token(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == HEALTHZ_PATH || (auth.config.open_metrics && path == METRICS_PATH) {
        return next.run(request).await;
    }
    match auth.role(request.headers()) {
        Err(error) => {
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Ok(TokenRole::ReadOnly) if !matches!(*request.method(), Method::GET | Method::HEAD) => {
            ApiError::new(
                ProblemType::Forbidden,
                format!("a read-only token may not {}", request.method()),
            )
            .into_response()
        }
        Ok(_) => next.run(request).await,
    }
}
