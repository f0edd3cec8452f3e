use super::*;

fn tools(choice: Value) -> Tools {
    let t = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "add"}}]);
    parse(Some(&t), Some(&choice), None).unwrap().unwrap()
}

#[test]
fn choices_and_refusals() {
    assert_eq!(tools(json!("auto")).choice, Choice::Auto);
    assert_eq!(tools(json!("required")).choice, Choice::Required);
    let named = json!({"type": "function", "function": {"name": "add"}});
    assert_eq!(tools(named).choice, Choice::Named("add".into()));
    assert!(parse(None, None, None).unwrap().is_none());
    let err = |t: Value, c: Value| parse(Some(&t), Some(&c), None).unwrap_err();
    let one = json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(err(one.clone(), json!({"type": "function", "function": {"name": "g"}})).param, Some("tool_choice"));
    assert_eq!(err(one.clone(), json!("sometimes")).param, Some("tool_choice"));
    assert_eq!(
        err(json!([{"type": "function", "function": {"name": "bad name"}}]), json!("auto")).param,
        Some("tools")
    );
    assert_eq!(err(json!([{"type": "retrieval"}]), json!("auto")).param, Some("tools"));
    assert_eq!(err(json!({"a": 1}), json!("auto")).param, Some("tools"));
    let many: Vec<Value> =
        (0..=MAX_TOOLS).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect();
    assert!(err(Value::Array(many), json!("auto")).message.contains("at most"));
    assert_eq!(parse(None, Some(&json!("required")), None).unwrap_err().param, Some("tool_choice"));
}

#[test]
fn forced_grammars_name_the_function_and_its_schema() {
    let t = tools(json!({"type": "function", "function": {"name": "get_weather"}}));
    let Some(Grammar::Lark(src)) = forced_grammar(&t, Format::Hermes) else { panic!("no grammar") };
    assert!(
        src.contains("<tool_call>") && src.contains("\"const\":\"get_weather\"") && !src.contains("\"add\""),
        "{src}"
    );
    assert!(forced_grammar(&tools(json!("auto")), Format::Hermes).is_none());
    let Some(Grammar::Lark(src)) = forced_grammar(&tools(json!("required")), Format::Llama3) else { panic!() };
    assert!(src.contains("anyOf") && src.contains("parameters"), "{src}");
}

#[test]
fn splits_each_format() {
    let (c, calls) =
        split(Format::Hermes, "Sure.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>");
    assert_eq!(c, "Sure.");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].id.starts_with("call"));
    let (_, calls) =
        split(Format::Llama3, "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": 1}}");
    assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(split(Format::Llama3, "{\"no\": 1} trailing").1.len(), 0);
    let (_, calls) = split(Format::Mistral, "[TOOL_CALLS][{\"name\": \"m\", \"arguments\": \"{\\\"q\\\": 2}\"}]");
    assert_eq!(calls[0].arguments, "{\"q\": 2}");
    assert_eq!(split(Format::Hermes, "plain text").0, "plain text");
}

#[test]
fn fallback_puts_tools_in_the_system_message_and_results_in_user_turns() {
    let t = tools(json!("auto"));
    let msgs = vec![
        ChatMessage { role: "user".into(), content: "weather?".into(), ..Default::default() },
        ChatMessage {
            role: "assistant".into(),
            content: String::new(),
            tool_calls: Some(json!([{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}])),
            ..Default::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: "sunny".into(),
            tool_call_id: Some("c1".into()),
            ..Default::default()
        },
    ];
    let out = fallback_messages(&t, msgs);
    assert_eq!(out[0].role, "system");
    assert!(out[0].content.contains("get_weather") && out[0].content.contains("<tool_call>"));
    assert!(out[2].content.contains("\"city\":\"Paris\""), "{}", out[2].content);
    assert_eq!((out[3].role.as_str(), out[3].content.as_str()), ("user", "<tool_response>\nsunny\n</tool_response>"));
}

/// A template in the style of Qwen 2.5's: it lists `tools` itself and renders earlier calls from `tool_calls`.
const QWEN_STYLE: &str = r#"{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags<|im_end|>
{% endif %}{%- for message in messages %}{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}<|im_start|>assistant
"#;

#[test]
fn a_template_that_knows_tools_renders_them_and_the_calls_with_object_arguments() {
    let tmpl = ChatTemplate::new(QWEN_STYLE.into()).unwrap();
    assert_eq!(format_of(&tmpl), (Format::Hermes, true));
    let t = tools(json!("auto"));
    let msgs = native_messages(vec![
        ChatMessage { role: "user".into(), content: "weather?".into(), ..Default::default() },
        ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(json!([{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}])),
            ..Default::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: "sunny".into(),
            tool_call_id: Some("c1".into()),
            ..Default::default()
        },
    ]);
    let out = tmpl.render_with_tools(&msgs, Some(&t.raw), "", "", 1 << 20).unwrap();
    assert!(out.contains("<tools>\n{\"function\": {\"name\": \"get_weather\""), "{out}");
    assert!(out.contains("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"), "{out}");
    assert!(out.contains("<tool_response>\nsunny\n</tool_response>"), "{out}");
    let plain = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}".into()).unwrap();
    assert_eq!(format_of(&plain), (Format::Hermes, false));
    let llama = ChatTemplate::new("{{ tools }}<|python_tag|>".into()).unwrap();
    assert_eq!(format_of(&llama), (Format::Llama3, true));
    let mistral = ChatTemplate::new("{{ tools }}[TOOL_CALLS]".into()).unwrap();
    assert_eq!(format_of(&mistral), (Format::Mistral, true));
}

#[test]
fn a_closing_tag_inside_an_argument_string_does_not_end_the_call() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"x}}</tool_call>y\", \"days\": 2}}\n</tool_call>";
    let (content, calls) = split(Format::Hermes, text);
    assert_eq!(content, "");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].arguments, r#"{"city":"x}}</tool_call>y","days":2}"#);
}
