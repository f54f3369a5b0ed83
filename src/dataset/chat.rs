//! Conversation records: the `messages` (OpenAI) and `sharegpt` schemas, read from one record's
//! JSON object into [`Message`]s with every problem named by its field path.
//!
//! | schema | list field | role field | content field | roles |
//! |---|---|---|---|---|
//! | `messages` | `messages` | `role` | `content` | `system`, `user`, `assistant`, `tool` |
//! | `sharegpt` | `conversations` | `from` | `value` | `system`, `human` (user), `gpt` (assistant) |
//!
//! The field names can be overridden ([`ChatFields`]); the roles cannot. A conversation must
//! have at least one message, every message an object with a known role and string content,
//! and the last message must be the assistant's (the turn a fine-tune learns from). The
//! `alpaca` schema (instruction / input / output) is the records of [`super::records`].

use serde_json::{Map, Value as Json};

use crate::tokenizer::template::Message;

/// How a record holds its training text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// instruction / input / output fields.
    Alpaca,
    /// OpenAI-style `{"messages": [{"role", "content"}]}`.
    Messages,
    /// ShareGPT `{"conversations": [{"from", "value"}]}`.
    ShareGpt,
}

/// The `schema` param's choices, in [`Schema::parse`]'s spelling.
pub const SCHEMAS: &[&str] = &["alpaca", "messages", "sharegpt"];

impl Schema {
    /// The schema named by a `schema` param (`None` for an unknown name).
    pub fn parse(name: &str) -> Option<Schema> {
        match name {
            "alpaca" => Some(Schema::Alpaca),
            "messages" => Some(Schema::Messages),
            "sharegpt" => Some(Schema::ShareGpt),
            _ => None,
        }
    }

    /// The default field names of a conversation schema (`None` for alpaca).
    pub fn default_fields(self) -> Option<ChatFields> {
        let f = |m: &str, r: &str, c: &str| ChatFields { messages: m.into(), role: r.into(), content: c.into() };
        match self {
            Schema::Alpaca => None,
            Schema::Messages => Some(f("messages", "role", "content")),
            Schema::ShareGpt => Some(f("conversations", "from", "value")),
        }
    }

    /// The role a message's role text stands for, or `None` when the schema has no such role.
    pub fn role(self, text: &str) -> Option<&'static str> {
        match (self, text) {
            (Schema::Messages, "system") | (Schema::ShareGpt, "system") => Some("system"),
            (Schema::Messages, "user") | (Schema::ShareGpt, "human") => Some("user"),
            (Schema::Messages, "assistant") | (Schema::ShareGpt, "gpt") => Some("assistant"),
            (Schema::Messages, "tool") => Some("tool"),
            _ => None,
        }
    }

    /// The role texts the schema knows, for messages.
    pub fn roles(self) -> &'static str {
        match self {
            Schema::Alpaca => "",
            Schema::Messages => "system, user, assistant, tool",
            Schema::ShareGpt => "system, human, gpt",
        }
    }
}

/// The field names of a conversation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFields {
    /// The record's field holding the list of messages.
    pub messages: String,
    /// Each message's role field.
    pub role: String,
    /// Each message's text field.
    pub content: String,
}

/// What is wrong with a conversation record; the text names the field path
/// (`messages[2].role`) and is the reason in fix-json's report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatProblem {
    /// The list field is absent.
    #[error("missing field `{field}`")]
    Missing {
        /// The list field.
        field: String,
    },
    /// The list field is not a list.
    #[error("field `{field}` must be a list of messages, found {found}")]
    NotAList {
        /// The list field.
        field: String,
        /// Its JSON type.
        found: &'static str,
    },
    /// The list is empty.
    #[error("field `{field}` is an empty conversation")]
    Empty {
        /// The list field.
        field: String,
    },
    /// A message is not an object.
    #[error("`{path}` must be an object with `{role}` and `{content}`, found {found}")]
    NotAnObject {
        /// `messages[i]`.
        path: String,
        /// The role field.
        role: String,
        /// The content field.
        content: String,
        /// Its JSON type.
        found: &'static str,
    },
    /// A message lacks its role or content field.
    #[error("`{path}` is missing")]
    MissingKey {
        /// `messages[i].role`.
        path: String,
    },
    /// A role or content that is not a string.
    #[error("`{path}` must be a string, found {found}")]
    NotAString {
        /// `messages[i].content`.
        path: String,
        /// Its JSON type.
        found: &'static str,
    },
    /// A role the schema does not know.
    #[error("`{path}`: unknown role {role:?} (expected one of {expected})")]
    UnknownRole {
        /// `messages[i].role`.
        path: String,
        /// The role text.
        role: String,
        /// The known role texts.
        expected: &'static str,
    },
    /// The last message is not the assistant's.
    #[error("`{path}`: the conversation ends with a {role} message, not the assistant's (nothing to learn from its end)")]
    NoAssistantEnd {
        /// `messages[i].role` of the last message.
        path: String,
        /// Its role.
        role: String,
    },
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Reads the conversation of one record for training: [`messages`], which must end with the
/// assistant's turn. `schema` must be a conversation schema.
pub fn conversation(obj: &Map<String, Json>, schema: Schema, fields: &ChatFields) -> Result<Vec<Message>, ChatProblem> {
    let out = messages(obj, schema, fields)?;
    let last = out.last().expect("not empty");
    if last.role != "assistant" {
        return Err(ChatProblem::NoAssistantEnd {
            path: format!("{}[{}].{}", fields.messages, out.len() - 1, fields.role),
            role: last.role.clone(),
        });
    }
    Ok(out)
}

/// Reads the messages of one record, in order: a non-empty list whose messages have a known
/// role and string content, ending with any role. `schema` must be a conversation schema.
pub fn messages(obj: &Map<String, Json>, schema: Schema, fields: &ChatFields) -> Result<Vec<Message>, ChatProblem> {
    let field = &fields.messages;
    let list = match obj.get(field) {
        None => return Err(ChatProblem::Missing { field: field.clone() }),
        Some(Json::Array(list)) => list,
        Some(v) => return Err(ChatProblem::NotAList { field: field.clone(), found: type_name(v) }),
    };
    if list.is_empty() {
        return Err(ChatProblem::Empty { field: field.clone() });
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let Json::Object(m) = m else {
            return Err(ChatProblem::NotAnObject {
                path,
                role: fields.role.clone(),
                content: fields.content.clone(),
                found: type_name(m),
            });
        };
        let text = |key: &str| -> Result<&str, ChatProblem> {
            let path = format!("{path}.{key}");
            match m.get(key) {
                None => Err(ChatProblem::MissingKey { path }),
                Some(Json::String(s)) => Ok(s),
                Some(v) => Err(ChatProblem::NotAString { path, found: type_name(v) }),
            }
        };
        let role_text = text(&fields.role)?;
        let role = schema.role(role_text).ok_or_else(|| ChatProblem::UnknownRole {
            path: format!("{path}.{}", fields.role),
            role: role_text.to_string(),
            expected: schema.roles(),
        })?;
        let content = text(&fields.content)?;
        out.push(Message { role: role.into(), content: content.into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Map<String, Json> {
        serde_json::from_str(text).unwrap()
    }

    fn read(schema: Schema, text: &str) -> Result<Vec<(String, String)>, String> {
        let fields = schema.default_fields().unwrap();
        conversation(&obj(text), schema, &fields)
            .map(|ms| ms.into_iter().map(|m| (m.role, m.content)).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn messages_and_sharegpt_read_to_the_same_roles() {
        let m = read(
            Schema::Messages,
            r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        )
        .unwrap();
        let s = read(
            Schema::ShareGpt,
            r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}"#,
        )
        .unwrap();
        assert_eq!(m, s);
        assert_eq!(m[1], ("user".to_string(), "q".to_string()));
    }

    #[test]
    fn every_problem_names_its_field_path() {
        let cases = [
            (r#"{"x": 1}"#, "missing field `messages`"),
            (r#"{"messages": "hi"}"#, "field `messages` must be a list of messages, found a string"),
            (r#"{"messages": []}"#, "field `messages` is an empty conversation"),
            (r#"{"messages": [7]}"#, "`messages[0]` must be an object with `role` and `content`, found a number"),
            (r#"{"messages": [{"role": "user"}]}"#, "`messages[0].content` is missing"),
            (r#"{"messages": [{"role": "user", "content": 5}]}"#, "`messages[0].content` must be a string, found a number"),
            (
                r#"{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}"#,
                "`messages[1].role`: unknown role \"bot\" (expected one of system, user, assistant, tool)",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}"#,
                "`messages[2].role`: the conversation ends with a user message, not the assistant's",
            ),
        ];
        for (text, want) in cases {
            let got = read(Schema::Messages, text).unwrap_err();
            assert!(got.starts_with(want), "{text}: {got}");
        }
        let got = read(Schema::ShareGpt, r#"{"conversations": [{"from": "user", "value": "q"}]}"#).unwrap_err();
        assert!(got.contains("`conversations[0].from`: unknown role \"user\" (expected one of system, human, gpt)"), "{got}");
    }

    #[test]
    fn field_names_can_be_overridden() {
        let fields = ChatFields { messages: "chat".into(), role: "speaker".into(), content: "text".into() };
        let got = conversation(&obj(r#"{"chat": [{"speaker": "gpt", "text": "hi"}]}"#), Schema::ShareGpt, &fields).unwrap();
        assert_eq!((got[0].role.as_str(), got[0].content.as_str()), ("assistant", "hi"));
    }
}
