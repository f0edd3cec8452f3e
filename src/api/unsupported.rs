//! OpenAI request fields that would change the answer but that teal does not implement yet (tool calling,
//! structured output): each is refused with a 400 naming the field, never accepted and silently ignored.

use super::error::ApiError;
use super::openai_types::ChatCompletionRequest;
use serde_json::Value;

/// A `response_format` other than plain text asks for constrained decoding, which teal does not do yet: refused,
/// never silently ignored.
pub fn refuse_constrained(format: Option<&Value>) -> Result<(), ApiError> {
    match format.map(|f| &f["type"]) {
        None => Ok(()),
        Some(t) if t == "text" => Ok(()),
        Some(t) => Err(ApiError::invalid(
            "response_format",
            format!("response_format {t} is not supported yet (structured output); only \"text\" is"),
        )),
    }
}

/// Tool calling is not supported yet: a request that offers tools (or the legacy functions) is refused, never
/// answered as if they were not there.
pub fn refuse_tools(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let offered =
        |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    if offered(&req.tools) {
        return Err(ApiError::invalid("tools", "tool calling is not supported yet"));
    }
    if offered(&req.functions) {
        return Err(ApiError::invalid("functions", "function calling is not supported yet"));
    }
    for (name, v) in [("tool_choice", &req.tool_choice), ("function_call", &req.function_call)] {
        if v.as_ref().is_some_and(|v| !v.is_null() && v != "none" && v != "auto") {
            return Err(ApiError::invalid(
                name,
                format!("{name} {} needs tools, which are not supported yet", v.as_ref().unwrap_or(&Value::Null)),
            ));
        }
    }
    refuse_constrained(req.response_format.as_ref())
}
