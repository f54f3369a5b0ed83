//! The subset of Go's `text/template` that the generated TEMPLATEs use, evaluated with Ollama's
//! values: text, `{{ .Field }}`, `{{ "string" }}`, `{{ if PIPE }}`/`{{ else if PIPE }}`/
//! `{{ else }}`/`{{ end }}` with `PIPE` a field or `eq .Field "string"`, `{{ range .Messages }}`,
//! and the `{{-`/`-}}` trim markers.
//!
//! A template outside the subset, or a field the value at hand does not have, is a
//! [`GoTemplateError`].

use serde::Serialize;

/// One chat message, as the probes and the Go evaluator see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A template outside the supported subset, or a field the value at hand does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GoTemplateError(String);

impl GoTemplateError {
    fn new(message: String) -> GoTemplateError {
        GoTemplateError(message)
    }
}

impl From<&str> for GoTemplateError {
    fn from(message: &str) -> GoTemplateError {
        GoTemplateError(message.to_string())
    }
}

/// A parsed template node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Literal text.
    Text(String),
    /// `{{ .Name }}` or `{{ "literal" }}`.
    Value(Operand),
    /// `{{ if }}` with its `else if` branches and `else`.
    If {
        /// `(condition, body)` for `if` and each `else if`.
        branches: Vec<(Cond, Vec<Node>)>,
        /// The `else` body.
        otherwise: Vec<Node>,
    },
    /// `{{ range .Field }}body{{ end }}`.
    Range {
        /// The list field.
        field: String,
        /// The body, with dot set to each element.
        body: Vec<Node>,
    },
}

/// A field of dot or a string constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `.Name`.
    Field(String),
    /// `"text"`.
    Str(String),
}

/// An `if` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Non-empty value.
    Truthy(Operand),
    /// `eq a b`.
    Eq(Operand, Operand),
}

/// Go template text for `s` as literal output: `{{` cannot appear in template text, so it is
/// written as the action `{{ "{{" }}`.
pub fn literal(s: &str) -> String {
    s.replace("{{", "{{ \"{{\" }}")
}

enum Tok {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Result<Vec<Tok>, GoTemplateError> {
    let mut toks = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let (trim_prev, after) = match after.strip_prefix("- ") {
            Some(a) => (true, a),
            None => (false, after),
        };
        if trim_prev {
            text = text.trim_end();
        }
        if !text.is_empty() {
            toks.push(Tok::Text(text.to_string()));
        }
        let end = find_action_end(after).ok_or("unclosed action")?;
        let mut action = &after[..end];
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            action = a;
            trim_next = true;
        }
        toks.push(Tok::Action(action.trim().to_string()));
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        toks.push(Tok::Text(text.to_string()));
    }
    Ok(toks)
}

/// The `}}` closing an action, skipping string literals.
fn find_action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'}' if !in_str && b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn operand(s: &str) -> Result<Operand, GoTemplateError> {
    if let Some(name) = s.strip_prefix('.') {
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(Operand::Field(name.to_string()));
        }
    }
    if s.starts_with('"') && s.ends_with('"') && s.len() >= 2 {
        return serde_json::from_str::<String>(s)
            .map(Operand::Str)
            .map_err(|e| GoTemplateError::new(format!("bad string {s}: {e}")));
    }
    Err(GoTemplateError::new(format!("unsupported operand {s:?}")))
}

/// Splits `eq .Role "user"` into words, keeping string literals whole.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for c in s.chars() {
        if in_str {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            cur.push(c);
            in_str = true;
        } else if c.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn cond(s: &str) -> Result<Cond, GoTemplateError> {
    let w = words(s);
    match w.as_slice() {
        [one] => Ok(Cond::Truthy(operand(one)?)),
        [eq, a, b] if eq == "eq" => Ok(Cond::Eq(operand(a)?, operand(b)?)),
        _ => Err(GoTemplateError::new(format!("unsupported condition {s:?}"))),
    }
}

/// Parses a template of the supported subset.
pub fn parse(src: &str) -> Result<Vec<Node>, GoTemplateError> {
    let toks = tokenize(src)?;
    let mut pos = 0;
    let (nodes, end) = parse_list(&toks, &mut pos)?;
    match end {
        None => Ok(nodes),
        Some(e) => Err(GoTemplateError::new(format!("unexpected {{{{ {e} }}}}"))),
    }
}

/// Parses nodes until `end`, `else` or `else if` (returned) or the end of input (`None`).
fn parse_list(toks: &[Tok], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), GoTemplateError> {
    let mut nodes = Vec::new();
    while let Some(tok) = toks.get(*pos) {
        *pos += 1;
        match tok {
            Tok::Text(t) => nodes.push(Node::Text(t.clone())),
            Tok::Action(a) if a == "end" || a == "else" || a.starts_with("else if ") => return Ok((nodes, Some(a.clone()))),
            Tok::Action(a) if a.starts_with("if ") => {
                let mut branches = Vec::new();
                let mut c = cond(&a[3..])?;
                let otherwise = loop {
                    let (body, end) = parse_list(toks, pos)?;
                    branches.push((c, body));
                    match end.as_deref() {
                        Some("end") => break Vec::new(),
                        Some("else") => {
                            let (body, end) = parse_list(toks, pos)?;
                            if end.as_deref() != Some("end") {
                                return Err("{{ else }} without {{ end }}".into());
                            }
                            break body;
                        }
                        Some(e) if e.starts_with("else if ") => c = cond(&e[8..])?,
                        _ => return Err("{{ if }} without {{ end }}".into()),
                    }
                };
                nodes.push(Node::If { branches, otherwise });
            }
            Tok::Action(a) if a.starts_with("range ") => {
                let Operand::Field(field) = operand(a[6..].trim())? else { return Err("range over a constant".into()) };
                let (body, end) = parse_list(toks, pos)?;
                if end.as_deref() != Some("end") {
                    return Err("{{ range }} without {{ end }}".into());
                }
                nodes.push(Node::Range { field, body });
            }
            Tok::Action(a) => nodes.push(Node::Value(operand(a)?)),
        }
    }
    Ok((nodes, None))
}

/// Dot: the top-level values or one message.
enum Dot<'a> {
    Top { system: &'a str, messages: &'a [ChatMessage] },
    Message(&'a ChatMessage),
}

fn field<'a>(dot: &Dot<'a>, name: &str) -> Result<&'a str, GoTemplateError> {
    match (dot, name) {
        (Dot::Top { system, .. }, "System") => Ok(system),
        (Dot::Message(m), "Role") => Ok(&m.role),
        (Dot::Message(m), "Content") => Ok(&m.content),
        _ => Err(GoTemplateError::new(format!("no field .{name} here"))),
    }
}

fn value<'a>(dot: &Dot<'a>, op: &'a Operand) -> Result<&'a str, GoTemplateError> {
    match op {
        Operand::Field(name) => field(dot, name),
        Operand::Str(s) => Ok(s),
    }
}

fn truth(dot: &Dot, c: &Cond) -> Result<bool, GoTemplateError> {
    match c {
        Cond::Truthy(Operand::Field(name)) if name == "Messages" => match dot {
            Dot::Top { messages, .. } => Ok(!messages.is_empty()),
            Dot::Message(_) => Err("no field .Messages here".into()),
        },
        Cond::Truthy(op) => Ok(!value(dot, op)?.is_empty()),
        Cond::Eq(a, b) => Ok(value(dot, a)? == value(dot, b)?),
    }
}

fn eval(nodes: &[Node], dot: &Dot, out: &mut String) -> Result<(), GoTemplateError> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Value(op) => out.push_str(value(dot, op)?),
            Node::If { branches, otherwise } => {
                let mut taken = false;
                for (c, body) in branches {
                    if truth(dot, c)? {
                        eval(body, dot, out)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    eval(otherwise, dot, out)?;
                }
            }
            Node::Range { field, body } => {
                let Dot::Top { messages, .. } = dot else { return Err("range inside range".into()) };
                if field != "Messages" {
                    return Err(GoTemplateError::new(format!("cannot range over .{field}")));
                }
                for m in messages.iter() {
                    eval(body, &Dot::Message(m), out)?;
                }
            }
        }
    }
    Ok(())
}

/// Renders `nodes` for a chat the way Ollama's `Template.Execute` feeds a `.Messages`
/// template: `.System` is every system message joined by a blank line, and `.Messages` the
/// messages with consecutive ones of the same role merged (`collate`).
pub fn render_ollama(nodes: &[Node], messages: &[ChatMessage]) -> Result<String, GoTemplateError> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let system = system.join("\n\n");
    let mut collated: Vec<ChatMessage> = Vec::new();
    for m in messages {
        match collated.last_mut() {
            Some(last) if last.role == m.role && m.role != "tool" => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
            }
            _ => collated.push(m.clone()),
        }
    }
    let mut out = String::new();
    eval(nodes, &Dot::Top { system: &system, messages: &collated }, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn go_evaluator_follows_go_trim_markers_and_branches() {
        let t =
            parse("a  {{- if .System -}}  [{{ .System }}]  {{- else if eq .System \"\" }}none{{ else }}x{{ end }}\n{{ \"{{\" }}")
                .expect("parse");
        assert_eq!(render_ollama(&t, &[m("system", "S")]).expect("render"), "a[S]\n{{");
        assert_eq!(render_ollama(&t, &[]).expect("render"), "anone\n{{");
        assert!(parse("{{ if .System }}x").is_err());
        assert!(parse("{{ len .Messages }}").is_err());
        // Ollama's collate: system messages joined, consecutive roles merged.
        let t = parse("{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}").expect("parse");
        let out = render_ollama(&t, &[m("system", "a"), m("system", "b"), m("user", "u1"), m("user", "u2")]).expect("render");
        assert_eq!(out, "a\n\nb|system=a\n\nb;user=u1\n\nu2;");
    }
}
