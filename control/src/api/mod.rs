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
    billing::{Account, AccountSpec, Tariff, TariffSpec},
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
    /// Create or replace a tariff.
    PutTariff(String, TariffSpec),
    /// Create or update an account.
    PutAccount(String, AccountSpec),
    /// An account.
    GetAccount(String),
    /// Add credit.
    Topup(String, i64),
    /// Block an account (its calls are cut).
    Block(String),
    /// Add usage tokens to an account.
    AddTokens(String, u32),
    /// Insert a service into a running call.
    Service(String, crate::services::ServiceRequest),
}

/// The control thread's answer.
#[derive(Debug)]
pub enum ApiAnswer {
    /// Calls, with what each has reserved.
    Calls(Vec<(CallReport, Option<i64>)>),
    /// One call, if known.
    Call(Option<CallReport>),
    /// Prometheus text.
    Metrics(String),
    /// A tariff, or why not.
    Tariff(Result<Tariff, (u16, String)>),
    /// An account, or why not (HTTP status and detail).
    Account(Result<Account, (u16, String)>),
    /// A service applied (its JSON), or why not (HTTP status, code, detail).
    Service(Result<Value, (u16, &'static str, String)>),
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
    /// A stable machine-readable code, where the route defines them (services).
    code: Option<&'static str>,
}

impl ApiError {
    /// A `404 not found` for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "not found",
            detail: what.into(),
            code: None,
        }
    }
    /// A `400 bad request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad request",
            detail: detail.into(),
            code: None,
        }
    }
    /// A `503`: the daemon could not answer.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            detail: detail.into(),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error, "detail": self.detail });
        if let Some(code) = self.code {
            body["code"] = json!(code);
        }
        (self.status, Json(body)).into_response()
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
        .route("/v1/tariffs/{id}", axum::routing::put(put_tariff))
        .route(
            "/v1/accounts/{id}",
            axum::routing::put(put_account).get(get_account),
        )
        .route("/v1/accounts/{id}/topup", axum::routing::post(topup))
        .route("/v1/accounts/{id}/block", axum::routing::post(block))
        .route("/v1/accounts/{id}/tokens", axum::routing::post(add_tokens))
        .route(
            "/v1/calls/{call_id}/services",
            axum::routing::post(insert_service),
        )
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

/// The JSON of a live call (`reserved`: credit held for it right now).
pub fn call_json(r: &CallReport, reserved: Option<i64>) -> Value {
    let (mut packets, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    for m in &r.media {
        for s in [&m.from_a, &m.from_b]
            .into_iter()
            .chain(m.parties.iter().map(|(_, s)| s))
        {
            packets += s.packets;
            bytes += s.bytes;
            dropped += s.errors;
        }
    }
    json!({
        "call_id": r.call_id,
        "state": r.state,
        "account": r.account,
        "reserved": reserved,
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
            "parties": m.parties.iter().map(|(name, s)| json!({
                "party": name,
                "local": s.local.map(|a| a.to_string()),
                "packets": s.packets,
                "bytes": s.bytes,
                "lost": s.lost,
            })).collect::<Vec<_>>(),
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
        ApiAnswer::Calls(calls) => Ok(Json(Value::Array(
            calls.iter().map(|(c, r)| call_json(c, *r)).collect(),
        ))),
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
        ApiAnswer::Call(Some(c)) => Ok(Json(call_json(&c, None))),
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

fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "balance": a.balance.0,
        "reserved": a.reserved.0,
        "tariff": a.tariff,
        "mode": a.mode.as_str(),
        "blocked": a.blocked,
        "tokens": a.tokens,
    })
}

fn refused((status, detail): (u16, String)) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        error: error_name(status),
        detail,
        code: None,
    }
}

fn error_name(status: u16) -> &'static str {
    match status {
        401 => "unauthorized",
        402 => "payment required",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        500 => "internal error",
        503 => "unavailable",
        _ => "bad request",
    }
}

async fn account_answer(s: &ApiState, call: ApiCall) -> Result<Json<Value>, ApiError> {
    match s.ask(call).await? {
        ApiAnswer::Account(Ok(a)) => Ok(Json(account_json(&a))),
        ApiAnswer::Account(Err(e)) => Err(refused(e)),
        other => Err(ApiError::unavailable(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// A JSON body, with the parser's complaint as a 400 in the API's error shape.
fn body<T: serde::de::DeserializeOwned>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

async fn put_tariff(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    spec: Result<Json<TariffSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = body(spec)?;
    match s.ask(ApiCall::PutTariff(id, spec)).await? {
        ApiAnswer::Tariff(Ok(t)) => Ok(Json(json!({
            "id": t.id,
            "per_minute": t.per_minute.0,
            "per_kilobyte": t.per_kilobyte.0,
            "increment_s": t.increment_s,
            "initial_increment_s": t.initial_increment_s,
            "connection_fee": t.connection_fee.0,
        }))),
        ApiAnswer::Tariff(Err(e)) => Err(refused(e)),
        other => Err(ApiError::unavailable(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn put_account(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    spec: Result<Json<AccountSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = body(spec)?;
    account_answer(&s, ApiCall::PutAccount(id, spec)).await
}

async fn get_account(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    account_answer(&s, ApiCall::GetAccount(id)).await
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

async fn topup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    amount: Result<Json<Amount>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = body(amount)?;
    account_answer(&s, ApiCall::Topup(id, a.amount)).await
}

async fn block(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    account_answer(&s, ApiCall::Block(id)).await
}

#[derive(Deserialize)]
struct Count {
    count: u32,
}

async fn add_tokens(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    count: Result<Json<Count>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let c = body(count)?;
    if c.count == 0 {
        return Err(ApiError::bad_request("count must be at least 1"));
    }
    account_answer(&s, ApiCall::AddTokens(id, c.count)).await
}

/// `POST /v1/calls/{call_id}/services` `{"ticket": "...", "service": "qos"|"add-party"|
/// "split"|"fork", ...params}`.
async fn insert_service(
    State(s): State<ApiState>,
    Path(call_id): Path<String>,
    req: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = body(req)?;
    let req = crate::services::ServiceRequest::from_json(&v).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        error: "bad request",
        detail: e.to_string(),
        code: Some(e.code()),
    })?;
    match s.ask(ApiCall::Service(call_id, req)).await? {
        ApiAnswer::Service(Ok(v)) => Ok(Json(v)),
        ApiAnswer::Service(Err((status, code, detail))) => Err(ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            error: error_name(status),
            detail,
            code: Some(code),
        }),
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
