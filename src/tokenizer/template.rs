//! Prompt formats: the seed's `User:/Assistant:` format and the model's own Jinja chat template.
//!
//! A record becomes a (prompt, completion) pair of strings. The prompt's tokens are masked
//! (label -100); the completion's tokens are trained. Chat templates are rendered with minijinja
//! (with Python-compatible string methods, as Hugging Face templates use them): the prompt is the
//! conversation without the answer and with `add_generation_prompt`, the completion is whatever
//! the full conversation adds after it.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// The seed's user prefix.
pub const SEED_PROMPT: &str = "User: {instruction}{input}\n\n";
/// The seed's answer prefix.
pub const SEED_ANSWER: &str = "Assistant: {output}";

/// One chat message.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A Jinja chat template that renders the seed's format, for a GGUF's `tokenizer.chat_template`.
///
/// A conversation renders as the seed's training text: each user message as
/// `User: {content}\n\n`, each assistant message as `Assistant: {content}{eos}` (so one exchange
/// is exactly `User: {instruction}{input}\n\nAssistant: {output}{eos}`, what [`seed`] plus the end
/// token gives). The generation prompt is `Assistant:` without the trailing space: training
/// tokenized the completion `Assistant: {output}` on its own, so the model learned to produce
/// ` {output}` (space included) after `Assistant:`. The seed has no system role; a system
/// message renders as its text and a blank line. Other roles raise an error.
///
/// `eos` is written into the template as a literal, so the template does not depend on the
/// renderer passing `eos_token`.
pub fn seed_chat_template(eos: &str) -> String {
    let eos = jinja_string_literal(eos);
    [
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}",
        "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\\n\\n' }}",
        &format!("{{%- elif message['role'] == 'assistant' -%}}{{{{ 'Assistant: ' + message['content'] + {eos} }}}}"),
        "{%- else -%}{{ raise_exception('the seed format has no role ' + message['role']) }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}",
    ]
    .concat()
}

/// `source` with transformers' `{% generation %}` / `{% endgeneration %}` tags replaced by
/// `{% if true %}` / `{% endif %}`, keeping their `-` whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        // The closing `%}` comes after the opening `{%` (in `{%}` they overlap).
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix('-') {
            Some(b) => ("-", b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix('-') {
            Some(b) => (b, "-"),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `s` as a single-quoted Jinja string literal.
fn jinja_string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The seed's format: (prompt, completion without the end token).
pub fn seed(instruction: &str, input: &str, output: &str) -> (String, String) {
    let (mut prompt, mut completion) = (String::new(), String::new());
    seed_into(instruction, input, output, &mut prompt, &mut completion);
    (prompt, completion)
}

/// [`seed`] into reused strings (they are cleared first).
pub fn seed_into(instruction: &str, input: &str, output: &str, prompt: &mut String, completion: &mut String) {
    prompt.clear();
    prompt.push_str("User: ");
    prompt.push_str(instruction);
    prompt.push_str(input);
    prompt.push_str("\n\n");
    completion.clear();
    completion.push_str("Assistant: ");
    completion.push_str(output);
}

/// Most template instructions one render may run (minijinja's fuel). A chat template comes with
/// a downloaded model: nested loops must end in an error, not run for hours. Real templates use
/// a few hundred instructions per message.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Most bytes one render may write; a template that writes more is an error, not an allocation
/// the size of the machine's memory.
pub const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// A `String` writer that refuses to grow past [`TEMPLATE_MAX_OUTPUT`].
struct Capped(String);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            return Err(std::io::Error::other(format!("the chat template writes more than {TEMPLATE_MAX_OUTPUT} bytes")));
        }
        // minijinja writes whole UTF-8 strings.
        self.0.push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are visible to the template as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", without_generation_tags(source))?;
        Ok(ChatTemplate { env, bos: bos.into(), eos: eos.into() })
    }

    /// Renders a conversation.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error> {
        let mut out = Capped(String::new());
        self.env.get_template("chat")?.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        )?;
        Ok(out.0)
    }

    /// The whole conversation rendered (without a generation prompt), and the byte range of
    /// each assistant message's turn in it, in order.
    pub fn assistant_spans(&self, messages: &[Message]) -> Result<(String, Vec<std::ops::Range<usize>>), Error> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "the chat template renders the conversation up to assistant message {} as something that is not a prefix of the whole conversation, so its turn cannot be located ({} message{})",
                        i + 1,
                        messages.len(),
                        if messages.len() == 1 { "" } else { "s" }
                    ),
                ));
            }
            spans.push(before.len()..through.len());
        }
        Ok((full, spans))
    }

    /// (prompt, completion) for one exchange.
    pub fn pair(&self, system: Option<&str>, user: &str, assistant: &str) -> Result<(String, String), Error> {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(Message { role: "system".into(), content: s.into() });
        }
        msgs.push(Message { role: "user".into(), content: user.into() });
        let prompt = self.render(&msgs, true)?;
        msgs.push(Message { role: "assistant".into(), content: assistant.into() });
        let full = self.render(&msgs, false)?;
        match full.strip_prefix(&prompt) {
            Some(rest) => Ok((prompt, rest.to_string())),
            None => Err(Error::new(
                ErrorKind::InvalidOperation,
                "the chat template renders the conversation without the answer as something that is not a prefix of the conversation with it, so prompt tokens cannot be masked",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_splits_into_prompt_and_completion() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let (p, c) = t.pair(None, "你是谁?", "我是算命大师。").unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\n你是谁?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(c, "我是算命大师。<|im_end|>\n");
    }

    #[test]
    fn assistant_spans_cover_each_assistant_turn_with_its_end_tokens() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let msgs = [msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d")];
        let (full, spans) = t.assistant_spans(&msgs).unwrap();
        let turns: Vec<&str> = spans.iter().map(|s| &full[s.clone()]).collect();
        assert_eq!(turns, ["b<|im_end|>\n", "d<|im_end|>\n"]);
        assert!(full[..spans[0].start].ends_with("<|im_start|>assistant\n"));
        assert!(t.assistant_spans(&msgs[..1]).unwrap().1.is_empty());
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_cannot_be_split() {
        // Shows only the last assistant message in full, as reasoning templates do with thoughts.
        let src = "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[old]{% else %}{{ m.content }}{% endif %}|{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let e = t.assistant_spans(&[msg("user", "a"), msg("assistant", "b"), msg("user", "c")]).unwrap_err();
        assert!(e.to_string().contains("assistant message 2"), "{e}");
    }

    #[test]
    fn generation_tags_render_as_their_content() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }} {%- endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[msg("user", "q "), msg("assistant", "a")], false).unwrap(), "q a");
        assert_eq!(
            without_generation_tags("{% generation %}x{%endgeneration%}{% if a %}{% endif %}"),
            "{% if true %}x{% endif %}{% if a %}{% endif %}"
        );
        assert_eq!(without_generation_tags("a{%}b"), "a{%}b");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('nope') }}", "", "").unwrap();
        assert!(t.render(&[], false).unwrap_err().to_string().contains("nope"));
    }

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn the_seed_chat_template_renders_the_seed_training_text() {
        for eos in ["<|im_end|>", "</s>", "it's \\ odd\n"] {
            let t = ChatTemplate::new(&seed_chat_template(eos), "<s>", "unused").unwrap();
            let (prompt, answer) = seed("算命", "：明年", "财运亨通");
            let full = t.render(&[msg("user", "算命：明年"), msg("assistant", "财运亨通")], false).unwrap();
            assert_eq!(full, format!("{prompt}{answer}{eos}"));
            let gen = t.render(&[msg("user", "算命：明年")], true).unwrap();
            assert_eq!(gen, format!("{prompt}Assistant:"));
            assert!(full.starts_with(&gen), "the generation prompt is a prefix of the answered conversation");
            let sys = t.render(&[msg("system", "S"), msg("user", "q")], true).unwrap();
            assert_eq!(sys, "S\n\nUser: q\n\nAssistant:");
            assert!(t.render(&[msg("tool", "x")], false).unwrap_err().to_string().contains("no role tool"));
        }
    }

    #[test]
    fn the_seed_format_matches_the_tutorial() {
        assert_eq!(seed("a", "b", "c"), ("User: ab\n\n".to_string(), "Assistant: c".to_string()));
    }
}
