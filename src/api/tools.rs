//! Tool calling: the request's `tools`, `tool_choice` and `parallel_tool_calls` read and checked; the
//! markup the model writes calls in (chosen from its chat template: Hermes/Qwen `<tool_call>` JSON, Llama 3.x
//! JSON, Mistral `[TOOL_CALLS]`; Hermes with teal's own instructions for a template that knows no tools); the
//! grammar that forces a call (`required` or a named function) whose arguments follow the function's schema;
//! and the parse of an answer back into OpenAI `tool_calls`. Rendering is prompt.rs's, streaming
//! tool_stream.rs's.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use crate::models::chat_template::{ChatMessage, ChatTemplate};
use crate::models::grammar::Grammar;
use serde_json::{json, Value};

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// How a model family writes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>` (Hermes, Qwen; teal's fallback).
    Hermes,
    /// `{"name": .., "parameters": {..}}` as the whole answer (Llama 3.1+).
    Llama3,
    /// `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]` (Mistral).
    Mistral,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub parameters: Value,
}

/// A request's tools, ready for rendering, constraining and parsing.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `tools` array as sent (what a template's `tools` variable gets).
    pub raw: Value,
    pub functions: Vec<Function>,
    pub choice: Choice,
    pub parallel: bool,
}

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string (as OpenAI sends them).
    pub arguments: String,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::invalid("tools", msg)
}

/// Reads `tools` / `tool_choice` / `parallel_tool_calls`. None when no tools are offered.
pub fn parse(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Tools>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("tools must be an array")),
    };
    if list.len() > MAX_TOOLS {
        return Err(bad(format!("{} tools; at most {MAX_TOOLS} are accepted", list.len())));
    }
    let functions = list.iter().map(function).collect::<Result<Vec<_>, _>>()?;
    let choice = match choice {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) if s == "none" => Choice::None,
        Some(Value::String(s)) if s == "auto" => Choice::Auto,
        Some(Value::String(s)) if s == "required" => Choice::Required,
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").is_none_or(|t| t == "function") => Choice::Named(name.to_string()),
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice {v} is not none, auto, required or a function"),
                ))
            }
        },
    };
    if functions.is_empty() {
        return match choice {
            Choice::None | Choice::Auto => Ok(None),
            _ => Err(ApiError::invalid("tool_choice", "tool_choice needs tools")),
        };
    }
    if let Choice::Named(n) = &choice {
        if !functions.iter().any(|f| &f.name == n) {
            return Err(ApiError::invalid("tool_choice", format!("tool_choice names '{n}', which is not in tools")));
        }
    }
    Ok(Some(Tools { raw: Value::Array(list), functions, choice, parallel: parallel.unwrap_or(true) }))
}

fn function(t: &Value) -> Result<Function, ApiError> {
    if t.get("type").is_some_and(|k| k != "function") {
        return Err(bad(format!("tool type {} is not supported; only \"function\" is", t["type"])));
    }
    let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| bad("each tool needs a function object"))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(bad(format!("function name {name:?} must be 1 to 64 letters, digits, '_' or '-'")));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p) if p.is_object() => p.clone(),
        Some(_) => return Err(bad(format!("the parameters of {name} must be a JSON schema object"))),
    };
    Ok(Function { name: name.to_string(), parameters })
}

/// The call format of a chat template, and whether the template renders tools itself.
pub fn format_of(template: &ChatTemplate) -> (Format, bool) {
    let native = template.mentions("tools");
    let format = if template.mentions("[TOOL_CALLS]") {
        Format::Mistral
    } else if template.mentions("<|python_tag|>") || template.mentions("ipython") {
        Format::Llama3
    } else {
        Format::Hermes
    };
    (format, native)
}

/// Messages for a template that knows no tools: the tools and how to call them go into the system message,
/// earlier calls into the assistant's text and tool results into user turns, all in the Hermes markup.
pub fn fallback_messages(tools: &Tools, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let listing: Vec<String> = tools
        .raw
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("function"))
        .map(|f| json!({"name": f.get("name"), "description": f.get("description"), "parameters": f.get("parameters")}))
        .map(|f| f.to_string())
        .collect();
    let intro = format!(
        "You can call functions. Each is described by a JSON schema:\n{}\nTo call one, answer with \
         <tool_call>\n{{\"name\": <function name>, \"arguments\": <arguments as JSON>}}\n</tool_call>",
        listing.join("\n")
    );
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut messages = messages.into_iter().peekable();
    match messages.peek() {
        Some(m) if m.role == "system" || m.role == "developer" => {
            let m = messages.next().unwrap_or_default();
            out.push(ChatMessage { content: format!("{}\n\n{intro}", m.content), ..m });
        }
        _ => out.push(ChatMessage { role: "system".into(), content: intro, ..Default::default() }),
    }
    for mut m in messages {
        if let Some(calls) = m.tool_calls.take() {
            for c in calls.as_array().into_iter().flatten() {
                let f = c.get("function").unwrap_or(c);
                let call = json!({"name": f.get("name"), "arguments": arguments_value(f.get("arguments"))});
                m.content.push_str(&format!("\n<tool_call>\n{call}\n</tool_call>"));
            }
        }
        if m.role == "tool" {
            let content = format!("<tool_response>\n{}\n</tool_response>", m.content);
            m = ChatMessage { role: "user".into(), content, ..Default::default() };
        }
        out.push(m);
    }
    out
}

/// Messages for a template that renders tools itself: call arguments as objects, as HF templates expect.
pub fn native_messages(mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    for m in &mut messages {
        for c in m.tool_calls.iter_mut().filter_map(Value::as_array_mut).flatten() {
            if let Some(f) = c.get_mut("function").and_then(Value::as_object_mut) {
                let args = arguments_value(f.get("arguments"));
                f.insert("arguments".into(), args);
            }
        }
    }
    messages
}

/// Arguments as a JSON value: OpenAI sends a JSON string, templates want the object.
pub fn arguments_value(a: Option<&Value>) -> Value {
    match a {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(v) => v.clone(),
        None => json!({}),
    }
}

/// The grammar that forces a call (`required`, or a named function), or None when the model may answer freely.
pub fn forced_grammar(tools: &Tools, format: Format) -> Option<Grammar> {
    let chosen: Vec<&Function> = match &tools.choice {
        Choice::None | Choice::Auto => return None,
        Choice::Required => tools.functions.iter().collect(),
        Choice::Named(n) => tools.functions.iter().filter(|f| &f.name == n).collect(),
    };
    let args_key = if format == Format::Llama3 { "parameters" } else { "arguments" };
    let one = |f: &Function| {
        json!({"type": "object", "properties": {"name": {"const": f.name}, args_key: f.parameters},
               "required": ["name", args_key], "additionalProperties": false})
    };
    let call = match chosen.as_slice() {
        [f] => one(f),
        many => json!({"anyOf": many.iter().map(|f| one(f)).collect::<Vec<_>>()}),
    };
    let several = tools.parallel && tools.choice == Choice::Required;
    let src = match format {
        Format::Hermes => {
            let repeat = if several { " (\"\\n\" tc)*" } else { "" };
            format!(
                "start: tc{repeat}\ntc: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {}\n",
                compact(call)
            )
        }
        Format::Llama3 => {
            let repeat = if several { " (\"; \" call)*" } else { "" };
            format!("start: call{repeat}\ncall: %json {}\n", compact(call))
        }
        Format::Mistral => {
            let max = if several { json!(null) } else { json!(1) };
            let arr = json!({"type": "array", "items": call, "minItems": 1, "maxItems": max});
            format!("start: %json {}\n", compact(arr))
        }
    };
    Some(Grammar::Lark(src))
}

fn compact(schema: Value) -> Value {
    crate::models::grammar::compact(schema)
}

/// Splits an answer into its text and its calls (a block that does not parse stays text).
pub fn split(format: Format, text: &str) -> (String, Vec<Call>) {
    match format {
        Format::Hermes => split_hermes(text),
        Format::Llama3 => {
            let body = text.trim_start().trim_start_matches("<|python_tag|>");
            match json_sequence(body, ';')
                .map(|vs| vs.iter().filter_map(|v| call_of(v, "parameters")).collect::<Vec<_>>())
            {
                Some(calls) if !calls.is_empty() => (String::new(), calls),
                _ => (text.to_string(), vec![]),
            }
        }
        Format::Mistral => {
            let (before, body) = match text.find("[TOOL_CALLS]") {
                Some(i) => (text.get(..i).unwrap_or_default(), text.get(i + 12..).unwrap_or_default()),
                None if text.trim_start().starts_with('[') => ("", text),
                None => return (text.to_string(), vec![]),
            };
            let calls: Option<Vec<Call>> = serde_json::from_str::<Vec<Value>>(body.trim())
                .ok()
                .and_then(|vs| vs.iter().map(|v| call_of(v, "arguments")).collect());
            match calls {
                Some(c) if !c.is_empty() => (before.trim().to_string(), c),
                _ => (text.to_string(), vec![]),
            }
        }
    }
}

fn split_hermes(text: &str) -> (String, Vec<Call>) {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let (mut content, mut calls, mut rest) = (String::new(), vec![], text);
    while let Some(i) = rest.find(OPEN) {
        content.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + OPEN.len()..).unwrap_or_default();
        // The JSON value is read first, so a closing tag inside one of its strings does not end it.
        let (call, next) = match json_then(after, CLOSE) {
            Some((v, next)) => (call_of(&v, "arguments"), next),
            None => {
                let (body, next) = match after.find(CLOSE) {
                    Some(j) => (after.get(..j).unwrap_or_default(), after.get(j + CLOSE.len()..).unwrap_or_default()),
                    None => (after, ""),
                };
                (serde_json::from_str::<Value>(body.trim()).ok().and_then(|v| call_of(&v, "arguments")), next)
            }
        };
        match call {
            Some(c) => calls.push(c),
            None => content.push_str(rest.get(i..rest.len() - next.len()).unwrap_or_default()),
        }
        rest = next;
    }
    content.push_str(rest);
    let content = if calls.is_empty() { content } else { content.trim().to_string() };
    (content, calls)
}

/// One JSON value at the start of `text` (after whitespace), then `close` or the end of the text: the value and
/// what follows `close`.
fn json_then<'a>(text: &'a str, close: &str) -> Option<(Value, &'a str)> {
    let text = text.trim_start();
    let mut it = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let v = it.next()?.ok()?;
    let rest = text.get(it.byte_offset()..)?.trim_start();
    match rest.strip_prefix(close) {
        Some(next) => Some((v, next)),
        None if rest.is_empty() => Some((v, rest)),
        None => None,
    }
}

/// JSON values separated by `sep` (and whitespace), the whole text; None if anything else is there.
fn json_sequence(text: &str, sep: char) -> Option<Vec<Value>> {
    let mut out = vec![];
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        out.push(v);
        rest = rest.get(it.byte_offset()..)?.trim_start();
        rest = rest.strip_prefix(sep).unwrap_or(rest).trim_start();
    }
    Some(out)
}

/// `{"name": .., "<args_key>"|"arguments": {..}}` → a call with a fresh id.
fn call_of(v: &Value, args_key: &str) -> Option<Call> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get(args_key).or_else(|| v.get("arguments")).or_else(|| v.get("parameters"))?;
    let arguments = match args {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(Call { id: super::generate::new_id("call"), name, arguments })
}

/// The message's `tool_calls` as OpenAI shapes them.
pub fn calls_json(calls: &[Call]) -> Value {
    calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
