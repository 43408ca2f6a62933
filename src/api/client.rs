//! A typed client of the HTTP API (used by the `basalt` CLI, tests and tools): JSON bodies,
//! a bearer token, and problem documents decoded into [`ClientError::Problem`].
//!
//! This is the one I/O module of the library; the request and response types it sends and
//! decodes are the same `basalt::api` types the daemon serves, so the two cannot drift.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::{
    ClusterInitRequest, ClusterStatus, ExportView, IDEMPOTENCY_KEY_HEADER, NodeList, NodeView,
    PROBLEM_CONTENT_TYPE, PgList, PgListQuery, PgStatus, Problem, ScrubStartResponse, ScrubStatus,
    VolumeCreateRequest, VolumeList, VolumeResizeRequest, VolumeView,
};

/// The API address the CLI uses when none is given.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:9640";

/// Longest error body quoted in a [`ClientError::Protocol`].
const BODY_QUOTE_MAX: usize = 512;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server refused the call with a problem document.
    #[error("{0}")]
    Problem(Problem),
    /// The server could not be reached (connection refused, DNS, timeout, connection lost).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered something that is not the API's (wrong JSON, no problem document).
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The base URL or a path segment is not usable.
    #[error("invalid API URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// Whether the server was not reached (or the connection was lost), so a retry of an
    /// idempotent call may help.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// A reqwest client builder with the process's TLS crypto provider (ring) installed, so
/// `https://` API URLs work without pulling a second crypto library.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A client of one API endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:9640`), sending `token` as
    /// the bearer token, giving up on a call after `timeout`.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let base = Url::parse(base_url).map_err(|error| invalid(error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid(
                "expected http://HOST:PORT or https://HOST:PORT".into(),
            ));
        }
        let http = http_client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|error| invalid(error.to_string()))?;
        Ok(Self { http, base, token })
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.call(Method::GET, &["v1", "cluster"], None::<&()>, None)
            .await
    }

    /// `POST /v1/cluster/init`.
    pub async fn cluster_init(
        &self,
        request: &ClusterInitRequest,
    ) -> Result<ClusterStatus, ClientError> {
        self.call(
            Method::POST,
            &["v1", "cluster", "init"],
            Some(request),
            None,
        )
        .await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.call(Method::GET, &["v1", "nodes"], None::<&()>, None)
            .await
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: u64) -> Result<NodeView, ClientError> {
        let id = id.to_string();
        self.call(Method::GET, &["v1", "nodes", &id], None::<&()>, None)
            .await
    }

    /// `POST /v1/nodes/{id}/out`: drain a node.
    pub async fn node_out(&self, id: u64) -> Result<NodeView, ClientError> {
        let id = id.to_string();
        self.call(
            Method::POST,
            &["v1", "nodes", &id, "out"],
            None::<&()>,
            None,
        )
        .await
    }

    /// `POST /v1/nodes/{id}/up`: undo a drain.
    pub async fn node_up(&self, id: u64) -> Result<NodeView, ClientError> {
        let id = id.to_string();
        self.call(Method::POST, &["v1", "nodes", &id, "up"], None::<&()>, None)
            .await
    }

    /// `DELETE /v1/nodes/{id}`: remove an out node no PG lists any more.
    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        let id = id.to_string();
        self.call::<(), serde_json::Value>(Method::DELETE, &["v1", "nodes", &id], None, None)
            .await
            .map(drop)
    }

    /// `GET /v1/scrub`: the answering node's scrub.
    pub async fn scrub_status(&self) -> Result<ScrubStatus, ClientError> {
        self.call(Method::GET, &["v1", "scrub"], None::<&()>, None)
            .await
    }

    /// `POST /v1/scrub`: start a scrub pass on the answering node now.
    pub async fn scrub_start(&self) -> Result<ScrubStartResponse, ClientError> {
        self.call(Method::POST, &["v1", "scrub"], None::<&()>, None)
            .await
    }

    /// `GET /v1/pgs`: the first page of every PG.
    pub async fn pgs(&self) -> Result<PgList, ClientError> {
        self.call(Method::GET, &["v1", "pgs"], None::<&()>, None)
            .await
    }

    /// `GET /v1/pgs?state=&offset=&limit=`: one page of the PGs `query` asks for.
    pub async fn pg_page(&self, query: &PgListQuery) -> Result<PgList, ClientError> {
        let mut pairs = Vec::new();
        if let Some(state) = query.state {
            pairs.push(("state", state.label().to_owned()));
        }
        if let Some(offset) = query.offset {
            pairs.push(("offset", offset.to_string()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        self.call_with_query(Method::GET, &["v1", "pgs"], &pairs, None::<&()>, None)
            .await
    }

    /// Every PG `state` selects (all when `None`), following the pages.
    pub async fn pgs_in(&self, state: Option<PgStatus>) -> Result<PgList, ClientError> {
        let mut query = PgListQuery {
            state,
            ..PgListQuery::default()
        };
        let mut list = self.pg_page(&query).await?;
        // Bounded: each page moves `next_offset` forward, and a PG count is finite.
        while let Some(next) = list.next_offset.filter(|next| *next < list.total) {
            query.offset = Some(next);
            let page = self.pg_page(&query).await?;
            if page.pgs.is_empty() {
                break;
            }
            list.pgs.extend(page.pgs);
            list.next_offset = page.next_offset;
            list.epoch = page.epoch;
        }
        list.next_offset = None;
        Ok(list)
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<VolumeList, ClientError> {
        self.call(Method::GET, &["v1", "volumes"], None::<&()>, None)
            .await
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn volume(&self, name: &str) -> Result<VolumeView, ClientError> {
        self.call(Method::GET, &["v1", "volumes", name], None::<&()>, None)
            .await
    }

    /// `POST /v1/volumes` with an optional `Idempotency-Key`.
    pub async fn create_volume(
        &self,
        request: &VolumeCreateRequest,
        idempotency_key: Option<&str>,
    ) -> Result<VolumeView, ClientError> {
        self.call(
            Method::POST,
            &["v1", "volumes"],
            Some(request),
            idempotency_key,
        )
        .await
    }

    /// `POST /v1/volumes/{name}/resize`.
    pub async fn resize_volume(
        &self,
        name: &str,
        request: &VolumeResizeRequest,
    ) -> Result<VolumeView, ClientError> {
        self.call(
            Method::POST,
            &["v1", "volumes", name, "resize"],
            Some(request),
            None,
        )
        .await
    }

    /// `DELETE /v1/volumes/{name}`.
    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(Method::DELETE, &["v1", "volumes", name], None, None)
            .await
            .map(drop)
    }

    /// `GET /v1/exports/{volume}`.
    pub async fn export(&self, volume: &str) -> Result<ExportView, ClientError> {
        self.call(Method::GET, &["v1", "exports", volume], None::<&()>, None)
            .await
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded (a volume name
    /// typed by a user cannot escape its path segment).
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: self.base.to_string(),
                reason: "cannot be a base URL".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One call: sends `body` as JSON, decodes a success into `T` (an empty success body as
    /// JSON `null`), and an error into its problem document.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        self.call_with_query(method, segments, &[], body, idempotency_key)
            .await
    }

    /// [`Self::call`] with query parameters `query`.
    async fn call_with_query<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut url = self.url(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let shown = url.to_string();
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |error: reqwest::Error| ClientError::Unreachable {
            url: shown.clone(),
            reason: error_chain(&error),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let is_problem = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(PROBLEM_CONTENT_TYPE));
        let bytes = response.bytes().await.map_err(unreachable)?;
        let protocol = |reason: String| ClientError::Protocol {
            url: shown.clone(),
            reason,
        };
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                b"null"
            } else {
                &bytes
            };
            return serde_json::from_slice(bytes)
                .map_err(|error| protocol(format!("HTTP {status}, undecodable body: {error}")));
        }
        if is_problem && let Ok(problem) = serde_json::from_slice::<Problem>(&bytes) {
            return Err(ClientError::Problem(problem));
        }
        let quoted: String = String::from_utf8_lossy(&bytes)
            .chars()
            .take(BODY_QUOTE_MAX)
            .collect();
        Err(protocol(format!("HTTP {status}: {quoted}")))
    }
}

/// The error and its causes, joined (reqwest's top-level message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
