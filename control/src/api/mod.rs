//! The operator HTTP API (`--http`, default 127.0.0.1:8080): JSON over HTTP for what does not
//! need a stream. Live state (calls; accounts and tariffs, which credit control uses) is asked
//! of the control thread, which owns it, through its input channel; CDRs are read from the
//! store with a connection of the API's own, so a report never waits behind signaling.
//!
//! Errors are JSON too: `{"error": "<what>", "detail": "<why>"}` with a fitting status code.
//! Routes and JSON shapes are a contract (operators and tests rely on them).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use crossbeam_channel::Sender;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{
    engine::{CallReport, Cdr},
    store::CdrStore,
};

/// A question for the control thread.
#[derive(Debug)]
pub enum ApiCall {
    /// Every live call.
    ListCalls,
    /// One call.
    GetCall(String),
    /// The Prometheus exposition.
    Metrics,
}

/// The control thread's answer.
#[derive(Debug)]
pub enum ApiAnswer {
    /// Calls.
    Calls(Vec<CallReport>),
    /// One call, if known.
    Call(Option<CallReport>),
    /// Prometheus text.
    Metrics(String),
}

/// A request as it reaches the control thread, with where to answer.
pub struct ApiRequest {
    /// The question.
    pub call: ApiCall,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ApiAnswer>,
}

/// An HTTP error in the API's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    /// A `404 not found` for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "not found",
            detail: what.into(),
        }
    }
    /// A `400 bad request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad request",
            detail: detail.into(),
        }
    }
    /// A `503`: the daemon could not answer.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "detail": self.detail })),
        )
            .into_response()
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Into the control thread.
    pub to_control: Sender<ApiRequest>,
    /// Read access to CDRs.
    pub cdrs: Arc<std::sync::Mutex<Box<dyn CdrStore>>>,
}

impl ApiState {
    async fn ask(&self, call: ApiCall) -> Result<ApiAnswer, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.to_control
            .send(ApiRequest { call, reply: tx })
            .map_err(|_| ApiError::unavailable("the control thread is gone"))?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| ApiError::unavailable("the control thread did not answer within 5 s"))?
            .map_err(|_| ApiError::unavailable("the control thread dropped the request"))
    }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/calls", get(list_calls))
        .route("/v1/calls/{call_id}", get(get_call))
        .route("/v1/cdrs", get(list_cdrs))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// Serves the API on `addr` until the process ends (runs inside a tokio runtime).
pub async fn serve(addr: SocketAddr, state: ApiState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, state).await
}

/// Serves the API on a bound listener.
pub async fn serve_on(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// The JSON of a live call.
pub fn call_json(r: &CallReport) -> Value {
    let (mut packets, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    for m in &r.media {
        for s in [&m.from_a, &m.from_b] {
            packets += s.packets;
            bytes += s.bytes;
            dropped += s.errors;
        }
    }
    json!({
        "call_id": r.call_id,
        "state": r.state,
        "from_tag": r.a_tag,
        "to_tag": r.b_tag,
        "created_ms": r.created_ms,
        "answered_ms": r.answered_ms,
        "packets": packets,
        "bytes": bytes,
        "dropped": dropped,
        "media": r.media.iter().map(|m| json!({
            "index": m.index,
            "type": m.kind,
            "protocol": m.protocol,
            "codec": m.codec,
            "packets_ab": m.from_a.packets,
            "bytes_ab": m.from_a.bytes,
            "packets_ba": m.from_b.packets,
            "bytes_ba": m.from_b.bytes,
            "lost_ab": m.from_a.lost,
            "lost_ba": m.from_b.lost,
            "dropped_xdp": m.from_a.dropped_xdp + m.from_b.dropped_xdp,
        })).collect::<Vec<_>>(),
    })
}

/// The JSON of a CDR (the table's columns, by name).
pub fn cdr_json(c: &Cdr) -> Value {
    json!({
        "call_id": c.call_id,
        "from_tag": c.from_tag,
        "to_tag": c.to_tag,
        "account": c.account,
        "offer_at": c.offer_at,
        "answer_at": c.answer_at,
        "end_at": c.end_at,
        "end_reason": c.end_reason.map(|r| r.as_str()),
        "duration_ms": c.duration_ms,
        "packets_ab": c.packets_ab,
        "bytes_ab": c.bytes_ab,
        "packets_ba": c.packets_ba,
        "bytes_ba": c.bytes_ba,
        "lost_ab": c.lost_ab,
        "lost_ba": c.lost_ba,
        "jitter_ab_us": c.jitter_ab_us,
        "jitter_ba_us": c.jitter_ba_us,
        "dscp": c.dscp,
        "dropped_xdp": c.dropped_xdp,
        "charge": c.charge,
        "flags": c.flags,
        "services": c.services,
    })
}

async fn list_calls(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    match s.ask(ApiCall::ListCalls).await? {
        ApiAnswer::Calls(calls) => Ok(Json(Value::Array(calls.iter().map(call_json).collect()))),
        other => Err(ApiError::unavailable(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn get_call(
    State(s): State<ApiState>,
    Path(call_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match s.ask(ApiCall::GetCall(call_id.clone())).await? {
        ApiAnswer::Call(Some(c)) => Ok(Json(call_json(&c))),
        ApiAnswer::Call(None) => Err(ApiError::not_found(format!("no call {call_id:?}"))),
        other => Err(ApiError::unavailable(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    match s.ask(ApiCall::Metrics).await? {
        ApiAnswer::Metrics(text) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response()),
        other => Err(ApiError::unavailable(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
struct CdrQuery {
    call_id: Option<String>,
}

async fn list_cdrs(
    State(s): State<ApiState>,
    Query(q): Query<CdrQuery>,
) -> Result<Json<Value>, ApiError> {
    let call_id = q
        .call_id
        .ok_or_else(|| ApiError::bad_request("query parameter call_id is required"))?;
    let store = Arc::clone(&s.cdrs);
    let rows = tokio::task::spawn_blocking(move || {
        let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
        st.by_call_id(&call_id)
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("CDR read task: {e}")))?
    .map_err(|e| ApiError::unavailable(format!("CDR store: {e}")))?;
    Ok(Json(Value::Array(rows.iter().map(cdr_json).collect())))
}
