//! Chat templates (model files): compile, then render a short conversation within the fuel and output caps.
#![no_main]
use teal::models::chat_template::{ChatMessage, ChatTemplate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(t) = ChatTemplate::new(src.to_string()) else { return };
    let msgs = [
        ChatMessage { role: "system".into(), content: "be brief".into() },
        ChatMessage { role: "user".into(), content: "hello".into() },
    ];
    if let Ok(out) = t.render(&msgs, "<s>", "</s>", 1 << 20) {
        assert!(out.len() <= 1 << 20);
    }
});
