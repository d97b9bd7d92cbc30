//! The HTTP API's routes (docs/protocol.md). Every error is `{"code","message"}` with a stable
//! code, for paths and methods the API does not have too.

use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::{refuse, Refusal, St};
use crate::blobs::{get_blob, put_blob};
use crate::challenge::challenge;
use crate::register::register;
use crate::release::attest;

pub fn router(state: St) -> Router {
    Router::new()
        .route("/v1/service", get(service_info))
        .route("/v1/challenge", post(challenge))
        .route("/v1/attest", post(attest))
        .route("/v1/keys", post(register))
        .route(
            "/v1/contracts/{digest}/queries",
            get(crate::queries::list).post(crate::queries::submit),
        )
        .route("/v1/contracts/{digest}/budget", get(crate::budget::show))
        .route(
            "/v1/contracts/{digest}/budget/debit",
            post(crate::budget::debit),
        )
        .route(
            "/v1/contracts/{digest}/receipts",
            get(crate::receipts::list).post(crate::receipts::upload),
        )
        .route(
            "/v1/contracts/{digest}/receipts/{run}",
            get(crate::receipts::get),
        )
        .route(
            "/v1/contracts/{digest}/blobs/{name}",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::map_response(too_large_as_json))
        .with_state(state)
}

pub(crate) async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> Refusal {
    let path: String = uri.path().chars().take(128).collect();
    refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

/// Every answer is `{"code","message"}`, for paths the API does not have too.
pub(crate) async fn no_route(uri: axum::http::Uri) -> Refusal {
    let path: String = uri.path().chars().take(128).collect();
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {path}"),
    )
}

/// axum answers a body over the limit with a plain-text 413; the API answers in JSON.
pub(crate) async fn too_large_as_json(r: Response) -> Response {
    let json = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request bodies are limited to 1048576 bytes",
        )
        .into_response();
    }
    r
}

pub(crate) async fn service_info(AxState(st): AxState<St>) -> Response {
    Json(st.keys.info()).into_response()
}
