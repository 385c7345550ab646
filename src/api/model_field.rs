//! The `model` of an OpenAI-style request body, found by one pass over its bytes.
//!
//! The load balancer reads nothing else from a body, and serde's struct deserializer spent more
//! on that (field visitors, an ignored-value walk, string checks) than the rest of the request's
//! handling in skylaunch's own code. This scanner checks the whole body as JSON (RFC 8259: the
//! grammar of strings, escapes, numbers and literals, nesting up to serde_json's 128 levels,
//! nothing after the value) and takes the top-level `"model"` string on the way. Anything it
//! does not decide on its own (escapes in a key or in the model's name, two `model` keys, a
//! body that is not an object) is left to serde_json, so what is accepted, and what is
//! refused, is exactly what serde_json accepts and refuses.

use std::borrow::Cow;

/// The body's `model`, if it is a JSON object with a `model` string: what serde_json would read
/// into a struct with that one field.
pub fn model(body: &[u8]) -> Option<Cow<'_, str>> {
    match scan(body) {
        Scan::Model(name) => Some(Cow::Borrowed(name)),
        Scan::NoModel => None,
        Scan::Unsure => serde_json::from_slice::<ModelOnly>(body)
            .ok()
            .map(|m| m.model),
    }
}

/// The one field read; the rest is skipped by the parser, not built into a JSON tree.
#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
}

/// What the scan found.
#[derive(Debug, PartialEq)]
pub enum Scan<'a> {
    /// A well-formed JSON object whose one `model` member is this string (without escapes).
    Model(&'a str),
    /// Well-formed, but a JSON object with no `model` member.
    NoModel,
    /// Not decided here: ask serde_json.
    Unsure,
}

/// Nesting beyond this is left to serde_json (its default recursion limit; the scan recurses).
const MAX_DEPTH: usize = 128;

pub fn scan(body: &[u8]) -> Scan<'_> {
    let mut s = Scanner { b: body, at: 0 };
    s.document().unwrap_or(Scan::Unsure)
}

struct Scanner<'a> {
    b: &'a [u8],
    at: usize,
}

/// `None`: not decided here.
type Step<T> = Option<T>;

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Step<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn document(&mut self) -> Step<Scan<'a>> {
        self.skip_space();
        self.eat(b'{')?;
        let mut model = None;
        self.skip_space();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                self.skip_space();
                let (key, escaped) = self.string()?;
                if escaped {
                    return None;
                }
                self.skip_space();
                self.eat(b':')?;
                self.skip_space();
                if key == b"model" {
                    if model.is_some() || self.peek()? != b'"' {
                        return None;
                    }
                    let (name, escaped) = self.string()?;
                    if escaped {
                        return None;
                    }
                    model = Some(std::str::from_utf8(name).ok()?);
                } else {
                    self.value(1)?;
                }
                self.skip_space();
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.skip_space();
        if self.at != self.b.len() {
            return None;
        }
        Some(model.map_or(Scan::NoModel, Scan::Model))
    }

    /// Any value, `depth` levels inside the document.
    fn value(&mut self, depth: usize) -> Step<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn object(&mut self, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_space();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.skip_space();
            self.string()?;
            self.skip_space();
            self.eat(b':')?;
            self.skip_space();
            self.value(depth)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.skip_space();
            self.value(depth)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string (at its opening quote): its raw contents, and whether they hold escapes.
    fn string(&mut self) -> Step<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            match *self.b.get(self.at)? {
                b'"' => {
                    let raw = &self.b[start..self.at];
                    self.at += 1;
                    return Some((raw, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.b.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            // Surrogate pairs are serde's to judge.
                            let unit =
                                u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                            if (0xD800..0xE000).contains(&unit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                // Control characters must be escaped.
                0..0x20 => return None,
                _ => self.at += 1,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Step<()> {
        if self.b.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Step<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Owned {
        model: String,
    }

    /// What serde_json alone makes of a body.
    fn serde(body: &str) -> Option<String> {
        serde_json::from_str::<Owned>(body).ok().map(|m| m.model)
    }

    #[test]
    fn finds_the_model_of_ordinary_requests_without_serde() {
        let body = r#"{"messages": [{"role": "user", "content": "Say \"hi\"\n\u00e9"}],
            "max_tokens": 16, "temperature": 0.2, "top_p": 1e-3, "stream": true,
            "stop": null, "logit_bias": {"50256": -100}, "model": "meta-llama/Llama-3.1-8B"}"#;
        assert_eq!(
            scan(body.as_bytes()),
            Scan::Model("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(scan(br#"{"model":"m"}"#), Scan::Model("m"));
        assert_eq!(
            scan(b" {\"model\" : \"\xc3\xa9\" } \n"),
            Scan::Model("\u{e9}")
        );
        assert_eq!(scan(br#"{"prompt": "x"}"#), Scan::NoModel);
        assert_eq!(scan(b"{}"), Scan::NoModel);
    }

    #[test]
    fn leaves_what_it_cannot_judge_alone_to_serde() {
        for (body, expected) in [
            (r#"{"model": "meta\/llama"}"#, Some("meta/llama")),
            (r#"{"mod\u0065l": "m"}"#, Some("m")),
            (r#"{"model": "a", "model": "b"}"#, None),
            (r#"["m"]"#, Some("m")),
            (r#"{"model": 7}"#, None),
            (r#"{"x": "\ud83d\ude00", "model": "m"}"#, Some("m")),
        ] {
            assert_eq!(scan(body.as_bytes()), Scan::Unsure, "{body}");
            assert_eq!(model(body.as_bytes()).as_deref(), expected, "{body}");
        }
    }

    /// Whatever the scan decides, serde_json decides the same.
    #[test]
    fn agrees_with_serde_json() {
        let deep = |n: usize| {
            format!(
                "{{\"model\":\"m\",\"x\":{}1{}}}",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let cases: Vec<String> = [
            r#"{"model": "m", "n": -0.5e+10}"#,
            r#"{"model": "m", "n": 01}"#,
            r#"{"model": "m", "n": 1.}"#,
            r#"{"model": "m", "n": .5}"#,
            r#"{"model": "m", "n": -}"#,
            r#"{"model": "m", "n": 1e}"#,
            r#"{"model": "m", "n": +1}"#,
            r#"{"model": "m", "b": tru}"#,
            r#"{"model": "m", "b": nul}"#,
            r#"{"model": "m",}"#,
            r#"{"model": "m" "x": 1}"#,
            r#"{"model": "m", "a": [1,]}"#,
            r#"{"model": "m", "a": [1 2]}"#,
            r#"{"model": "m", "o": {"k" 1}}"#,
            r#"{"model": "m", "s": "\x"}"#,
            r#"{"model": "m", "s": "\u12"}"#,
            "{\"model\": \"m\", \"s\": \"tab\there\"}",
            r#"{"model": "m"} x"#,
            r#"{"model": "m"}}"#,
            r#"{"model": "m""#,
            r#"{"model": "m", "#,
            r#"{"model": "m", "s": "open}"#,
            "",
            "   ",
            "null",
            r#"{"model": ""}"#,
            r#"{"model": "m", "t": [true, false, null, {}, [], "", 0, -0, 1.5E3]}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([deep(100), deep(127), deep(128), deep(300)])
        .collect();
        for body in &cases {
            assert_eq!(
                model(body.as_bytes()).map(Cow::into_owned),
                serde(body),
                "{body}"
            );
        }
        assert_eq!(scan(deep(100).as_bytes()), Scan::Model("m"));
        // Bytes that are not UTF-8, outside the model's name and in it.
        for body in [
            &b"{\"x\": \"\xff\", \"model\": \"m\"}"[..],
            b"{\"model\": \"\xff\"}",
        ] {
            let by_serde = serde_json::from_slice::<Owned>(body).ok().map(|m| m.model);
            assert_eq!(model(body).map(Cow::into_owned), by_serde, "{body:?}");
        }
    }
}
