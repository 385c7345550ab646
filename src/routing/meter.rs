//! Token metering of forwarded answers, from the model server's own `usage`.
//!
//! A JSON answer carries `usage` in its body (OpenAI and vLLM put it last): the last 32 KiB of
//! the body are kept and read when it ends. A stream carries it in its final chunk when the
//! request asked with `stream_options.include_usage`; the load balancer asks on the client's
//! behalf ([`ask_for_usage`]) and then takes that chunk out of the client's stream, which
//! stays as the model server would have sent it without being asked. Memory is bounded
//! whatever the model server sends: the kept tail, and one line of a stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use serde::Deserialize;

use crate::keys::{Caller, Counts, Keys};
use crate::metrics::{Histogram, Metrics, Unit};

/// A model's token histograms in `/metrics`, looked up once per endpoint and kept.
#[derive(Debug)]
pub struct TokenSeries {
    /// The model's name, shared by every answer metered under it.
    pub model: Arc<str>,
    first_token: Histogram,
    prompt: Histogram,
    completion: Histogram,
    inter_token: Histogram,
    rate: Histogram,
}

impl TokenSeries {
    pub fn new(metrics: &Metrics, model: &str) -> TokenSeries {
        let labels = [("model", model)];
        TokenSeries {
            model: Arc::from(model),
            first_token: metrics.histogram(
                "skylaunch_time_to_first_token_seconds",
                "Time from sending a streamed request to a model server to the first chunk of its answer with content, in seconds, by model.",
                &labels,
            ),
            prompt: metrics.histogram_of(
                "skylaunch_prompt_tokens",
                "Prompt tokens per request, from the model server's usage, by model.",
                &labels,
                Unit::Tokens,
            ),
            completion: metrics.histogram_of(
                "skylaunch_completion_tokens",
                "Completion tokens per request, from the model server's usage, by model.",
                &labels,
                Unit::Tokens,
            ),
            inter_token: metrics.histogram(
                "skylaunch_inter_token_latency_seconds",
                "Time between two chunks of a streamed answer (about one token each), in seconds, by model.",
                &labels,
            ),
            rate: metrics.histogram_of(
                "skylaunch_output_tokens_per_second",
                "Completion tokens per second of each answer (from its first token to its end for a stream, from its headers for a JSON answer), by model.",
                &labels,
                Unit::TokensPerSecond,
            ),
        }
    }
}

/// How much of the end of a JSON answer is kept to find its `usage`.
const TAIL: usize = 32 * 1024;
/// The longest line of a stream that is read for `usage` (longer ones pass unread).
const MAX_LINE: usize = 256 * 1024;

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A stream's chunk, as far as metering reads it.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
}

enum Reading {
    /// A JSON answer: its last piece as it came (no copy: most answers are one piece), and
    /// the end of the pieces before it.
    Json {
        before: Vec<u8>,
        last: Option<Bytes>,
    },
    /// A stream of server-sent events: the line being read; `strip` takes out the usage
    /// chunk the client did not ask for (and the blank line that ends it).
    Events {
        line: Vec<u8>,
        /// The line is longer than [`MAX_LINE`]: skipped to its end.
        overlong: bool,
        strip: bool,
        drop_blank: bool,
    },
}

/// Meters one answer; records it once, when it ends or is dropped.
pub struct Meter {
    keys: Arc<Keys>,
    caller: Caller,
    model: Arc<str>,
    deployment: Arc<str>,
    reading: Reading,
    usage: Option<Counts>,
    recorded: bool,
    series: Option<Arc<TokenSeries>>,
    /// When the request went to the model server; its answer's first and latest content
    /// chunks (streams).
    started: Instant,
    first_chunk: Option<Instant>,
    last_chunk: Option<Instant>,
}

/// What [`Meter::new`] needs to know of the request.
pub struct StreamAsk {
    /// The client asked for a stream.
    pub stream: bool,
    /// The load balancer added `include_usage` for it: the usage chunk is taken out.
    pub added_usage: bool,
}

impl Meter {
    pub fn new(
        keys: Arc<Keys>,
        caller: Caller,
        model: Arc<str>,
        deployment: Arc<str>,
        ask: &StreamAsk,
    ) -> Meter {
        let reading = if ask.stream {
            Reading::Events {
                line: Vec::new(),
                overlong: false,
                strip: ask.added_usage,
                drop_blank: false,
            }
        } else {
            Reading::Json {
                before: Vec::new(),
                last: None,
            }
        };
        Meter {
            keys,
            caller,
            model,
            deployment,
            reading,
            usage: None,
            recorded: false,
            series: None,
            started: Instant::now(),
            first_chunk: None,
            last_chunk: None,
        }
    }

    /// When the request was sent to the model server (the default: when the meter was made).
    pub fn sent_at(&mut self, at: Instant) {
        self.started = at;
    }

    /// Observes the answer in the model's token histograms too.
    pub fn with_series(mut self, series: Option<Arc<TokenSeries>>) -> Meter {
        self.series = series;
        self
    }

    /// Whether it may change the bytes (a stream whose usage chunk is taken out).
    pub fn rewrites(&self) -> bool {
        matches!(self.reading, Reading::Events { strip: true, .. })
    }

    /// Passes every byte on as it came (an answer whose length was announced cannot lose
    /// any): the usage chunk, if any, reaches the client.
    pub fn keep_bytes(&mut self) {
        if let Reading::Events { strip, .. } = &mut self.reading {
            *strip = false;
        }
    }

    /// Whether it holds back bytes still to go to the client (an unfinished line).
    pub fn holds(&self) -> bool {
        matches!(&self.reading, Reading::Events { line, strip: true, .. } if !line.is_empty())
    }

    /// Reads a piece of the answer; what goes on to the client.
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        match &mut self.reading {
            Reading::Json { before, last } => {
                if let Some(prev) = last.replace(data.clone()) {
                    let keep = &prev[prev.len().saturating_sub(TAIL)..];
                    let over = (before.len() + keep.len()).saturating_sub(TAIL);
                    before.drain(..over);
                    before.extend_from_slice(keep);
                }
                data
            }
            Reading::Events {
                line,
                overlong,
                strip,
                drop_blank,
            } => {
                let mut out = Vec::new();
                let mut start = 0;
                while let Some(n) = data[start..].iter().position(|b| *b == b'\n') {
                    let piece = &data[start..=start + n];
                    start += n + 1;
                    if std::mem::take(overlong) {
                        // The end of a line too long to read: passed on unread.
                        if *strip {
                            out.extend_from_slice(piece);
                        }
                        continue;
                    }
                    let whole: &[u8] = if line.is_empty() {
                        piece
                    } else {
                        line.extend_from_slice(piece);
                        line
                    };
                    let text = trim_eol(whole);
                    let mut keep = true;
                    if text.is_empty() {
                        keep = !std::mem::take(drop_blank);
                    } else if let Some((counts, only_usage)) = usage_chunk(text) {
                        self.usage = Some(counts);
                        if *strip && only_usage {
                            keep = false;
                            *drop_blank = true;
                        }
                    } else if let Some(series) = self
                        .series
                        .as_ref()
                        .filter(|_| text.starts_with(b"data:") && !text.ends_with(b"[DONE]"))
                    {
                        let now = Instant::now();
                        match self.last_chunk {
                            Some(last) => series
                                .inter_token
                                .observe(now.duration_since(last).as_secs_f64()),
                            None => series
                                .first_token
                                .observe(now.duration_since(self.started).as_secs_f64()),
                        }
                        self.first_chunk.get_or_insert(now);
                        self.last_chunk = Some(now);
                    }
                    if *strip && keep {
                        out.extend_from_slice(whole);
                    }
                    line.clear();
                }
                let rest = &data[start..];
                if *overlong {
                    if *strip {
                        out.extend_from_slice(rest);
                    }
                } else if line.len() + rest.len() > MAX_LINE {
                    // Too long to read: passed on as it comes, to its end.
                    if *strip {
                        out.extend_from_slice(line);
                        out.extend_from_slice(rest);
                    }
                    line.clear();
                    *overlong = true;
                } else {
                    line.extend_from_slice(rest);
                }
                if *strip {
                    Bytes::from(out)
                } else {
                    data
                }
            }
        }
    }

    /// The bytes held back at the end of the answer (an unfinished last line).
    pub fn finish(&mut self) -> Option<Bytes> {
        let held = match &mut self.reading {
            Reading::Events {
                line, strip: true, ..
            } if !line.is_empty() => Some(Bytes::from(std::mem::take(line))),
            _ => None,
        };
        self.record();
        held
    }

    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        if let Reading::Json { before, last } = &self.reading {
            let last = last.as_deref().unwrap_or_default();
            self.usage = usage_in_json(last).or_else(|| {
                // Not in the last piece alone: across the two, or in the pieces before.
                let mut both = before.clone();
                both.extend_from_slice(last);
                usage_in_json(&both)
            });
        }
        let mut counts = self.usage.unwrap_or_default();
        counts.requests = 1;
        if let (Some(series), Some(usage)) = (&self.series, self.usage) {
            series.prompt.observe(usage.prompt_tokens as f64);
            series.completion.observe(usage.completion_tokens as f64);
            let from = match self.reading {
                Reading::Events { .. } => self.first_chunk,
                Reading::Json { .. } => Some(self.started),
            };
            let took = from.map(|from| from.elapsed().as_secs_f64());
            if let Some(took) = took.filter(|t| *t > 0.0 && usage.completion_tokens > 0) {
                series.rate.observe(usage.completion_tokens as f64 / took);
            }
        }
        self.keys
            .record(&self.caller, &self.model, &self.deployment, counts);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record();
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The usage in a `data:` line, and whether the chunk is nothing but usage (no choices).
fn usage_chunk(line: &[u8]) -> Option<(Counts, bool)> {
    let data = line.strip_prefix(b"data:")?;
    // Most lines carry no usage: they are not parsed.
    USAGE_IN_LINE.find(data)?;
    let chunk: Chunk = serde_json::from_slice(data.trim_ascii_start()).ok()?;
    let usage = chunk.usage?;
    Some((
        Counts {
            requests: 0,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        chunk.choices.is_none_or(|c| c.is_empty()),
    ))
}

/// The key every usage is found by, and the two counts in it: searchers made once.
static USAGE_KEY: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));
static USAGE_IN_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
static PROMPT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"prompt_tokens\""));
static COMPLETION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"completion_tokens\""));

/// The last `"usage": {...}` in a JSON answer's kept end.
fn usage_in_json(tail: &[u8]) -> Option<Counts> {
    // Usage comes last: its last 512 bytes first, then the rest.
    let near_end = tail.len().saturating_sub(512);
    let at = USAGE_KEY
        .rfind(&tail[near_end..])
        .map(|at| near_end + at)
        .or_else(|| USAGE_KEY.rfind(&tail[..(near_end + 6).min(tail.len())]))?;
    let rest = tail[at + b"\"usage\"".len()..].trim_ascii_start();
    usage_object(rest.strip_prefix(b":")?)
}

/// The counts of the usage object `text` starts with (`null`: none), read by hand: a full JSON
/// parse of it cost more than the rest of the request's metering. The counts are the first
/// `prompt_tokens` and `completion_tokens` after its opening brace (OpenAI and vLLM put them
/// first; what else it holds, `prompt_tokens_details` say, comes after them).
fn usage_object(text: &[u8]) -> Option<Counts> {
    let object = text.trim_ascii_start().strip_prefix(b"{")?;
    Some(Counts {
        requests: 0,
        prompt_tokens: count_after(object, &PROMPT)?,
        completion_tokens: count_after(object, &COMPLETION).unwrap_or(0),
    })
}

/// The whole number after the first `key` and its colon in `object`.
fn count_after(object: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<u64> {
    let at = key.find(object)?;
    let rest = object[at + key.needle().len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let mut n: u64 = 0;
    let mut digits = 0;
    for b in rest.iter().take_while(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// For a streaming request (`stream`) that did not ask for usage (`include_usage`), the body
/// asking for it (`stream_options.include_usage`), so the stream can be metered; `None` when
/// the body stays as it is.
pub fn ask_for_usage(stream: bool, include_usage: bool, body: &[u8]) -> (StreamAsk, Option<Bytes>) {
    let unchanged = (
        StreamAsk {
            stream,
            added_usage: false,
        },
        None,
    );
    if !stream || include_usage {
        return unchanged;
    }
    let rewritten = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| {
            let options = v
                .as_object_mut()?
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            if !options.is_object() {
                *options = serde_json::json!({});
            }
            options
                .as_object_mut()?
                .insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&v).ok()
        });
    match rewritten {
        Some(body) => (
            StreamAsk {
                stream,
                added_usage: true,
            },
            Some(Bytes::from(body)),
        ),
        None => unchanged,
    }
}

#[cfg(test)]
mod tests;
