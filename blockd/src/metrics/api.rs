//! HTTP API request counters by route template, method and status.
//!
//! The route label is the matched route template (`/v1/volumes/{name}`), never the raw path,
//! so the label set stays as small as the API. Requests that match no route count as
//! `unmatched`.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of API request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The matched route template, or `unmatched`.
    pub route: String,
    /// The HTTP method (`other` for methods the API does not use).
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

/// The API family. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct ApiMetrics {
    requests: Family<ApiLabels, Counter>,
}

impl ApiMetrics {
    /// Adds the family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_requests",
            "HTTP API requests answered, by route template, method and status",
            self.requests.clone(),
        );
    }

    fn count(&self, route: String, method: &Method, status: u16) {
        let method = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.requests
            .get_or_create(&ApiLabels {
                route,
                method,
                status,
            })
            .inc();
    }
}

/// Middleware (outermost layer of the API router): counts each answered request.
pub async fn count_requests(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.count(route, &method, response.status().as_u16());
    response
}
