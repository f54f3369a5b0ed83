//! The params of conversation records, shared by the kinds that read them (fix-json, tokenize,
//! eval): the field-name overrides and [`chat_schema`], which reads them with `schema`.

use crate::dataset::chat::{ChatFields, Schema};
use crate::params::{Default, ParamSpec, ParamType, Params};

/// The record field holding the messages.
pub(super) const MESSAGES_FIELD: ParamSpec = ParamSpec {
    name: "messages_field",
    ty: ParamType::Str,
    default: Default::Null,
    doc: "conversations: record field holding the messages (default `messages`, sharegpt `conversations`)",
};
/// Each message's role field.
pub(super) const ROLE_FIELD: ParamSpec = ParamSpec {
    name: "role_field",
    ty: ParamType::Str,
    default: Default::Null,
    doc: "conversations: message field holding the role (default `role`, sharegpt `from`)",
};
/// Each message's text field.
pub(super) const CONTENT_FIELD: ParamSpec = ParamSpec {
    name: "content_field",
    ty: ParamType::Str,
    default: Default::Null,
    doc: "conversations: message field holding the text (default `content`, sharegpt `value`)",
};

/// The conversation schema and field names of `params` (`None` for alpaca).
pub(super) fn chat_schema(params: &Params) -> Option<(Schema, ChatFields)> {
    let schema = Schema::parse(params.str("schema").unwrap_or("alpaca"))?;
    let mut fields = schema.default_fields()?;
    for (slot, name) in
        [(&mut fields.messages, "messages_field"), (&mut fields.role, "role_field"), (&mut fields.content, "content_field")]
    {
        if let Some(v) = params.str(name) {
            *slot = v.to_string();
        }
    }
    Some((schema, fields))
}
