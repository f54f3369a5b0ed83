//! Ollama Modelfiles: a Jinja chat template translated into Ollama's Go-template `TEMPLATE`.
//!
//! # What
//!
//! [`Modelfile`] writes the `Modelfile` that `ollama create NAME -f Modelfile` reads next to an
//! exported GGUF: `FROM ./model.gguf`, a `TEMPLATE` that formats a chat the way the model's Jinja
//! chat template does, `PARAMETER stop` for every end-of-turn token, an optional `SYSTEM`, and
//! other `PARAMETER`s. [`modelfile`] is the one-call form.
//!
//! It lives with the export, which writes it next to the GGUF; `gguf/` stays a file-format module
//! that knows nothing of chats, and the prompt formats it translates are
//! [`crate::tokenizer::template`]'s.
//!
//! # How
//!
//! The Jinja template is not compared as text. It is rendered (minijinja, as in
//! [`crate::tokenizer::template::ChatTemplate`]) on probe conversations whose contents are sentinel strings,
//! with and without a system message and with one and two user turns, always with
//! `add_generation_prompt`. Each known [`TemplateFamily`] fixes the markers around user and
//! assistant turns and the generation prompt; the system block (`sys_open`, `sys_close`) and the
//! block printed when there is no system message (a default system prompt, as SmolLM2's, Qwen2's
//! and Llama 3.1's templates have) are read off the probe renderings. The Go template built from
//! them is then rendered by a small evaluator of the Go-template subset it uses ([`super::go_template`]) with
//! Ollama's values (`.System`: the system messages joined; `.Messages`: the conversation) and must
//! give the Jinja rendering of every probe byte for byte; the first family that does is the one.
//!
//! Families: the seed's `User: …\n\nAssistant: …<eos>` ([`crate::tokenizer::template::seed_chat_template`]),
//! ChatML (`<|im_start|>role\n…<|im_end|>\n`), Llama 3 headers (`<|start_header_id|>role…`).
//! A leading BOS the template prints is dropped when the tokenizer adds BOS itself (llama.cpp and
//! Ollama tokenize the prompt with special tokens), and kept as text otherwise.
//!
//! # Limits
//!
//! * The TEMPLATE uses `.Messages` and always ends with the generation prompt; a conversation that
//!   ends with an assistant message (prefill) gets a new assistant turn, not a continuation.
//! * Ollama collates: system messages become one `.System` (joined by a blank line) printed first,
//!   and consecutive messages of one role are merged. Jinja templates that print system messages
//!   in place, or that `.strip()` contents, differ from Ollama on such conversations; the probes
//!   use one leading system message and contents without surrounding whitespace.
//! * Roles other than system, user and assistant (tools) are left out of the TEMPLATE.
//! * Ollama's parser drops characters Go does not call printable (other than tab and newline) and
//!   cannot quote text containing `"""`; such a template, system prompt or stop token is an error.

use minijinja::{context, Environment, ErrorKind};

use super::go_template::{self, ChatMessage};
use crate::gguf::GgufValue;
use crate::tokenizer::gguf::keys;
use crate::tokenizer::to_gguf::TokenizerMetadata;

/// Writing a Modelfile failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelfileError {
    /// The chat template failed to compile or to render a probe conversation.
    #[error("the chat template {action} failed: {source}")]
    Jinja {
        /// `"compiling"` or `"rendering the probe conversation ..."`.
        action: String,
        /// The error from minijinja.
        #[source]
        source: minijinja::Error,
    },
    /// The chat template's output matches none of the known families.
    #[error(
        "the chat template is not one pipe can translate to an Ollama TEMPLATE (tried {tried}); \
         for the probe conversation [user {user:?}] it renders {rendered:?}. Pass the TEMPLATE explicitly"
    )]
    UnrecognizedTemplate {
        /// The families tried.
        tried: String,
        /// The probe's user sentinel.
        user: &'static str,
        /// What the template rendered for it (cut to 300 characters).
        rendered: String,
    },
    /// A value cannot be written in a Modelfile so that Ollama reads it back unchanged.
    #[error("{what} cannot be written in a Modelfile: {reason}")]
    Unrepresentable {
        /// `"TEMPLATE"`, `"SYSTEM"`, `"PARAMETER stop"`, `"FROM"`...
        what: String,
        /// Why.
        reason: String,
    },
    /// The GGUF's tokenizer metadata has no `tokenizer.chat_template` to translate.
    #[error(
        "the tokenizer has no chat template (tokenizer.chat_template) to translate into a TEMPLATE; pass the TEMPLATE explicitly"
    )]
    NoChatTemplate,
    /// A parameter name Ollama's parser does not accept.
    #[error("'{name}' is not a valid Modelfile parameter name (letters, digits and '_')")]
    InvalidParameter {
        /// The name.
        name: String,
    },
}

/// A chat format the translation knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateFamily {
    /// The seed's `User: {prompt}\n\nAssistant: {answer}{eos}`.
    Seed,
    /// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` (SmolLM2, Qwen2).
    ChatMl,
    /// Llama 3: `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`.
    Llama3,
}

impl TemplateFamily {
    /// Every family, in the order they are tried.
    pub const ALL: [TemplateFamily; 3] = [TemplateFamily::ChatMl, TemplateFamily::Llama3, TemplateFamily::Seed];

    /// The family's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            TemplateFamily::Seed => "seed",
            TemplateFamily::ChatMl => "ChatML",
            TemplateFamily::Llama3 => "Llama 3",
        }
    }

    /// `(user_open, user_close, assistant_open, assistant_close, generation_prompt)`.
    fn markers(self, eos: &str) -> [String; 5] {
        let s = |x: &str| x.to_string();
        match self {
            TemplateFamily::Seed => [s("User: "), s("\n\n"), s("Assistant: "), s(eos), s("Assistant:")],
            TemplateFamily::ChatMl => [
                s("<|im_start|>user\n"),
                s("<|im_end|>\n"),
                s("<|im_start|>assistant\n"),
                s("<|im_end|>\n"),
                s("<|im_start|>assistant\n"),
            ],
            TemplateFamily::Llama3 => [
                s("<|start_header_id|>user<|end_header_id|>\n\n"),
                s("<|eot_id|>"),
                s("<|start_header_id|>assistant<|end_header_id|>\n\n"),
                s("<|eot_id|>"),
                s("<|start_header_id|>assistant<|end_header_id|>\n\n"),
            ],
        }
    }
}

const SYS: &str = "SYSTEM_7c1f";
const U1: &str = "USER_ONE_7c1f";
const A1: &str = "ASSISTANT_ONE_7c1f";
const U2: &str = "USER_TWO_7c1f";

fn probes() -> Vec<Vec<ChatMessage>> {
    let m = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
    vec![
        vec![m("user", U1)],
        vec![m("system", SYS), m("user", U1)],
        vec![m("user", U1), m("assistant", A1), m("user", U2)],
        vec![m("system", SYS), m("user", U1), m("assistant", A1), m("user", U2)],
    ]
}

/// The result of translating a Jinja chat template.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The family recognized.
    pub family: TemplateFamily,
    /// Ollama's Go template.
    pub template: String,
    /// The default system block the Jinja template prints when there is no system message
    /// (empty if none), already part of [`Self::template`].
    pub default_system_block: String,
}

/// A Jinja template with the special-token texts it renders with.
struct Jinja {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl Jinja {
    fn new(source: &str, bos: &str, eos: &str) -> Result<Jinja, ModelfileError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|source| ModelfileError::Jinja { action: "compiling".into(), source })?;
        Ok(Jinja { env, bos: bos.into(), eos: eos.into() })
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, minijinja::Error> {
        self.env.get_template("chat")?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
    }
}

/// Translates a Jinja chat template into an Ollama Go template (see the module docs).
///
/// `bos`/`eos` are the texts the template sees as `bos_token`/`eos_token`; `add_bos` says whether
/// the tokenizer prepends BOS itself (GGUF `tokenizer.ggml.add_bos_token`), in which case a BOS the
/// template prints first is left out of the Go template.
pub fn translate(chat_template: &str, bos: &str, eos: &str, add_bos: bool) -> Result<Translation, ModelfileError> {
    let jinja = Jinja::new(chat_template, bos, eos)?;
    let mut rendered: Vec<Result<String, minijinja::Error>> = probes()
        .iter()
        .map(|p| {
            jinja.render(p).map(|out| match out.strip_prefix(bos) {
                Some(rest) if add_bos && !bos.is_empty() => rest.to_string(),
                _ => out,
            })
        })
        .collect();
    // Every template must render a lone user message; the other probes may fail (a template
    // without a system role), which only rules families out.
    if rendered[0].is_err() {
        let source = rendered.swap_remove(0).expect_err("checked");
        return Err(ModelfileError::Jinja { action: format!("rendering the probe conversation [user {U1:?}]"), source });
    }
    let first = rendered[0].as_ref().map(String::clone).unwrap_or_default();
    for family in TemplateFamily::ALL {
        if let Some(t) = try_family(family, eos, &rendered) {
            return Ok(t);
        }
    }
    Err(ModelfileError::UnrecognizedTemplate {
        tried: TemplateFamily::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        user: U1,
        rendered: first.chars().take(300).collect(),
    })
}

/// Builds `family`'s Go template from the probe renderings and checks it reproduces all of them.
fn try_family(family: TemplateFamily, eos: &str, rendered: &[Result<String, minijinja::Error>]) -> Option<Translation> {
    let [user_open, user_close, asst_open, asst_close, gen] = family.markers(eos);
    let no_system = rendered[0].as_ref().ok()?;
    let with_system = rendered[1].as_ref().ok()?;
    let first_user = format!("{user_open}{U1}{user_close}{gen}");
    // [user U1]: the default system block, then the user turn and the generation prompt.
    let default_block = no_system.strip_suffix(&first_user)?;
    // [system S, user U1]: sys_open S sys_close, then the same.
    let system_part = with_system.strip_suffix(&first_user)?;
    let (sys_open, sys_close) = system_part.split_once(SYS)?;

    let mut t = String::new();
    t.push_str("{{ if .System }}");
    t.push_str(&go_template::literal(sys_open));
    t.push_str("{{ .System }}");
    t.push_str(&go_template::literal(sys_close));
    if !default_block.is_empty() {
        t.push_str("{{ else }}");
        t.push_str(&go_template::literal(default_block));
    }
    t.push_str("{{ end }}{{ range .Messages }}{{ if eq .Role \"user\" }}");
    t.push_str(&go_template::literal(&user_open));
    t.push_str("{{ .Content }}");
    t.push_str(&go_template::literal(&user_close));
    t.push_str("{{ else if eq .Role \"assistant\" }}");
    t.push_str(&go_template::literal(&asst_open));
    t.push_str("{{ .Content }}");
    t.push_str(&go_template::literal(&asst_close));
    t.push_str("{{ end }}{{ end }}");
    t.push_str(&go_template::literal(&gen));

    let parsed = go_template::parse(&t).ok()?;
    for (probe, want) in probes().iter().zip(rendered) {
        let want = want.as_ref().ok()?;
        if go_template::render_ollama(&parsed, probe).ok()? != *want {
            return None;
        }
    }
    Some(Translation { family, template: t, default_system_block: default_block.to_string() })
}

/// A Modelfile to write next to an exported GGUF.
#[derive(Debug, Clone)]
pub struct Modelfile {
    gguf_file_name: String,
    chat_template: String,
    bos: String,
    eos: String,
    add_bos: bool,
    stop: Vec<String>,
    system: Option<String>,
    template: Option<String>,
    parameters: Vec<(String, String)>,
}

impl Modelfile {
    /// A Modelfile for `gguf_file_name` (relative to the Modelfile's folder) whose TEMPLATE is
    /// translated from the Jinja `chat_template`.
    pub fn new(gguf_file_name: impl Into<String>, chat_template: impl Into<String>) -> Self {
        Modelfile {
            gguf_file_name: gguf_file_name.into(),
            chat_template: chat_template.into(),
            bos: String::new(),
            eos: String::new(),
            add_bos: false,
            stop: Vec::new(),
            system: None,
            template: None,
            parameters: Vec::new(),
        }
    }

    /// A Modelfile for a GGUF with `meta` as its tokenizer metadata: its chat template, BOS and
    /// EOS texts, whether the tokenizer adds BOS, and llama.cpp's end-of-generation tokens as
    /// stops ([`TokenizerMetadata::end_of_generation_tokens`]).
    pub fn for_tokenizer(gguf_file_name: impl Into<String>, meta: &TokenizerMetadata) -> Result<Self, ModelfileError> {
        let template = meta.get(keys::CHAT_TEMPLATE).and_then(GgufValue::as_str).ok_or(ModelfileError::NoChatTemplate)?;
        let text = |key: &str| {
            let id = meta.get(key).and_then(GgufValue::as_u32)?;
            meta.get(keys::TOKENS)?.as_array()?.get(id as usize)?.as_str().map(str::to_string)
        };
        let add_bos = meta.get(keys::ADD_BOS).and_then(GgufValue::as_bool).unwrap_or(false);
        Ok(Modelfile::new(gguf_file_name, template)
            .with_special_tokens(text(keys::BOS_ID).unwrap_or_default(), text(keys::EOS_ID).unwrap_or_default(), add_bos)
            .with_stop_tokens(meta.end_of_generation_tokens()))
    }

    /// The BOS and EOS texts the Jinja template renders `bos_token`/`eos_token` as, and whether
    /// the tokenizer adds BOS itself (GGUF `tokenizer.ggml.add_bos_token`).
    pub fn with_special_tokens(mut self, bos: impl Into<String>, eos: impl Into<String>, add_bos: bool) -> Self {
        self.bos = bos.into();
        self.eos = eos.into();
        self.add_bos = add_bos;
        self
    }

    /// The `PARAMETER stop` values, in order (duplicates are written once).
    pub fn with_stop_tokens(mut self, stop: impl IntoIterator<Item = impl Into<String>>) -> Self {
        for s in stop {
            let s = s.into();
            if !self.stop.contains(&s) {
                self.stop.push(s);
            }
        }
        self
    }

    /// A `SYSTEM` prompt (Ollama uses it when a chat brings none).
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// An explicit Go `TEMPLATE`, written as given instead of translating the chat template.
    pub fn with_template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// Another `PARAMETER name value` (`temperature`, `num_ctx`...).
    pub fn with_parameter(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.push((name.into(), value.into()));
        self
    }

    /// The Modelfile text.
    pub fn render(&self) -> Result<String, ModelfileError> {
        let template = match &self.template {
            Some(t) => t.clone(),
            None => translate(&self.chat_template, &self.bos, &self.eos, self.add_bos)?.template,
        };
        let from = &self.gguf_file_name;
        if from.is_empty() || from.contains(['\n', '\r']) || from.trim() != from {
            return Err(ModelfileError::Unrepresentable {
                what: "FROM".into(),
                reason: format!("the file name {from:?} is empty, spans lines or has surrounding spaces"),
            });
        }
        let from = if from.starts_with(['/', '.', '~']) { from.clone() } else { format!("./{from}") };
        let mut out = format!("FROM {from}\n");
        out.push_str(&format!("TEMPLATE {}\n", quote("TEMPLATE", &template, true)?));
        if let Some(system) = &self.system {
            out.push_str(&format!("SYSTEM {}\n", quote("SYSTEM", system, true)?));
        }
        for s in &self.stop {
            out.push_str(&format!("PARAMETER stop {}\n", quote("PARAMETER stop", s, false)?));
        }
        for (name, value) in &self.parameters {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ModelfileError::InvalidParameter { name: name.clone() });
            }
            out.push_str(&format!("PARAMETER {name} {}\n", quote(&format!("PARAMETER {name}"), value, false)?));
        }
        Ok(out)
    }
}

/// The Modelfile for `gguf_file_name` with a TEMPLATE translated from `chat_template`, a
/// `PARAMETER stop` per stop token, an optional SYSTEM and more `(name, value)` parameters.
///
/// The template sees `bos_token` as empty and `eos_token` as the first stop token; use
/// [`Modelfile`] to set them (and whether the tokenizer adds BOS).
pub fn modelfile(
    gguf_file_name: &str,
    chat_template: &str,
    stop_tokens: &[String],
    system: Option<&str>,
    parameters: &[(&str, &str)],
) -> Result<String, ModelfileError> {
    let eos = stop_tokens.first().cloned().unwrap_or_default();
    let mut m = Modelfile::new(gguf_file_name, chat_template)
        .with_special_tokens("", eos, false)
        .with_stop_tokens(stop_tokens.iter().cloned());
    if let Some(s) = system {
        m = m.with_system(s);
    }
    for (name, value) in parameters {
        m = m.with_parameter(*name, *value);
    }
    m.render()
}

/// Go's `strconv.IsPrint`, near enough: Ollama's Modelfile parser keeps only printable runes
/// (tabs and newlines survive through its quoting). Controls, format characters and spaces
/// other than U+0020 are not printable.
fn ollama_keeps(c: char) -> bool {
    if matches!(c, '\n' | '\t' | '\r' | ' ') {
        return true;
    }
    let format = matches!(c, '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e0001}' | '\u{e0020}'..='\u{e007f}');
    !(c.is_control() || c.is_whitespace() || format)
}

/// A Modelfile value as Ollama's parser reads it back: bare for one word without quotes, `"..."`
/// for one line that does not start with a quote, else `"""..."""`; `multiline` forces the
/// triple form.
fn quote(what: &str, value: &str, multiline: bool) -> Result<String, ModelfileError> {
    let bad = |reason: String| ModelfileError::Unrepresentable { what: what.to_string(), reason };
    if let Some(c) = value.chars().find(|&c| !ollama_keeps(c)) {
        return Err(bad(format!("it contains U+{:04X}, which Ollama's Modelfile parser drops", c as u32)));
    }
    if value.contains("\"\"\"") {
        return Err(bad("it contains \"\"\", which Ollama's Modelfile parser cannot quote".into()));
    }
    if !multiline && !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '"') {
        return Ok(value.to_string());
    }
    let one_line = !value.contains(['\n', '\r']) && !value.starts_with('"') && value.trim() == value && !value.is_empty();
    Ok(if multiline || !one_line { format!("\"\"\"{value}\"\"\"") } else { format!("\"{value}\"") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::template::seed_chat_template;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const QWEN2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    /// Qwen2.5-Instruct's template without its tool-calling branches.
    const QWEN25: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";
    /// tests/data/tiny-tokenizer's: ChatML without a default system prompt.
    const PLAIN_CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
    /// Llama 3.1's shape: the system block always there, with a knowledge-date preamble.
    const LLAMA31: &str = "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n";
    const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    fn conversations() -> Vec<Vec<ChatMessage>> {
        vec![
            vec![m("user", "我明年运势如何？")],
            vec![m("system", "你是算命大师。"), m("user", "我明年运势如何？")],
            vec![
                m("system", "You tell fortunes.\nBe brief."),
                m("user", "我明年运势如何？"),
                m("assistant", "明年财运亨通，但要注意身体健康。"),
                m("user", "Thanks! And {{ 2026 }}?"),
            ],
            vec![m("user", "hi"), m("assistant", "hello"), m("user", "bye")],
        ]
    }

    /// The translation recognizes `family`, and for every sample conversation the Go template
    /// (rendered with Ollama's values) equals the Jinja rendering with add_generation_prompt.
    fn check(source: &str, bos: &str, eos: &str, add_bos: bool, family: TemplateFamily) -> Translation {
        let t = translate(source, bos, eos, add_bos).unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert_eq!(t.family, family);
        let jinja = Jinja::new(source, bos, eos).expect("compile");
        let parsed = go_template::parse(&t.template).expect("parse Go template");
        for conv in conversations() {
            let mut want = jinja.render(&conv).expect("render");
            if let Some(rest) = want.strip_prefix(bos).filter(|_| add_bos && !bos.is_empty()) {
                want = rest.to_string();
            }
            assert_eq!(go_template::render_ollama(&parsed, &conv).expect("render Go"), want, "{} on {conv:?}", family.name());
        }
        t
    }

    #[test]
    fn the_seed_format_translates() {
        let t = check(&seed_chat_template("<|im_end|>"), "", "<|im_end|>", false, TemplateFamily::Seed);
        assert_eq!(
            t.template,
            "{{ if .System }}{{ .System }}\n\n{{ end }}{{ range .Messages }}{{ if eq .Role \"user\" }}User: {{ .Content }}\n\n{{ else if eq .Role \"assistant\" }}Assistant: {{ .Content }}<|im_end|>{{ end }}{{ end }}Assistant:"
        );
        check(&seed_chat_template("</s>"), "<s>", "</s>", true, TemplateFamily::Seed);
    }

    #[test]
    fn chatml_templates_translate_with_their_default_system_prompts() {
        let t = check(SMOLLM2, "<|im_start|>", "<|im_end|>", false, TemplateFamily::ChatMl);
        assert_eq!(
            t.default_system_block,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        );
        let t = check(QWEN2, "", "<|im_end|>", false, TemplateFamily::ChatMl);
        assert!(t.default_system_block.contains("You are a helpful assistant."));
        let t = check(QWEN25, "", "<|im_end|>", false, TemplateFamily::ChatMl);
        assert!(t.default_system_block.contains("You are Qwen"));
        let t = check(PLAIN_CHATML, "", "<|im_end|>", false, TemplateFamily::ChatMl);
        assert_eq!(t.default_system_block, "");
        assert!(!t.template.contains("{{ else }}"));
    }

    #[test]
    fn llama3_templates_translate_and_drop_the_bos_the_tokenizer_adds() {
        let t = check(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", true, TemplateFamily::Llama3);
        assert!(!t.template.contains("<|begin_of_text|>"));
        // Without add_bos the BOS stays as text in both branches.
        let t = check(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", false, TemplateFamily::Llama3);
        assert!(t.template.starts_with("{{ if .System }}<|begin_of_text|>"));
        let t = check(LLAMA31, "<|begin_of_text|>", "<|eot_id|>", true, TemplateFamily::Llama3);
        assert!(t.default_system_block.contains("Today Date: 26 Jul 2024"));
    }

    #[test]
    fn an_unrecognized_template_is_an_error_and_an_explicit_template_is_written_as_given() {
        let e = translate(MISTRAL, "<s>", "</s>", true).unwrap_err();
        assert!(matches!(e, ModelfileError::UnrecognizedTemplate { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("[INST] USER_ONE_7c1f [/INST]") && msg.contains("TEMPLATE explicitly"), "{msg}");
        let explicit = "[INST] {{ .Prompt }} [/INST]";
        let text = Modelfile::new("m.gguf", MISTRAL).with_template(explicit).render().expect("explicit template");
        assert!(text.contains(&format!("TEMPLATE \"\"\"{explicit}\"\"\"")), "{text}");
        assert!(matches!(translate("{{ nope(", "", "", false), Err(ModelfileError::Jinja { .. })));
    }

    /// Ollama's Modelfile parser (parser/parser.go `ParseFile`), for the commands it yields.
    fn ollama_parse(text: &str) -> Result<Vec<(String, String)>, String> {
        #[derive(Clone, Copy, PartialEq)]
        enum S {
            Nil,
            Name,
            Value,
            Parameter,
            Comment,
        }
        fn unquote(s: &str) -> Option<&str> {
            if s.starts_with("\"\"\"") {
                return (s.len() >= 6 && s.ends_with("\"\"\"")).then(|| &s[3..s.len() - 3]);
            }
            if s.starts_with('"') {
                return (s.len() >= 2 && s.ends_with('"')).then(|| &s[1..s.len() - 1]);
            }
            Some(s)
        }
        let space = |c: char| c == ' ' || c == '\t';
        let newline = |c: char| c == '\r' || c == '\n';
        let (mut cmds, mut curr, mut b, mut name) = (Vec::new(), S::Nil, String::new(), String::new());
        for r in text.chars() {
            let (mut next, keep) = match curr {
                S::Nil if r == '#' => (S::Comment, None),
                S::Nil if space(r) || newline(r) => (S::Nil, None),
                S::Nil => (S::Name, Some(r)),
                S::Name if r.is_ascii_alphabetic() => (S::Name, Some(r)),
                S::Name if space(r) => (S::Value, None),
                S::Name => return Err("invalid command".into()),
                S::Value if newline(r) || space(r) => (S::Nil, Some(r)),
                S::Value => (S::Value, Some(r)),
                S::Parameter if r.is_ascii_alphanumeric() || r == '_' => (S::Parameter, Some(r)),
                S::Parameter if space(r) => (S::Value, None),
                S::Parameter => return Err("bad parameter".into()),
                S::Comment if newline(r) => (S::Nil, None),
                S::Comment => (S::Comment, None),
            };
            if next != curr {
                match curr {
                    S::Name => match b.to_lowercase().as_str() {
                        "from" => name = "model".into(),
                        "parameter" => next = S::Parameter,
                        s => name = s.into(),
                    },
                    S::Parameter => name = b.clone(),
                    S::Value => match unquote(b.trim()) {
                        Some(s) if !space(r) => cmds.push((name.clone(), s.to_string())),
                        _ => {
                            b.push(r);
                            continue;
                        }
                    },
                    _ => {}
                }
                b.clear();
                curr = next;
            }
            if let Some(c) = keep.filter(|&c| ollama_keeps(c) && !newline(c) && c != '\t') {
                b.push(c);
            }
        }
        if curr == S::Value {
            cmds.push((name, unquote(b.trim()).ok_or("unterminated quote")?.to_string()));
        }
        Ok(cmds)
    }

    #[test]
    fn ollamas_parser_reads_back_every_value_unchanged() {
        let t = translate(SMOLLM2, "<|im_start|>", "<|im_end|>", false).expect("translate");
        let system = "You are a fortune teller.\n\t\"Be kind\", and \"brief\".";
        let stops = ["<|im_end|>", "<|endoftext|>", "\"", "\n\nUser:", "a \"quoted\" one"];
        let text = Modelfile::new("smollm2-q8_0.gguf", SMOLLM2)
            .with_special_tokens("<|im_start|>", "<|im_end|>", false)
            .with_stop_tokens(stops)
            .with_stop_tokens(["<|im_end|>"])
            .with_system(system)
            .with_parameter("temperature", "0.7")
            .with_parameter("num_ctx", "8192")
            .render()
            .expect("render");
        assert!(text.starts_with("FROM ./smollm2-q8_0.gguf\nTEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n"), "{text}");
        assert!(text.contains("\nPARAMETER stop <|im_end|>\n"), "{text}");
        let mut want = vec![
            ("model".to_string(), "./smollm2-q8_0.gguf".to_string()),
            ("template".into(), t.template.clone()),
            ("system".into(), system.into()),
        ];
        want.extend(stops.iter().map(|s| ("stop".to_string(), s.to_string())));
        want.extend([("temperature".into(), "0.7".into()), ("num_ctx".into(), "8192".into())]);
        assert_eq!(ollama_parse(&text).expect("parse"), want);
    }

    #[test]
    fn values_ollama_cannot_read_back_are_errors() {
        let base = || Modelfile::new("m.gguf", PLAIN_CHATML);
        let e = base().with_stop_tokens(["a\"\"\"b"]).render().unwrap_err();
        assert!(matches!(&e, ModelfileError::Unrepresentable { what, .. } if what == "PARAMETER stop"), "{e}");
        let e = base().with_system("zero\u{200b}width").render().unwrap_err();
        assert!(e.to_string().contains("U+200B"), "{e}");
        assert!(matches!(base().with_parameter("top-k", "1").render(), Err(ModelfileError::InvalidParameter { .. })));
        assert!(matches!(Modelfile::new("a\nb.gguf", PLAIN_CHATML).render(), Err(ModelfileError::Unrepresentable { .. })));
    }

    #[test]
    fn for_tokenizer_takes_template_special_tokens_and_stops_from_the_gguf_metadata() {
        use crate::tokenizer::to_gguf::{to_gguf, HfTokenizer};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-tokenizer");
        let mut meta = to_gguf(&HfTokenizer::from_dir(&dir).expect("load"), Some("gpt-2")).expect("to_gguf");
        let text = Modelfile::for_tokenizer("tiny.gguf", &meta).expect("modelfile").render().expect("render");
        assert!(text.contains("{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n"), "{text}");
        assert!(text.ends_with("PARAMETER stop <|endoftext|>\nPARAMETER stop <|im_end|>\n"), "{text}");
        // A model trained with the seed format carries the seed template.
        let seed = crate::tokenizer::template::seed_chat_template("<|im_end|>");
        meta.kv.iter_mut().find(|(k, _)| k == keys::CHAT_TEMPLATE).expect("template").1 = GgufValue::String(seed.clone());
        let m = Modelfile::for_tokenizer("tiny.gguf", &meta).expect("modelfile");
        assert_eq!(translate(&seed, &m.bos, &m.eos, m.add_bos).expect("translate").family, TemplateFamily::Seed);
        assert!(m.render().expect("render").contains("Assistant: {{ .Content }}<|im_end|>"));
        meta.kv.retain(|(k, _)| k != keys::CHAT_TEMPLATE);
        assert!(matches!(Modelfile::for_tokenizer("tiny.gguf", &meta), Err(ModelfileError::NoChatTemplate)));
    }

    #[test]
    fn modelfile_writes_from_template_stops_system_and_parameters() {
        let stops = vec!["<|im_end|>".to_string(), "<|endoftext|>".to_string()];
        let text =
            modelfile("/abs/m.gguf", PLAIN_CHATML, &stops, Some("Be brief."), &[("temperature", "0.2")]).expect("modelfile");
        assert_eq!(
            text,
            "FROM /abs/m.gguf\n\
             TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n\"\"\"\n\
             SYSTEM \"\"\"Be brief.\"\"\"\n\
             PARAMETER stop <|im_end|>\n\
             PARAMETER stop <|endoftext|>\n\
             PARAMETER temperature 0.2\n"
        );
    }
}
