//! Streaming an answer that may hold tool calls: text before a call streams as content at once; from the
//! point where a call begins (or may begin: a partial marker is held back) the text is kept, and at the end
//! it is parsed into `delta.tool_calls` (text that turns out not to be a call is sent as content then).

#![deny(clippy::indexing_slicing)]

use super::tools::{split, Call, Format};

#[derive(Debug, Clone)]
pub struct ToolStream {
    format: Format,
    buf: String,
    /// Bytes of `buf` already sent as content.
    sent: usize,
    /// A call has begun: nothing more streams as content until the end.
    in_calls: bool,
    /// The answer is plain text (a Llama 3 answer that did not start with a call).
    text_only: bool,
}

enum Start {
    At(usize),
    Maybe(usize),
    No,
}

impl ToolStream {
    /// `forced`: the answer is a call from its first token.
    pub fn new(format: Format, forced: bool) -> Self {
        ToolStream { format, buf: String::new(), sent: 0, in_calls: forced, text_only: false }
    }

    /// Adds generated text; returns what may be sent as content now.
    pub fn push(&mut self, text: &str) -> String {
        self.buf.push_str(text);
        if self.in_calls {
            return String::new();
        }
        let upto = match self.start() {
            Start::At(i) => {
                self.in_calls = true;
                i
            }
            Start::Maybe(i) => i,
            Start::No => self.buf.len(),
        };
        let upto = upto.max(self.sent);
        let out = self.buf.get(self.sent..upto).unwrap_or_default().to_string();
        self.sent = upto;
        out
    }

    /// The end: the content not sent yet and the calls.
    pub fn finish(&mut self) -> (String, Vec<Call>) {
        let rest = self.buf.get(self.sent..).unwrap_or_default();
        self.sent = self.buf.len();
        split(self.format, rest)
    }

    fn start(&mut self) -> Start {
        if self.text_only {
            return Start::No;
        }
        let marker = match self.format {
            Format::Hermes => "<tool_call>",
            Format::Mistral => "[TOOL_CALLS]",
            Format::Llama3 => return self.llama3_start(),
        };
        if let Some(i) = self.buf.find(marker) {
            return Start::At(i);
        }
        match partial_suffix(&self.buf, marker) {
            0 => Start::No,
            n => Start::Maybe(self.buf.len() - n),
        }
    }

    /// Llama 3 writes a call as the whole answer: its first non-blank text decides.
    fn llama3_start(&mut self) -> Start {
        const TAG: &str = "<|python_tag|>";
        let t = self.buf.trim_start();
        let at = self.buf.len() - t.len();
        if t.is_empty() || (TAG.starts_with(t) && t.len() < TAG.len()) {
            return Start::Maybe(self.sent);
        }
        if t.starts_with('{') || t.starts_with(TAG) {
            self.sent = self.sent.max(at); // the blank before a call is not content
            return Start::At(at);
        }
        self.text_only = true;
        Start::No
    }
}

/// Length of the longest end of `text` that is a proper beginning of `marker` (an ASCII marker).
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| text.as_bytes().ends_with(marker.as_bytes().get(..n).unwrap_or_default()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, pieces: &[&str]) -> (String, Vec<Call>) {
        let mut s = ToolStream::new(format, false);
        let mut content: String = pieces.iter().map(|p| s.push(p)).collect();
        let (rest, calls) = s.finish();
        content.push_str(&rest);
        (content, calls)
    }

    #[test]
    fn hermes_text_streams_and_calls_come_at_the_end() {
        let mut s = ToolStream::new(Format::Hermes, false);
        assert_eq!(s.push("Let me check. <tool"), "Let me check. ");
        assert_eq!(s.push("_call>\n{\"name\": \"f\", "), "");
        assert_eq!(s.push("\"arguments\": {\"x\": 1}}\n</tool_call>"), "");
        let (rest, calls) = s.finish();
        assert_eq!(rest, "");
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("f", "{\"x\":1}"));
        // A held-back "<" that is not a call goes out with the next text.
        assert_eq!(run(Format::Hermes, &["a <", "b"]), ("a <b".into(), vec![]));
    }

    #[test]
    fn llama3_and_mistral() {
        let (c, calls) = run(Format::Llama3, &[" {\"name\": \"g\", ", "\"parameters\": {}}"]);
        assert_eq!((c.as_str(), calls.len()), ("", 1));
        assert_eq!(run(Format::Llama3, &["Hello {x}"]), ("Hello {x}".into(), vec![]));
        let (c, calls) = run(Format::Mistral, &["ok [TOOL_", "CALLS][{\"name\": \"h\", \"arguments\": {\"a\": 2}}]"]);
        assert_eq!((c.as_str(), calls[0].name.as_str()), ("ok ", "h"));
    }

    #[test]
    fn a_broken_call_is_text() {
        let (c, calls) = run(Format::Hermes, &["<tool_call>\n{\"name\": oops\n</tool_call>"]);
        assert!(calls.is_empty());
        assert_eq!(c, "<tool_call>\n{\"name\": oops\n</tool_call>");
    }
}
