//! The front end: one HTTP/1.1 port (hyper on a tokio runtime), routing to the OpenAI and Ollama
//! handlers, and the client that forwards to the llama-server children.
//!
//! Errors are answered in the calling API's shape: OpenAI's `{"error": {"message", "type",
//! "code"}}` under `/v1`, Ollama's `{"error": "..."}` elsewhere; 400 for a body that is not the
//! JSON the endpoint needs (naming the field, or the line and column of a syntax error), 404 for an
//! unknown model (listing the served ones), 503 for a model whose child has exited.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};

use super::llama_server::LlamaServer;
use super::{ollama, openai, ModelInfo};
use crate::report::{Event, Reporter};

/// Bodies of the front end's responses: whole, or streamed from a child.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 32 << 20;

/// A served model: what it is, and the child that runs it.
pub struct Served {
    /// Catalogue facts.
    pub info: ModelInfo,
    /// Its llama-server.
    pub child: LlamaServer,
}

/// Which API a request came through (it decides the error shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/...`
    OpenAi,
    /// `/api/...`
    Ollama,
}

/// An answer other than success, in the API's error shape.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's machine-readable `code` (`model_not_found`, ...).
    pub code: &'static str,
}

impl ApiError {
    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), code: "invalid_request_error" }
    }

    /// The response for `api`.
    pub fn into_response(self, api: Api) -> Response<Body> {
        let body = match api {
            Api::OpenAi => {
                json!({"error": {"message": self.message, "type": kind_of(self.status), "param": null, "code": self.code}})
            }
            Api::Ollama => json!({"error": self.message}),
        };
        json_response(self.status, &body)
    }
}

fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 405 | 413 => "invalid_request_error",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

/// The shared state of the front end.
pub struct State {
    /// The served models, in the order given.
    pub models: Vec<Served>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// When serving began (Ollama's `expires_at` and `/api/ps`).
    pub started: Instant,
}

impl State {
    /// The state for `models`.
    pub fn new(models: Vec<Served>) -> State {
        // One connection per request: llama-server (cpp-httplib) closes a kept-alive connection
        // after a few requests, and a pooled connection it is closing fails the next request
        // sent on it ("SendRequest"). On loopback a new connection costs about 0.1 ms.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
        State { models, client, started: Instant::now() }
    }

    /// The served names, for messages.
    pub fn names(&self) -> String {
        self.models.iter().map(|m| m.info.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The model a request names: its `name`, or `name:latest` as Ollama clients write it.
    pub fn model(&self, name: &str) -> Result<&Served, ApiError> {
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        self.models.iter().find(|m| m.info.name == name || m.info.name == bare).ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("model `{name}` not found; pipe serves: {}", self.names()),
            code: "model_not_found",
        })
    }

    /// POSTs `body` to `path` of the model's child; 503 when the child has exited or does not
    /// answer.
    pub async fn forward(&self, m: &Served, path: &str, body: &Value) -> Result<Response<Incoming>, ApiError> {
        let unavailable = |why: String| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("model `{}` is not available: {why} (log: {})", m.info.name, m.child.log.display()),
            code: "model_unavailable",
        };
        if let Some(status) = m.child.exit_status() {
            return Err(unavailable(format!("its llama-server exited ({status})")));
        }
        let req = Request::post(format!("{}{path}", m.child.base()))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())))
            .map_err(|e| unavailable(e.to_string()))?;
        match self.client.request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // A child being killed refuses connections a moment before it can be reaped (its
                // threads are still exiting): give it that moment, so the answer says what happened.
                for _ in 0..20 {
                    if let Some(status) = m.child.exit_status() {
                        return Err(unavailable(format!("its llama-server exited ({status})")));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(unavailable(format!("its llama-server did not answer: {e}")))
            }
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A streamed body fed by `rx` (one chunk per message; the stream ends when the sender drops).
pub fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(Frame::data(b)), rx)) });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A child's response passed through: status, content type and body (streamed) as they are.
pub fn pass_through(resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut r = Response::new(body.map_err(std::io::Error::other).boxed());
    *r.status_mut() = parts.status;
    for h in [CONTENT_TYPE, hyper::header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&h) {
            r.headers_mut().insert(h, v.clone());
        }
    }
    r
}

/// Reads a request body as a JSON object: 400 naming the syntax error's line and column, or
/// saying it is not an object; 413 over [`MAX_BODY`].
pub async fn json_body(req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("the request body is over {} MiB", MAX_BODY >> 20),
                code: "invalid_request_error",
            })
        }
        Err(e) => return Err(ApiError::bad_request(format!("reading the request body: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; it must be a JSON object"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ApiError::bad_request(format!("the request body must be a JSON object, not {}", type_name(&other)))),
        Err(e) => Err(ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
    }
}

/// `null`, `a string`, ... for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The string field `field` of `body`: 400 when missing or not a string.
pub fn required_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("missing field `{field}`"))),
        Some(v) => Err(ApiError::bad_request(format!("field `{field}` must be a string, not {}", type_name(v)))),
    }
}

/// The array field `field` of `body`: 400 when missing or not an array.
pub fn required_array<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a Vec<Value>, ApiError> {
    match body.get(field) {
        Some(Value::Array(a)) => Ok(a),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("missing field `{field}`"))),
        Some(v) => Err(ApiError::bad_request(format!("field `{field}` must be an array, not {}", type_name(v)))),
    }
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let api = if path.starts_with("/v1") { Api::OpenAi } else { Api::Ollama };
    let method = req.method().clone();
    let r = match (method.clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "") => {
            // Clients probe this exact text to find an Ollama server.
            let mut r = Response::new(full("Ollama is running"));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(r)
        }
        (Method::GET, "/health") => Ok(json_response(StatusCode::OK, &health(&state))),
        (Method::GET, "/v1/models") => Ok(openai::models(&state)),
        (Method::POST, "/v1/chat/completions") => openai::chat(&state, req).await,
        (Method::POST, "/v1/completions") => openai::completions(&state, req).await,
        (Method::GET, "/api/version") => Ok(ollama::version()),
        (Method::GET, "/api/tags") => Ok(ollama::tags(&state)),
        (Method::GET, "/api/ps") => Ok(ollama::ps(&state)),
        (Method::POST, "/api/show") => ollama::show(&state, req).await,
        (Method::POST, "/api/chat") => ollama::chat(&state, req).await,
        (Method::POST, "/api/generate") => ollama::generate(&state, req).await,
        (Method::POST, "/apply-template") => openai::apply_template(&state, req).await,
        (_, p) if KNOWN.contains(&p) => Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {p}"),
            code: "invalid_request_error",
        }),
        (_, p) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "{p} is not an endpoint of pipe serve (OpenAI: /v1/models, /v1/chat/completions, /v1/completions; Ollama: /api/version, /api/tags, /api/ps, /api/show, /api/chat, /api/generate; llama.cpp: /apply-template)"
            ),
            code: "not_found",
        }),
    };
    Ok(r.unwrap_or_else(|e| e.into_response(api)))
}

const KNOWN: &[&str] = &[
    "",
    "/health",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/chat",
    "/api/generate",
    "/apply-template",
];

/// `/health`: ok while every child runs.
fn health(state: &State) -> Value {
    let models: Map<String, Value> = state
        .models
        .iter()
        .map(|m| {
            (m.info.name.clone(), json!(m.child.exit_status().map(|s| format!("exited ({s})")).unwrap_or_else(|| "ok".into())))
        })
        .collect();
    let ok = models.values().all(|v| v == "ok");
    json!({"status": if ok { "ok" } else { "degraded" }, "models": models})
}

/// Serves on `listener` until `shutdown` resolves; reports children that exit meanwhile.
pub async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    reporter: Arc<Reporter>,
    shutdown: impl std::future::Future<Output = String>,
) -> std::io::Result<String> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let watcher = tokio::spawn(watch_children(state.clone(), reporter));
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            accepted = listener.accept() => {
                let (stream, _peer): (_, SocketAddr) = match accepted {
                    Ok(x) => x,
                    // Out of file descriptors and the like: wait, do not spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| route(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    };
    watcher.abort();
    Ok(reason)
}

/// Reports each child that exits, once.
async fn watch_children(state: Arc<State>, reporter: Arc<Reporter>) {
    let mut reported = vec![false; state.models.len()];
    loop {
        for (i, m) in state.models.iter().enumerate() {
            if reported[i] {
                continue;
            }
            if let Some(status) = m.child.exit_status() {
                reported[i] = true;
                // Let the log readers catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                reporter.emit(Event::ModelExited {
                    model: m.info.name.clone(),
                    status,
                    log: m.child.log.display().to_string(),
                    tail: m.child.tail(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
