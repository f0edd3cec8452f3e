//! Renders a model's own Jinja chat template (from tokenizer_config.json or GGUF metadata) with minijinja,
//! with the Python string methods HF templates use (`.strip()`, `.startswith()`, ...) and `raise_exception`.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls, as OpenAI shapes them (templates that know tools render them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool result's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// Work one render may do: minijinja's fuel (about one unit per instruction and per byte written). A long real
/// conversation through a real template costs a few million; a template that loops without end runs out.
pub const RENDER_FUEL: u64 = 50_000_000;
/// Longest template source.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

pub struct ChatTemplate {
    env: Environment<'static>,
}

/// A writer that refuses to grow past its cap (the render then fails instead of allocating without bound).
struct Capped {
    out: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.cap {
            return Err(std::io::Error::other(format!("the rendered prompt exceeds {} bytes", self.cap)));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles the template once at model load, so a broken template fails the load, not a request.
    pub fn new(source: String) -> Result<Self> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(TealError::Template(format!(
                "the chat template is {} bytes (at most {MAX_SOURCE_BYTES})",
                source.len()
            )));
        }
        let mut env = Environment::new();
        env.set_fuel(Some(RENDER_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source).map_err(|e| TealError::Template(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Whether the template's source contains `needle` (what a template knows: tools, a call markup).
    pub fn mentions(&self, needle: &str) -> bool {
        self.env.get_template("chat").is_ok_and(|t| t.source().contains(needle))
    }

    /// Renders the conversation, within the fuel budget and at most `max_bytes` of output.
    pub fn render(&self, messages: &[ChatMessage], bos: &str, eos: &str, max_bytes: usize) -> Result<String> {
        self.render_with_tools(messages, None, bos, eos, max_bytes)
    }

    /// `render` with the request's tools in the template's `tools` variable.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        bos: &str,
        eos: &str,
        max_bytes: usize,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| TealError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        };
        let mut out = Capped { out: vec![], cap: max_bytes };
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            let why = match e.kind() {
                ErrorKind::OutOfFuel => "the template ran past its execution budget".to_string(),
                ErrorKind::WriteFailure => format!("the rendered prompt exceeds {max_bytes} bytes"),
                _ => e.to_string(),
            };
            TealError::Template(why)
        })?;
        String::from_utf8(out.out).map_err(|_| TealError::Template("the template produced invalid UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage { role: "user".into(), content: " hi ".into(), ..Default::default() }], "", "", 1000)
            .unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}".into()).unwrap();
        let err = t.render(&[], "", "", 1000).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn looping_and_exploding_templates_stop_at_their_budget() {
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}".into(),
        )
        .unwrap();
        let err = t.render(&[], "", "", 1 << 20).unwrap_err().to_string();
        assert!(err.contains("execution budget"), "{err}");
        let t = ChatTemplate::new("{% for a in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}".into()).unwrap();
        let err = t.render(&[], "", "", 4096).unwrap_err().to_string();
        assert!(err.contains("exceeds 4096 bytes"), "{err}");
        assert!(ChatTemplate::new("x".repeat(MAX_SOURCE_BYTES + 1)).is_err());
    }
}
