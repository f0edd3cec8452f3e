//! OpenAI request fields that would change the answer but that teal does not implement (the legacy
//! `functions` / `function_call`, superseded by tools): each is refused with a 400 naming the field, never
//! accepted and silently ignored.

use super::error::ApiError;
use super::openai_types::ChatCompletionRequest;
use serde_json::Value;

/// The legacy function calling is refused (tools do the same), never answered as if it were not there.
pub fn refuse_functions(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let offered =
        |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    if offered(&req.functions) {
        return Err(ApiError::invalid("functions", "the legacy functions are not supported; use tools"));
    }
    if req.function_call.as_ref().is_some_and(|v| !v.is_null() && v != "none" && v != "auto") {
        return Err(ApiError::invalid("function_call", "the legacy function_call is not supported; use tool_choice"));
    }
    Ok(())
}
