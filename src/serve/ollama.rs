//! The Ollama API, translated to the model's llama-server (its OpenAI API) and back.
//!
//! - `/api/chat` → `/v1/chat/completions`; `/api/generate` → the same with the prompt as one user
//!   turn (and the `system` field, else the export's SYSTEM, before it), or `/v1/completions`
//!   when `raw` is true.
//! - `options` map to the sampling fields llama-server takes (`num_predict` → `max_tokens`,
//!   `temperature`, `top_k`, `top_p`, `min_p`, `seed`, `stop`, `repeat_penalty`, ...); `format:
//!   "json"` or a JSON schema → `response_format`.
//! - Streaming (the default, as in Ollama): one JSON object a line (`application/x-ndjson`), the
//!   last with `done: true`, `done_reason` and the counts and durations (ns) from llama-server's
//!   timings. A stream the child breaks off ends with an `{"error": ...}` line.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::http::{channel_body, json_body, json_response, required_array, required_str, ApiError, Body, Served, State};
use super::rfc3339;

/// The Ollama API version reported by `/api/version` (the API this front end follows).
const VERSION: &str = "0.12.0";

/// `GET /api/version`.
pub fn version() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"version": VERSION}))
}

fn details(m: &Served) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.info.arch,
        "families": [m.info.arch],
        "parameter_size": m.info.parameter_size(),
        "quantization_level": m.info.file_type,
    })
}

/// `GET /api/tags`: entries carry both `name` and `model`.
pub fn tags(state: &State) -> Response<Body> {
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({"name": m.info.name, "model": m.info.name, "modified_at": rfc3339(m.info.modified),
                   "size": m.info.size, "digest": m.info.digest, "details": details(m)})
        })
        .collect();
    json_response(StatusCode::OK, &json!({"models": models}))
}

/// `GET /api/ps`: every model whose child runs (all are loaded at start, none expires).
pub fn ps(state: &State) -> Response<Body> {
    let expires = SystemTime::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
    let models: Vec<Value> = state
        .models
        .iter()
        .filter(|m| m.child.exit_status().is_none())
        .map(|m| {
            json!({"name": m.info.name, "model": m.info.name, "size": m.info.size, "digest": m.info.digest,
                   "details": details(m), "expires_at": rfc3339(expires), "size_vram": 0,
                   "context_length": m.info.context_length})
        })
        .collect();
    json_response(StatusCode::OK, &json!({"models": models}))
}

/// `POST /api/show` (`model`, or `name` as older clients send).
pub async fn show(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = json_body(req).await?;
    let name = match (body.get("model"), body.get("name")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
        _ => required_str(&body, "model")?.to_string(),
    };
    let m = state.model(&name)?;
    let arch = &m.info.arch;
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(arch));
    info.insert("general.parameter_count".into(), json!(m.info.parameters));
    info.insert("general.file_type".into(), json!(m.info.file_type));
    if let Some(c) = m.info.context_length {
        info.insert(format!("{arch}.context_length"), json!(c));
    }
    let mut v = json!({
        "license": "",
        "modelfile": m.info.modelfile.clone().unwrap_or_default(),
        "parameters": m.info.parameters_text(),
        "template": m.info.template().unwrap_or_default(),
        "details": details(m),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": rfc3339(m.info.modified),
    });
    if let Some(s) = &m.info.system {
        v["system"] = json!(s);
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// Ollama `options` (and `format`) as llama-server's OpenAI request fields.
fn sampling(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    match body.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                let to = match k.as_str() {
                    "num_predict" => {
                        // Ollama: -1 is "no limit", -2 "fill the context".
                        if v.as_i64().is_some_and(|n| n < 0) {
                            continue;
                        }
                        "max_tokens"
                    }
                    "temperature" | "top_k" | "top_p" | "min_p" | "typical_p" | "seed" | "stop" | "repeat_penalty"
                    | "repeat_last_n" | "presence_penalty" | "frequency_penalty" | "mirostat" | "mirostat_tau"
                    | "mirostat_eta" => k.as_str(),
                    // Load-time settings (num_ctx, num_gpu, num_thread, ...) belong to the child's
                    // start (`pipe serve --ctx-size`), as in a Modelfile.
                    _ => continue,
                };
                out.insert(to.into(), v.clone());
            }
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!("field `options` must be an object, not {}", super::http::type_name(v))))
        }
    }
    match body.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert("response_format".into(), json!({"type": "json_schema", "json_schema": {"schema": schema}}));
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!("field `format` must be \"json\" or a JSON schema, not {v}")));
        }
    }
    Ok(())
}

fn stream_flag(body: &Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::bad_request(format!("field `stream` must be a boolean, not {}", super::http::type_name(v)))),
    }
}

/// Ollama's chat messages as OpenAI's: `role` and `content` (images and tool calls are not
/// served: the models pipe exports read text).
fn messages(msgs: &[Value]) -> Result<Vec<Value>, ApiError> {
    super::openai::check_messages(msgs)?;
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.get("content") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "field `messages[{i}].content` must be a string, not {}",
                        super::http::type_name(v)
                    )))
                }
            };
            Ok(json!({"role": m["role"], "content": content}))
        })
        .collect()
}

/// Which Ollama endpoint a translation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `/api/chat`: `message: {role, content}`.
    Chat,
    /// `/api/generate`: `response`.
    Generate,
}

/// `POST /api/chat`.
pub async fn chat(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let t0 = Instant::now();
    let body = json_body(req).await?;
    let name = required_str(&body, "model")?.to_string();
    let msgs = messages(required_array(&body, "messages")?)?;
    let stream = stream_flag(&body)?;
    let m = state.model(&name)?;
    if msgs.is_empty() {
        // Ollama's "load the model" request.
        return Ok(json_response(StatusCode::OK, &loaded(&name, Shape::Chat)));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(m.info.name));
    out.insert("messages".into(), Value::Array(msgs));
    if let Some(system) = &m.info.system {
        super::openai::with_system(&mut out, system);
    }
    sampling(&body, &mut out)?;
    translate(state, m, &name, "/v1/chat/completions", out, stream, Shape::Chat, t0).await
}

/// `POST /api/generate`.
pub async fn generate(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let t0 = Instant::now();
    let body = json_body(req).await?;
    let name = required_str(&body, "model")?.to_string();
    let prompt = match body.get("prompt") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(ApiError::bad_request(format!("field `prompt` must be a string, not {}", super::http::type_name(v))))
        }
    };
    let raw = matches!(body.get("raw"), Some(Value::Bool(true)));
    let stream = stream_flag(&body)?;
    let m = state.model(&name)?;
    if prompt.is_empty() {
        return Ok(json_response(StatusCode::OK, &loaded(&name, Shape::Generate)));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(m.info.name));
    let path = if raw {
        out.insert("prompt".into(), json!(prompt));
        "/v1/completions"
    } else {
        let system = match body.get("system") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => m.info.system.clone(),
        };
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(json!({"role": "system", "content": s}));
        }
        msgs.push(json!({"role": "user", "content": prompt}));
        out.insert("messages".into(), Value::Array(msgs));
        "/v1/chat/completions"
    };
    sampling(&body, &mut out)?;
    translate(state, m, &name, path, out, stream, Shape::Generate, t0).await
}

/// The answer to a request with nothing to generate (Ollama loads the model and says so).
fn loaded(name: &str, shape: Shape) -> Value {
    let mut v = json!({"model": name, "created_at": rfc3339(SystemTime::now())});
    match shape {
        Shape::Chat => v["message"] = json!({"role": "assistant", "content": ""}),
        Shape::Generate => v["response"] = json!(""),
    }
    v["done"] = json!(true);
    v["done_reason"] = json!("load");
    v
}

/// One piece of the answer as an Ollama line (not the last).
fn piece(name: &str, shape: Shape, text: &str) -> Value {
    let mut v = json!({"model": name, "created_at": rfc3339(SystemTime::now())});
    match shape {
        Shape::Chat => v["message"] = json!({"role": "assistant", "content": text}),
        Shape::Generate => v["response"] = json!(text),
    }
    v["done"] = json!(false);
    v
}

/// What the last line reports.
#[derive(Default)]
struct Totals {
    finish_reason: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
}

impl Totals {
    /// Reads `usage`, `timings` and `finish_reason` from a llama-server answer or chunk.
    fn take(&mut self, v: &Value) {
        if let Some(r) = v["choices"][0]["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_string());
        }
        if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
            self.prompt_tokens = Some(n);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.completion_tokens = Some(n);
        }
        let t = &v["timings"];
        if t.is_object() {
            self.prompt_ms = t["prompt_ms"].as_f64();
            self.predicted_ms = t["predicted_ms"].as_f64();
            if self.prompt_tokens.is_none() {
                self.prompt_tokens = Some(t["prompt_n"].as_u64().unwrap_or(0) + t["cache_n"].as_u64().unwrap_or(0));
            }
            if self.completion_tokens.is_none() {
                self.completion_tokens = t["predicted_n"].as_u64();
            }
        }
    }

    /// The last line: `done`, `done_reason`, counts and durations in nanoseconds.
    fn last(&self, name: &str, shape: Shape, text: &str, t0: Instant) -> Value {
        let mut v = piece(name, shape, text);
        let ns = |ms: Option<f64>| (ms.unwrap_or(0.0) * 1e6).round() as u64;
        v["done"] = json!(true);
        // OpenAI's `length` is Ollama's too; everything else ended at a stop.
        v["done_reason"] = json!(if self.finish_reason.as_deref() == Some("length") { "length" } else { "stop" });
        v["total_duration"] = json!(t0.elapsed().as_nanos() as u64);
        v["load_duration"] = json!(0);
        v["prompt_eval_count"] = json!(self.prompt_tokens.unwrap_or(0));
        v["prompt_eval_duration"] = json!(ns(self.prompt_ms));
        v["eval_count"] = json!(self.completion_tokens.unwrap_or(0));
        v["eval_duration"] = json!(ns(self.predicted_ms));
        v
    }
}

/// The text of a llama-server answer (`whole`) or stream chunk.
fn text_of(v: &Value, whole: bool) -> &str {
    let c = &v["choices"][0];
    let t = if whole { &c["message"]["content"] } else { &c["delta"]["content"] };
    t.as_str().or_else(|| c["text"].as_str()).unwrap_or("")
}

/// The child's error answer in Ollama's shape, with its status.
async fn upstream_error(resp: Response<Incoming>) -> ApiError {
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("llama-server answered {status}: {}", String::from_utf8_lossy(&bytes)));
    ApiError { status, message, code: "upstream_error" }
}

#[allow(clippy::too_many_arguments)]
async fn translate(
    state: &State,
    m: &Served,
    name: &str,
    path: &str,
    mut out: Map<String, Value>,
    stream: bool,
    shape: Shape,
    t0: Instant,
) -> Result<Response<Body>, ApiError> {
    out.insert("stream".into(), json!(stream));
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let resp = state.forward(m, path, &Value::Object(out)).await?;
    if !resp.status().is_success() {
        return Err(upstream_error(resp).await);
    }
    if !stream {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: format!("reading llama-server's answer: {e}"),
                code: "upstream_error",
            })?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError {
            status: StatusCode::BAD_GATEWAY,
            message: format!("llama-server's answer is not JSON: {e}"),
            code: "upstream_error",
        })?;
        let mut totals = Totals::default();
        totals.take(&v);
        return Ok(json_response(StatusCode::OK, &totals.last(name, shape, text_of(&v, true), t0)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let name = name.to_string();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        let send = |v: Value| {
            let mut line = serde_json::to_vec(&v).unwrap_or_default();
            line.push(b'\n');
            tx.send(Bytes::from(line))
        };
        let mut totals = Totals::default();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    let _ = send(json!({"error": format!("llama-server broke off the answer: {e}")})).await;
                    return;
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            // Server-sent events: `data: {json}` lines, blank lines between.
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    let _ = send(totals.last(&name, shape, "", t0)).await;
                    return;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                if !v["error"].is_null() {
                    let msg = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v["error"].to_string());
                    let _ = send(json!({"error": msg})).await;
                    return;
                }
                totals.take(&v);
                let text = text_of(&v, false);
                if !text.is_empty() && send(piece(&name, shape, text)).await.is_err() {
                    // The client went away.
                    return;
                }
            }
        }
        let _ = send(json!({"error": "llama-server ended the answer early (no [DONE])"})).await;
    });
    let mut r = Response::new(channel_body(rx));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_llama_server_fields() {
        let body = json!({"options": {"temperature": 0, "num_predict": 16, "num_ctx": 4096, "seed": 7, "stop": ["\n"]},
                          "format": "json"});
        let mut out = Map::new();
        sampling(body.as_object().unwrap(), &mut out).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"temperature": 0, "max_tokens": 16, "seed": 7, "stop": ["\n"], "response_format": {"type": "json_object"}})
        );
        let mut out = Map::new();
        sampling(json!({"options": {"num_predict": -1}}).as_object().unwrap(), &mut out).unwrap();
        assert!(out.is_empty());
        let e = sampling(json!({"options": 3}).as_object().unwrap(), &mut Map::new()).unwrap_err();
        assert_eq!(e.message, "field `options` must be an object, not a number");
    }

    #[test]
    fn the_last_line_carries_counts_and_durations() {
        let mut t = Totals::default();
        t.take(&json!({"choices": [{"finish_reason": "length", "delta": {}}],
                       "timings": {"prompt_n": 5, "cache_n": 2, "prompt_ms": 1.5, "predicted_n": 8, "predicted_ms": 20.25}}));
        let v = t.last("m", Shape::Chat, "", Instant::now());
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "length");
        assert_eq!(v["prompt_eval_count"], 7);
        assert_eq!(v["prompt_eval_duration"], 1_500_000);
        assert_eq!(v["eval_count"], 8);
        assert_eq!(v["eval_duration"], 20_250_000);
        assert_eq!(v["message"], json!({"role": "assistant", "content": ""}));
        // Usage, where given, counts the whole prompt.
        t.take(&json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 8}}));
        assert_eq!(t.last("m", Shape::Generate, "", Instant::now())["prompt_eval_count"], 9);
    }

    #[test]
    fn messages_keep_role_and_text() {
        let m = messages(&[json!({"role": "user", "content": "hi", "images": []})]).unwrap();
        assert_eq!(m, vec![json!({"role": "user", "content": "hi"})]);
        let e = messages(&[json!({"role": "user", "content": 3})]).unwrap_err();
        assert_eq!(e.message, "field `messages[0].content` must be a string, not a number");
    }
}
