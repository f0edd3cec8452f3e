//! OpenAI request bodies as the API deserializes them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<teal::api::openai_types::ChatCompletionRequest>(data);
    let _ = serde_json::from_slice::<teal::api::openai_types::CompletionRequest>(data);
});
