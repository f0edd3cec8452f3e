//! Structured output: OpenAI's `response_format` (`text`, `json_object`, `json_schema`) read into a grammar,
//! and any grammar compiled for the serving model on the bounded CPU pool, so a schema's cost is paid off
//! the engine thread and a schema the grammar engine cannot use is a 400 before anything is queued.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::AppState;
use crate::engine::constraint::Prepared;
use crate::engine::Engine;
use crate::models::grammar::Grammar;
use serde_json::{json, Value};

/// The grammar a `response_format` asks for (None: plain text).
pub fn response_grammar(format: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    let kind = format.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonSchema(json!({"type": "object"})))),
        "json_schema" => {
            let spec = format.get("json_schema").filter(|s| s.is_object()).ok_or_else(|| {
                ApiError::invalid("response_format", "response_format json_schema needs a json_schema object")
            })?;
            match spec.get("schema") {
                None | Some(Value::Null) => Ok(Some(Grammar::JsonSchema(json!({"type": "object"})))),
                Some(s) if s.is_object() || s.is_boolean() => Ok(Some(Grammar::JsonSchema(s.clone()))),
                Some(_) => Err(ApiError::invalid("response_format", "json_schema.schema must be a JSON schema object")),
            }
        }
        other => Err(ApiError::invalid(
            "response_format",
            format!("response_format type '{other}' is not supported; use text, json_object or json_schema"),
        )),
    }
}

/// Compiles `grammar` for `engine`'s model; `param` names the request field a failure is blamed on.
pub async fn compile(
    state: &AppState,
    engine: &Engine,
    grammar: Grammar,
    param: &'static str,
) -> Result<Prepared, ApiError> {
    let model = engine.model().clone();
    let vocab = model.llama.config().vocab_size;
    state
        .cpu
        .run(move || {
            let env = model.tokenizer.grammar(vocab).map_err(|e| ApiError::invalid(param, e.to_string()))?;
            let m = env.matcher(&grammar).map_err(|e| ApiError::invalid(param, format!("invalid grammar: {e}")))?;
            // Room for the fastest ending from the start (the engine adds room for each level opened since).
            let reserve = env.close_length(&m).saturating_add(8);
            tracing::debug!(reserve, "grammar compiled");
            Ok(Prepared::new(m, env.closing(), reserve))
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(response_grammar(None).unwrap(), None);
        assert_eq!(response_grammar(Some(&json!({"type": "text"}))).unwrap(), None);
        assert!(matches!(response_grammar(Some(&json!({"type": "json_object"}))), Ok(Some(Grammar::JsonSchema(_)))));
        let s = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}});
        assert_eq!(response_grammar(Some(&s)).unwrap(), Some(Grammar::JsonSchema(json!({"type": "integer"}))));
        for bad in [
            json!({"type": "xml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            assert_eq!(response_grammar(Some(&bad)).unwrap_err().param, Some("response_format"));
        }
    }
}
