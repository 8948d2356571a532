//! The master's HTTP side, on the gRPC port (one listener, one TLS
//! certificate): the dashboard (one HTML/JS/CSS bundle embedded in the
//! binary) at `/`, its JSON API under `/api/`, live events as server-sent
//! events at `/api/events`, and Prometheus metrics at `/metrics`.
//!
//! The JSON API answers by calling the Operator service itself, so
//! authentication, grants and the per-role filtering are exactly the gRPC
//! API's. The token comes as `Authorization: Bearer` or in the cookie the
//! login page sets (HttpOnly, SameSite=Strict; every route but login and
//! logout only reads).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;
use wasmos_proto::v1;
use wasmos_proto::v1::operator_server::Operator;

use crate::MasterHandle;
use crate::master::cmd::{Cmd, Principal};

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// The cookie the login page sets.
const COOKIE: &str = "wasmos_token";
/// Most tasks one `/api/tasks` page returns.
const MAX_PAGE: u32 = 1000;
/// Live events buffered per dashboard stream before it is dropped (the
/// browser reconnects and reloads).
const EVENTS_BUFFER: usize = 1024;
/// Dashboard event streams open at once; more are refused (503) until some close.
const MAX_EVENT_STREAMS: usize = 256;
/// At most one `overview` event per this long on a stream.
const OVERVIEW_EVERY: Duration = Duration::from_secs(1);

/// The routes, to merge with the gRPC services'.
pub(crate) fn router(handle: MasterHandle) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { page(STYLE, "text/css; charset=utf-8") }))
        .route("/metrics", get(metrics))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/agents", get(agents))
        .route("/api/frameworks", get(frameworks))
        .route("/api/roles", get(roles))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/output", get(output))
        .route("/api/events", get(events))
        .with_state(handle)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::HeaderName::from_static("content-security-policy"), "default-src 'self'; frame-ancestors 'none'"),
        ],
        body,
    )
        .into_response()
}

/// An answer that is not 2xx: `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let code = match s.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, s.message().to_string())
    }
}

type Api = Result<Json<Value>, ApiError>;

/// The token a request carries: its bearer header, else the login cookie.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

/// A gRPC request carrying the HTTP request's token.
fn grpc<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token_of(headers)
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn cookie(value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(State(h): State<MasterHandle>, body: Json<Login>) -> Result<Response, ApiError> {
    let token = body.token.trim().to_string();
    let mut headers = HeaderMap::new();
    if let Ok(v) = format!("Bearer {token}").parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    let me = whoami(State(h.clone()), headers).await?;
    let mut resp = me.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&token, h.tls.is_some(), None));
    Ok(resp)
}

async fn logout(State(h): State<MasterHandle>) -> Response {
    let mut resp = Json(json!({})).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie("", h.tls.is_some(), Some(0)));
    resp
}

async fn whoami(State(h): State<MasterHandle>, headers: HeaderMap) -> Api {
    let md = grpc(&headers, ()).metadata().clone();
    match h.auth.authenticate(&md) {
        Ok(c) => Ok(Json(json!({ "name": c.name, "grants": c.grants.strings() }))),
        Err(s) => {
            h.audit.refused("unauthenticated", "dashboard_login", "", "", s.message());
            h.metrics.refused.with_label_values(&["unauthenticated"]).inc();
            Err(s.into())
        }
    }
}

/// `/metrics`: a token that may view every role, unless `--metrics-public`.
async fn metrics(State(h): State<MasterHandle>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = if h.metrics_public {
        Principal::Master
    } else {
        let md = grpc(&headers, ()).metadata().clone();
        match h.auth.authenticate(&md) {
            Ok(c) => Principal::Token(c),
            Err(s) => {
                h.audit.refused("unauthenticated", "metrics", "", "", s.message());
                h.metrics.refused.with_label_values(&["unauthenticated"]).inc();
                return Err(s.into());
            }
        }
    };
    let snap = h.ask(who, Cmd::Snapshot).await.map_err(super::convert::status_of)?;
    let text = h.metrics.render(&snap);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

// ------------------------------------------------------------------- JSON

/// `{"cpus": 2.0, "mem": 2147483648}` and its display string.
fn res(r: Option<&v1::Resources>) -> (Value, String) {
    let r = wasmos_proto::resources_from_wire(r).unwrap_or_default();
    let map: serde_json::Map<String, Value> = r.iter().map(|(k, v)| (k.to_string(), json!(v.as_f64()))).collect();
    (Value::Object(map), if r.is_empty() { String::new() } else { r.to_string() })
}

/// Adds `name` and `name_text` for a resource field.
fn put_res(o: &mut serde_json::Map<String, Value>, name: &str, r: Option<&v1::Resources>) {
    let (v, t) = res(r);
    o.insert(name.to_string(), v);
    o.insert(format!("{name}_text"), json!(t));
}

fn state_name(s: i32) -> &'static str {
    wasmos_proto::state_from_wire(s).map(|s| s.as_str()).unwrap_or("unknown")
}

fn task_json(t: &v1::TaskSummary) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("task_id".into(), json!(t.task_id));
    o.insert("name".into(), json!(t.name));
    o.insert("framework_id".into(), json!(t.framework_id));
    o.insert("role".into(), json!(t.role));
    o.insert("agent_id".into(), json!(t.agent_id));
    o.insert("state".into(), json!(state_name(t.state)));
    o.insert("attempt".into(), json!(t.attempt));
    o.insert("submitted_at_ms".into(), json!(t.submitted_at_ms));
    o.insert("started_at_ms".into(), json!(t.started_at_ms));
    o.insert("finished_at_ms".into(), json!(t.finished_at_ms));
    o.insert("message".into(), json!(t.message));
    o.insert("module_sha256".into(), json!(t.module_sha256));
    o.insert("live_fuel".into(), json!(t.live_fuel));
    o.insert("live_mem_bytes".into(), json!(t.live_mem_bytes));
    o.insert("fuel_per_sec".into(), json!(t.fuel_per_sec));
    o.insert("live_cpu_ms".into(), json!(t.live_cpu_ns as f64 / 1e6));
    o.insert("cpu_cores".into(), json!(t.cpu_cores));
    o.insert("healthy".into(), json!(t.healthy));
    o.insert("health_message".into(), json!(t.health_message));
    o.insert("health_checked".into(), json!(t.health.is_some()));
    put_res(&mut o, "resources", t.resources.as_ref());
    o.insert(
        "outcome".into(),
        match &t.outcome {
            None => Value::Null,
            Some(x) => json!({
                "kind": wasmos_proto::outcome_kind_from_wire(x.kind).map(|k| k.to_string()),
                "exit_code": x.exit_code,
                "fuel_consumed": if x.fuel_metered { json!(x.fuel_consumed) } else { Value::Null },
                "fuel_metered": x.fuel_metered,
                "cpu_ms": x.cpu_time_ms,
                "peak_memory_bytes": x.peak_memory_bytes,
                "wall_ms": x.wall_time_ms,
                "message": x.message,
            }),
        },
    );
    Value::Object(o)
}

fn agent_json(a: &v1::AgentSummary) -> Value {
    let info = a.info.clone().unwrap_or_default();
    let mut o = serde_json::Map::new();
    o.insert("agent_id".into(), json!(a.agent_id));
    o.insert("hostname".into(), json!(info.hostname));
    o.insert("status".into(), json!(a.status));
    o.insert("mode".into(), json!(a.mode));
    o.insert("eligible".into(), json!(a.eligible));
    o.insert("drain_deadline_ms".into(), json!(a.drain_deadline_ms));
    put_res(&mut o, "resources", info.resources.as_ref());
    put_res(&mut o, "allocated", a.allocated.as_ref());
    let mem = a.mem_used_bytes;
    o.insert("used".into(), json!({ "mem": mem }));
    o.insert("used_text".into(), json!(format!("mem:{}", wasmos_model::format_size(mem))));
    o.insert("tasks".into(), json!(a.running_tasks));
    let attrs: BTreeMap<&str, &str> = info.attributes.iter().map(|x| (x.key.as_str(), x.value.as_str())).collect();
    o.insert("attributes".into(), json!(attrs));
    o.insert("registered_at_ms".into(), json!(a.registered_at_ms));
    o.insert("target".into(), json!(info.target_triple));
    o.insert("wasmtime".into(), json!(info.wasmtime_version));
    Value::Object(o)
}

async fn overview_json(h: &MasterHandle, headers: &HeaderMap) -> Api {
    let o = h.overview(grpc(headers, v1::OverviewRequest {})).await?.into_inner();
    let mut tasks = serde_json::Map::new();
    for s in wasmos_model::TaskState::ALL {
        tasks.insert(s.as_str().into(), json!(o.tasks_by_state.get(s.as_str()).copied().unwrap_or(0)));
    }
    let mut resources = serde_json::Map::new();
    put_res(&mut resources, "total", o.total.as_ref());
    put_res(&mut resources, "allocated", o.allocated.as_ref());
    put_res(&mut resources, "offered", o.offered.as_ref());
    put_res(&mut resources, "idle", o.idle.as_ref());
    Ok(Json(json!({
        "cluster": o.cluster,
        "version": o.version,
        "agents": {
            "active": o.agents_active,
            "disconnected": o.agents_disconnected,
            "draining": o.agents_draining,
            "drained": o.agents_drained,
            "ineligible": o.agents_ineligible,
            "total": o.agents_active + o.agents_disconnected + o.agents_draining + o.agents_drained,
        },
        "tasks": tasks,
        "frameworks": o.frameworks,
        "resources": resources,
        "allocation": { "cycles": o.allocation_cycles, "last_cycle_ms": o.last_cycle_ms, "mean_cycle_ms": o.mean_cycle_ms },
        "watch_seq": o.watch_seq,
        "uptime_ms": o.uptime_ms,
        "master_url": headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|host| format!("{}://{host}", if h.tls.is_some() { "https" } else { "http" }))
            .unwrap_or_default(),
    })))
}

async fn overview(State(h): State<MasterHandle>, headers: HeaderMap) -> Api {
    overview_json(&h, &headers).await
}

async fn agents(State(h): State<MasterHandle>, headers: HeaderMap) -> Api {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = v1::ListAgentsRequest { page_token: token, ..Default::default() };
        let r = h.list_agents(grpc(&headers, req)).await?.into_inner();
        out.extend(r.agents.iter().map(agent_json));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    Ok(Json(json!({ "agents": out })))
}

async fn frameworks(State(h): State<MasterHandle>, headers: HeaderMap) -> Api {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = v1::ListFrameworksRequest { page_token: token, ..Default::default() };
        let r = h.list_frameworks(grpc(&headers, req)).await?.into_inner();
        for f in &r.frameworks {
            let kind = if f.framework_id == "batch" {
                "batch"
            } else if f.hosted {
                "hosted"
            } else {
                "remote"
            };
            let mut o = serde_json::Map::new();
            o.insert("framework_id".into(), json!(f.framework_id));
            o.insert("name".into(), json!(f.name));
            o.insert("role".into(), json!(f.role));
            o.insert("kind".into(), json!(kind));
            o.insert("active".into(), json!(f.connected));
            o.insert("tasks".into(), json!(f.active_tasks));
            put_res(&mut o, "allocated", f.allocated.as_ref());
            o.insert("hosted_status".into(), json!(if f.hosted { f.status.as_str() } else { "" }));
            o.insert("status".into(), json!(f.status));
            o.insert("last_error".into(), json!(f.last_error));
            o.insert("callbacks".into(), json!(f.callbacks));
            out.push(Value::Object(o));
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    // A framework's share: its role's, divided among the role's frameworks
    // is not what DRF says; the share shown is its own allocation's dominant
    // share of the cluster.
    let total = h.overview(grpc(&headers, v1::OverviewRequest {})).await?.into_inner().total;
    let total = wasmos_proto::resources_from_wire(total.as_ref()).unwrap_or_default();
    for f in &mut out {
        let share = f["allocated"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let t = total.get(k).as_f64();
                        (t > 0.0).then(|| v.as_f64().unwrap_or(0.0) / t)
                    })
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0);
        f["share"] = json!(share);
    }
    Ok(Json(json!({ "frameworks": out })))
}

async fn roles(State(h): State<MasterHandle>, headers: HeaderMap) -> Api {
    let r = h.list_roles(grpc(&headers, v1::ListRolesRequest {})).await?.into_inner();
    let out: Vec<Value> = r
        .roles
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("role".into(), json!(r.role));
            o.insert("weight".into(), json!(r.weight));
            let q = r.quota.clone().unwrap_or_default();
            put_res(&mut o, "guarantee", q.guarantee.as_ref());
            put_res(&mut o, "limit", q.limit.as_ref());
            put_res(&mut o, "allocated", r.allocated.as_ref());
            put_res(&mut o, "reserved", r.reserved.as_ref());
            o.insert("dominant_share".into(), json!(r.dominant_share));
            o.insert("frameworks".into(), json!(r.frameworks));
            o.insert("signers".into(), json!(r.signers.len()));
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({ "roles": out })))
}

#[derive(serde::Deserialize, Default)]
struct TaskQuery {
    state: Option<String>,
    framework: Option<String>,
    role: Option<String>,
    agent: Option<String>,
    name: Option<String>,
    page_token: Option<String>,
    limit: Option<u32>,
}

async fn tasks(State(h): State<MasterHandle>, headers: HeaderMap, Query(q): Query<TaskQuery>) -> Api {
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => {
            wasmos_proto::state_to_wire(s.parse().map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?) as i32
        }
    };
    let req = v1::ListTasksRequest {
        state,
        framework_id: q.framework.unwrap_or_default(),
        role: q.role.unwrap_or_default(),
        agent_id: q.agent.unwrap_or_default(),
        name_prefix: q.name.unwrap_or_default(),
        page_token: q.page_token.unwrap_or_default(),
        page_size: q.limit.unwrap_or(100).clamp(1, MAX_PAGE),
        ..Default::default()
    };
    let r = h.list_tasks(grpc(&headers, req)).await?.into_inner();
    let tasks: Vec<Value> = r.tasks.iter().map(task_json).collect();
    Ok(Json(json!({ "tasks": tasks, "next_page_token": r.next_page_token, "watch_seq": r.watch_seq })))
}

async fn get_task(h: &MasterHandle, headers: &HeaderMap, id: String) -> Result<v1::TaskSummary, ApiError> {
    Ok(h.get_task(grpc(headers, v1::GetTaskRequest { task_id: id })).await?.into_inner())
}

async fn task(State(h): State<MasterHandle>, headers: HeaderMap, Path(id): Path<String>) -> Api {
    let t = get_task(&h, &headers, id).await?;
    let mut v = task_json(&t);
    let l = t.limits.unwrap_or_default();
    v["spec"] = json!({
        "module_sha256": t.module_sha256,
        "args": t.args,
        "env_keys": t.env_keys,
        "limits": {
            "fuel": l.fuel.unwrap_or(0),
            "mem_bytes": if l.mem_bytes == 0 { wasmos_model::DEFAULT_MEM } else { l.mem_bytes },
            "timeout_ms": if l.timeout_ms == 0 { wasmos_model::DEFAULT_TIMEOUT.as_millis() as u64 } else { l.timeout_ms },
            "max_output_bytes": if l.max_output_bytes == 0 { wasmos_model::DEFAULT_MAX_OUTPUT } else { l.max_output_bytes },
            "meter_fuel": l.meter_fuel,
        },
    });
    v["events"] = json!(
        std::iter::once(json!({
            "at_ms": t.submitted_at_ms, "state": "submitted", "reason": "submitted", "message": "", "agent_id": "",
        }))
        .chain(t.events.iter().map(|e| json!({
            "at_ms": e.at_ms,
            "state": state_name(e.state),
            "reason": e.reason,
            "message": e.message,
            "agent_id": e.agent_id,
        })))
        .collect::<Vec<_>>()
    );
    Ok(Json(v))
}

#[derive(serde::Deserialize)]
struct OutputQuery {
    stream: Option<String>,
    offset: Option<usize>,
}

/// A task's output from `offset` on: a running task's as its agent has it
/// now (the page polls while `running`), an ended one's from its outcome.
async fn output(
    State(h): State<MasterHandle>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OutputQuery>,
) -> Api {
    let stderr = match q.stream.as_deref().unwrap_or("stdout") {
        "stdout" => false,
        "stderr" => true,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("stream {other:?} is unknown; use stdout or stderr"),
            ));
        }
    };
    let req = v1::TaskOutputRequest { task_id: id, stderr, offset: q.offset.unwrap_or(0) as u64, max_bytes: 0 };
    let r = h.task_output(grpc(&headers, req)).await?.into_inner();
    // A character cut at the chunk's end comes whole with the next one.
    let whole = match std::str::from_utf8(&r.data) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => r.data.len(),
    };
    let next_offset = r.next_offset - (r.data.len() - whole) as u64;
    Ok(Json(json!({
        "data": String::from_utf8_lossy(&r.data[..whole]),
        "next_offset": next_offset,
        "running": r.running,
        "truncated": r.truncated,
    })))
}

/// Live events for the dashboard: what `Watch` sends the token (tasks,
/// agents, frameworks), and an `overview` at most once a second when
/// something happened.
async fn events(State(h): State<MasterHandle>, headers: HeaderMap) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering;
    let watch = h.watch(grpc(&headers, v1::WatchRequest { framework_id: String::new(), from: None })).await?;
    let mut watch = watch.into_inner();
    if h.event_streams.fetch_add(1, Ordering::AcqRel) >= MAX_EVENT_STREAMS {
        h.event_streams.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} dashboards are following this master; close some and reload"),
        ));
    }
    let open = StreamSlot(h.event_streams.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(EVENTS_BUFFER);
    tokio::spawn(async move {
        let _open = open;
        let mut dirty = true;
        let mut tick = tokio::time::interval(OVERVIEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(Ok(ev)) => {
                        dirty = true;
                        let Some(e) = sse_of(&ev) else { continue };
                        // A browser that does not keep up is dropped; it reconnects.
                        if tx.try_send(e).is_err() {
                            break;
                        }
                    }
                    Some(Err(s)) => {
                        let _ = tx.send(Event::default().event("error").data(s.message())).await;
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if dirty {
                        dirty = false;
                        let Ok(Json(o)) = overview_json(&h, &headers).await else { break };
                        if tx.try_send(Event::default().event("overview").data(o.to_string())).is_err() {
                            break;
                        }
                    }
                }
                _ = tx.closed() => break,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn sse_of(ev: &v1::WatchEvent) -> Option<Event> {
    use v1::watch_event::Event as E;
    let (name, data) = match ev.event.as_ref()? {
        E::Task(s) => (
            "task",
            json!({
                "task_id": s.task_id, "state": state_name(s.state), "framework_id": s.framework_id, "role": ev.role,
                "agent_id": s.agent_id, "reason": s.reason, "message": s.message, "seq": ev.seq,
            }),
        ),
        E::AgentAdded(a) => ("agent", json!({ "agent_id": a.agent_id, "change": "added", "seq": ev.seq })),
        E::AgentRemoved(id) => ("agent", json!({ "agent_id": id, "change": "removed", "seq": ev.seq })),
        E::FrameworkAdded(f) => {
            ("framework", json!({ "framework_id": f.framework_id, "change": "added", "seq": ev.seq }))
        }
        E::FrameworkRemoved(id) => ("framework", json!({ "framework_id": id, "change": "removed", "seq": ev.seq })),
    };
    Some(Event::default().event(name).data(data.to_string()))
}

/// One open event stream, counted while it lives.
struct StreamSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
