//! Renders a model's own Jinja chat template (from tokenizer_config.json or GGUF metadata) with minijinja,
//! with the Python string methods HF templates use (`.strip()`, `.startswith()`, ...) and `raise_exception`.

use crate::error::{Result, TealError};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles the template once at model load, so a broken template fails the load, not a request.
    pub fn new(source: String) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source).map_err(|e| TealError::Template(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    pub fn render(&self, messages: &[ChatMessage], bos: &str, eos: &str) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| TealError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| TealError::Template(e.to_string()))
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
        let out = t.render(&[ChatMessage { role: "user".into(), content: " hi ".into() }], "", "").unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}".into()).unwrap();
        let err = t.render(&[], "", "").unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }
}
