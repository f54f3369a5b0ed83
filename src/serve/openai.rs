//! The OpenAI API: `/v1/models` from the catalogue; `/v1/chat/completions` and
//! `/v1/completions` checked (a JSON object, a known `model`, `messages` or `prompt` present),
//! then passed to the model's llama-server, whose answer (SSE when `stream` is true) comes back
//! unchanged. Beside them, llama.cpp's `/apply-template` (with a `model` field) shows the prompt
//! a chat is rendered to.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::http::{json_body, json_response, pass_through, required_array, required_str, ApiError, Body, State};

/// `GET /v1/models`.
pub fn models(state: &State) -> Response<Body> {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            let created = m.info.modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            json!({"id": m.info.name, "object": "model", "created": created, "owned_by": "pipe"})
        })
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `POST /v1/chat/completions`.
pub async fn chat(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    chat_to(state, req, "/v1/chat/completions").await
}

/// A request with `model` and `messages` (the export's system prompt added where the chat has
/// none), passed to `path` of the model's llama-server.
async fn chat_to(state: &State, req: Request<Incoming>, path: &str) -> Result<Response<Body>, ApiError> {
    let mut body = json_body(req).await?;
    let name = required_str(&body, "model")?.to_string();
    check_messages(required_array(&body, "messages")?)?;
    let m = state.model(&name)?;
    if let Some(system) = &m.info.system {
        with_system(&mut body, system);
    }
    Ok(pass_through(state.forward(m, path, &Value::Object(body)).await?))
}

/// `POST /v1/completions`.
pub async fn completions(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = json_body(req).await?;
    let name = required_str(&body, "model")?.to_string();
    match body.get("prompt") {
        Some(Value::String(_)) | Some(Value::Array(_)) => {}
        None | Some(Value::Null) => return Err(ApiError::bad_request("missing field `prompt`")),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "field `prompt` must be a string or an array, not {}",
                super::http::type_name(v)
            )))
        }
    }
    let m = state.model(&name)?;
    Ok(pass_through(state.forward(m, "/v1/completions", &Value::Object(body)).await?))
}

/// `POST /apply-template` (llama.cpp's endpoint, with a `model` field): the prompt the model's
/// chat template renders from `messages`, exactly as a chat request would be rendered.
pub async fn apply_template(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    chat_to(state, req, "/apply-template").await
}

/// Each message is an object with a string `role`; 400 naming the first that is not.
pub fn check_messages(messages: &[Value]) -> Result<(), ApiError> {
    for (i, msg) in messages.iter().enumerate() {
        let Some(o) = msg.as_object() else {
            return Err(ApiError::bad_request(format!("`messages[{i}]` must be an object, not {}", super::http::type_name(msg))));
        };
        match o.get("role") {
            Some(Value::String(_)) => {}
            None => return Err(ApiError::bad_request(format!("missing field `messages[{i}].role`"))),
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "field `messages[{i}].role` must be a string, not {}",
                    super::http::type_name(v)
                )))
            }
        }
    }
    Ok(())
}

/// Puts the export's system prompt first when the chat has no system message (as Ollama applies
/// a Modelfile's SYSTEM).
pub fn with_system(body: &mut Map<String, Value>, system: &str) {
    if let Some(Value::Array(msgs)) = body.get_mut("messages") {
        if !msgs.iter().any(|m| m["role"] == "system") {
            msgs.insert(0, json!({"role": "system", "content": system}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_without_a_role_are_named() {
        assert!(check_messages(&[json!({"role": "user", "content": "hi"})]).is_ok());
        let e = check_messages(&[json!({"role": "user"}), json!({"content": "x"})]).unwrap_err();
        assert_eq!(e.message, "missing field `messages[1].role`");
        let e = check_messages(&[json!("hi")]).unwrap_err();
        assert_eq!(e.message, "`messages[0]` must be an object, not a string");
    }

    #[test]
    fn the_system_prompt_goes_first_unless_the_chat_has_one() {
        let mut b = json!({"messages": [{"role": "user", "content": "q"}]}).as_object().unwrap().clone();
        with_system(&mut b, "You are a fortune teller.");
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "You are a fortune teller."}));
        let mut b = json!({"messages": [{"role": "system", "content": "mine"}]}).as_object().unwrap().clone();
        with_system(&mut b, "theirs");
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
    }
}
