//! The OpenAPI 3.1 document: generated from the handlers' `#[utoipa::path]` attributes and the
//! `basalt::api` types, plus the parts no handler states (info, bearer scheme, problem
//! responses shared by many calls).

use std::collections::BTreeMap;

use basalt::api::{PROBLEM_CONTENT_TYPE, Problem, ProblemType};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// Name of the bearer security scheme in the document.
pub(crate) const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Basalt API",
        description = "Provisioning API of a Basalt block storage cluster. Every error is an \
                       RFC 9457 problem document (`application/problem+json`) whose `type` is \
                       a stable code; see docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem, ProblemType)),
    tags(
        (name = "volumes", description = "Volumes: create, list, resize, delete"),
        (name = "nodes", description = "Storage nodes and their state"),
        (name = "cluster", description = "Cluster status, placement groups, bootstrap, scrub"),
        (name = "exports", description = "Where hosts connect to a volume"),
        (name = "meta", description = "Health and this document"),
    )
)]
pub(crate) struct ApiDoc;

/// The document the router serves, completed with the bearer scheme and the crate version.
pub(crate) fn finish(mut document: OpenApi) -> OpenApi {
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    document
}

/// The API's OpenAPI document, as `GET /v1/openapi.json` serves it (without a server).
pub fn openapi_document() -> OpenApi {
    finish(super::handlers::api_routes().into_openapi())
}

/// A documented problem response.
fn problem(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

fn problems(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, description)| (status.to_string(), problem(description)))
        .collect()
}

const BAD_REQUEST: (u16, &str) = (
    400,
    "`bad-request`, `invalid-name`, `invalid-size`, `invalid-replicas`, \
     `invalid-idempotency-key` or `invalid-parameter`",
);
const UNAUTHORIZED: (u16, &str) = (401, "`unauthorized`: no token, or an unknown one");
const FORBIDDEN: (u16, &str) = (403, "`forbidden`: a read-only token on a write");
const NOT_FOUND: (u16, &str) = (
    404,
    "`volume-not-found`, `node-not-found`, or `not-found` (no such route)",
);
const CONFLICT: (u16, &str) = (
    409,
    "`volume-exists`, `shrink-not-allowed`, `too-many-replicas`, `not-enough-nodes`, \
     `already-initialized`, `not-initialized` or `limit-reached`",
);
const TOO_LARGE: (u16, &str) = (413, "`payload-too-large`: the body is over 64 KiB");
const MEDIA_TYPE: (u16, &str) = (415, "`unsupported-media-type`: the body is not JSON");
const IDEMPOTENCY: (u16, &str) = (
    422,
    "`idempotency-conflict`: the key was used with a different request",
);
const INTERNAL: (u16, &str) = (500, "`internal`: a bug");
const UNAVAILABLE: (u16, &str) = (
    503,
    "`no-quorum` or `not-leader`: the write could not be committed now; retry",
);

/// Problems of a read without parameters.
pub(crate) struct ReadProblems;

impl utoipa::IntoResponses for ReadProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[UNAUTHORIZED, INTERNAL])
    }
}

/// Problems of a read of one named thing.
pub(crate) struct LookupProblems;

impl utoipa::IntoResponses for LookupProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, INTERNAL])
    }
}

/// Problems of a write without a body (delete, node out/up).
pub(crate) struct ActionProblems;

impl utoipa::IntoResponses for ActionProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            BAD_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            CONFLICT,
            INTERNAL,
            UNAVAILABLE,
        ])
    }
}

/// Problems of a write with a JSON body.
pub(crate) struct WriteProblems;

impl utoipa::IntoResponses for WriteProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            BAD_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            CONFLICT,
            TOO_LARGE,
            MEDIA_TYPE,
            INTERNAL,
            UNAVAILABLE,
        ])
    }
}

/// Problems of a create with an `Idempotency-Key`.
pub(crate) struct CreateProblems;

impl utoipa::IntoResponses for CreateProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[
            BAD_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            CONFLICT,
            TOO_LARGE,
            MEDIA_TYPE,
            IDEMPOTENCY,
            INTERNAL,
            UNAVAILABLE,
        ])
    }
}
