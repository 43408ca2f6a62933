//! Problem documents for every failure: handler errors ([`ApiError`]), and a last middleware
//! that turns anything else with an error status (axum's own 404/405/413/415 answers, a
//! rejection a handler did not map) into a problem document too.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use basalt::api::{PROBLEM_CONTENT_TYPE, Problem, ProblemType};
use basalt::meta::MetaError;

use super::ProposeFailure;

/// Longest request path echoed back as a problem's `instance`.
const INSTANCE_LENGTH_MAX: usize = 256;

/// Longest body of a foreign error response read back as a problem's `detail`.
const FOREIGN_DETAIL_LENGTH_MAX: usize = 1024;

/// A failed call: answered with its problem document and the problem's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError(pub Problem);

impl ApiError {
    /// A problem of `problem_type` with an occurrence-specific `detail`.
    pub fn new(problem_type: ProblemType, detail: impl Into<String>) -> Self {
        Self(Problem::new(problem_type, detail))
    }
}

impl From<MetaError> for ApiError {
    fn from(error: MetaError) -> Self {
        Self(Problem::from(&error))
    }
}

impl From<ProposeFailure> for ApiError {
    fn from(failure: ProposeFailure) -> Self {
        let problem_type = match &failure {
            ProposeFailure::NoLeader(_)
            | ProposeFailure::NoQuorum(_)
            | ProposeFailure::OutcomeUnknown(_) => ProblemType::NoQuorum,
            ProposeFailure::LeaderUnreachable(_) => ProblemType::NotLeader,
            ProposeFailure::Internal(_) => ProblemType::Internal,
        };
        Self::new(problem_type, failure.to_string())
    }
}

/// Marks a response as carrying this problem, so [`problem_responses`] can add the
/// request path as its `instance`.
#[derive(Clone, Debug)]
struct ProblemExtension(Problem);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = render(&self.0);
        response.extensions_mut().insert(ProblemExtension(self.0));
        response
    }
}

/// The response for `problem`: its status, `application/problem+json`, the JSON body.
fn render(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The fallback for paths no route matches.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    let path: String = uri.path().chars().take(INSTANCE_LENGTH_MAX).collect();
    ApiError::new(ProblemType::NotFound, format!("no route for {path}"))
}

/// Outermost middleware: every error response leaves as a problem document with the request
/// path as `instance`, whoever produced it. Headers (`Allow` on a 405, `WWW-Authenticate` on a
/// 401) are kept.
pub(crate) async fn problem_responses(request: Request, next: Next) -> Response {
    let instance: String = request
        .uri()
        .path()
        .chars()
        .take(INSTANCE_LENGTH_MAX)
        .collect();
    let mut response = next.run(request).await;
    if let Some(ProblemExtension(problem)) = response.extensions_mut().remove() {
        return replace_body(response, &problem.with_instance(instance));
    }
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(&response) {
        return response;
    }
    let problem_type = type_for_status(status);
    let (parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, FOREIGN_DETAIL_LENGTH_MAX).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or(problem_type.title())
            .to_owned(),
    };
    tracing::debug!(%status, %problem_type, %detail, "error response turned into a problem");
    let problem = Problem::new(problem_type, detail).with_instance(instance);
    replace_body(Response::from_parts(parts, Body::empty()), &problem)
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes())
}

/// `response` with `problem` as its body, status and content type; other headers are kept.
fn replace_body(response: Response, problem: &Problem) -> Response {
    let (mut parts, _) = response.into_parts();
    let rendered = render(problem);
    let (rendered_parts, body) = rendered.into_parts();
    parts.status = rendered_parts.status;
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in &rendered_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// The problem type of an error response that carries none.
fn type_for_status(status: StatusCode) -> ProblemType {
    match status {
        StatusCode::UNAUTHORIZED => ProblemType::Unauthorized,
        StatusCode::FORBIDDEN => ProblemType::Forbidden,
        StatusCode::NOT_FOUND => ProblemType::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemType::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemType::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemType::UnsupportedMediaType,
        status if status.is_client_error() => ProblemType::BadRequest,
        _ => ProblemType::Internal,
    }
}
