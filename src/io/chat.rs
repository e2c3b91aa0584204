//! Conversations (`[{"role": ..., "content": ...}, ...]`) turned into the text a reward model
//! reads: by the model's own Jinja chat template, rendered as transformers'
//! `apply_chat_template` renders it (and TRL, vLLM and TGI after it), or, for a model without
//! one, in the HH-RLHF `"\n\nHuman: ...\n\nAssistant: ..."` format.
//!
//! The template comes from the checkpoint: `chat_template.jinja` (what transformers saves
//! since 4.43), else `tokenizer_config.json`'s `chat_template` (a string, or a list of named
//! templates of which `default` is used). It runs in minijinja with what transformers gives
//! its sandboxed Jinja environment: `trim_blocks` and `lstrip_blocks`, `break`/`continue`,
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes,
//! Python's string and dict methods, and the special tokens (`bos_token`, `eos_token`, ...) as
//! variables. A template is untrusted input: each render has a fuel budget (minijinja counts
//! instructions), so a template that loops forever fails instead of hanging the caller.

use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, ErrorKind as JinjaErrorKind};
use serde_json::Value;

use crate::error::{Error, Result};

/// The file transformers writes a checkpoint's chat template to (preferred when present).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The tokenizer's settings, which hold the chat template and the special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Most turns one conversation may have.
pub const MAX_CHAT_TURNS: usize = 1 << 16;
/// Jinja instructions one render may run, beyond a budget per input byte.
const FUEL_BASE: u64 = 10_000_000;

/// The special tokens a template may name (`{{ bos_token }}`), as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("special", &self.special).finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; a syntax error fails here, naming its line.
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self> {
        // The cap a template file has (it comes in a JSON file or beside one), for a source
        // passed directly too (rk_model_params.chat_template), before it is compiled.
        let cap = crate::limits::MAX_JSON_FILE_BYTES as usize;
        crate::limits::capped(source.len(), cap, "the chat template's length in bytes")?;
        let mut env = Environment::new();
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::invalid(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, special })
    }

    /// The chat template of a checkpoint directory `dir` whose `files` were read, if it has
    /// one (see the module docs for where it is looked for), or `source` with the directory's
    /// special tokens. A template that is present but broken is an error that names the file.
    pub fn from_files(dir: &Path, files: &ChatFiles, source: Option<&str>) -> Result<Option<Self>> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = match &files.tokenizer_config {
            Some(bytes) => serde_json::from_slice::<Value>(bytes)
                .map_err(|e| Error::corrupt(&config_path, format!("not valid JSON: {e}")))?,
            None => Value::Null,
        };
        let special = SpecialTokens {
            bos: special_token(&config, "bos_token"),
            eos: special_token(&config, "eos_token"),
            unk: special_token(&config, "unk_token"),
            pad: special_token(&config, "pad_token"),
        };
        if let Some(source) = source {
            return Self::new(source, special).map(Some);
        }
        if let Some(bytes) = &files.template {
            let file = dir.join(CHAT_TEMPLATE_FILE);
            let source = std::str::from_utf8(bytes)
                .map_err(|_| Error::corrupt(&file, "chat template is not UTF-8"))?;
            return Self::new(source, special).map(Some).map_err(|e| e.context(file.display()));
        }
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            // Named templates (transformers: `[{"name": "default", "template": ...}, ...]`).
            Some(Value::Array(named)) => {
                let default =
                    named.iter().find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
                match default.and_then(|t| t.get("template")).and_then(Value::as_str) {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(Error::corrupt(
                            &config_path,
                            "`chat_template` lists named templates but none named `default`",
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(Error::corrupt(
                    &config_path,
                    "`chat_template` must be a string or a list of named templates",
                ))
            }
        };
        Self::new(&source, special).map(Some).map_err(|e| e.context(config_path.display()))
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The text of `messages`, with the opening of an assistant turn appended when
    /// `add_generation_prompt` (what a policy generates after).
    pub fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String> {
        check_turns(messages)?;
        let input_bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        let mut env = self.env.clone();
        env.set_fuel(Some(FUEL_BASE.saturating_add(input_bytes as u64 * 64)));
        let template = env.get_template(TEMPLATE_NAME).expect("added at construction");
        let ctx = minijinja::context! {
            messages => JinjaValue::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.special.bos.as_deref(),
            eos_token => self.special.eos.as_deref(),
            unk_token => self.special.unk.as_deref(),
            pad_token => self.special.pad.as_deref(),
        };
        // The output is capped as the instructions are: a template that prints a huge string
        // many times stays within a few instructions but not within memory.
        let cap = input_bytes
            .saturating_mul(4)
            .saturating_add(RENDER_SLACK_BYTES)
            .min(crate::limits::MAX_TEXT_BYTES);
        let mut out = CappedWriter { bytes: Vec::new(), cap, over: false };
        let rendered = template.render_captured_to(ctx, &mut out).map(drop);
        match rendered {
            Ok(()) => String::from_utf8(out.bytes)
                .map_err(|_| Error::invalid("chat template wrote text that is not UTF-8")),
            Err(_) if out.over => Err(Error::invalid(format!(
                "chat template wrote more than {cap} bytes for {input_bytes} bytes of turns \
                 (the limit is 4 times the turns plus {RENDER_SLACK_BYTES} bytes)"
            ))),
            Err(e) if e.kind() == JinjaErrorKind::OutOfFuel => Err(Error::invalid(
                "chat template ran out of its instruction budget (does it loop forever?)",
            )),
            Err(e) => Err(Error::invalid(format!("chat template failed: {e}"))),
        }
    }
}

/// What a rendering may write beyond 4 bytes per byte of its turns' JSON (system prompts and
/// tool descriptions a template adds on its own).
const RENDER_SLACK_BYTES: usize = 1 << 20;

/// An `io::Write` into memory that fails once `cap` bytes would be exceeded.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other("chat template output over its limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The tokenizer settings and chat template files of a checkpoint, as bytes: read once, and
/// written again next to every checkpoint saved from it.
#[derive(Debug, Clone, Default)]
pub struct ChatFiles {
    pub tokenizer_config: Option<Vec<u8>>,
    pub template: Option<Vec<u8>>,
}

impl ChatFiles {
    pub fn read(dir: &Path) -> Result<ChatFiles> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            crate::limits::read_file(&path, crate::limits::MAX_JSON_FILE_BYTES).map(Some)
        };
        Ok(ChatFiles {
            tokenizer_config: read(TOKENIZER_CONFIG_FILE)?,
            template: read(CHAT_TEMPLATE_FILE)?,
        })
    }

    /// (file name, bytes) of each file present.
    pub fn files(&self) -> Vec<(&'static str, Vec<u8>)> {
        [(TOKENIZER_CONFIG_FILE, &self.tokenizer_config), (CHAT_TEMPLATE_FILE, &self.template)]
            .into_iter()
            .filter_map(|(name, bytes)| bytes.clone().map(|b| (name, b)))
            .collect()
    }
}

/// Which template renders conversations for a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ChatTemplateChoice {
    /// The checkpoint's own (`chat_template.jinja` or `tokenizer_config.json`); the HH format
    /// for a checkpoint without one.
    #[default]
    Model,
    /// The HH-RLHF text format, even when the checkpoint has a template.
    Hh,
    /// This Jinja source, with the checkpoint's special tokens.
    Source(String),
}

/// A special token from tokenizer_config.json: a string or an `AddedToken` object.
fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A conversation from JSON text: an array of turns (`[{"role": ..., "content": ...}]`).
pub fn parse_turns(json: &str) -> Result<Vec<Value>> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(turns)) => {
            check_turns(&turns)?;
            Ok(turns)
        }
        Ok(_) => Err(Error::invalid("a conversation must be a JSON array of turns")),
        Err(e) => Err(Error::invalid(format!("a conversation is not valid JSON: {e}"))),
    }
}

/// Every turn is an object with a string `role`; the count is capped.
fn check_turns(turns: &[Value]) -> Result<()> {
    if turns.is_empty() {
        return Err(Error::invalid("empty list of turns"));
    }
    crate::limits::capped(turns.len(), MAX_CHAT_TURNS, "turns in a conversation")?;
    for (i, turn) in turns.iter().enumerate() {
        if turn.get("role").and_then(Value::as_str).is_none() {
            return Err(Error::invalid(format!("turn {i} has no string `role`")));
        }
    }
    Ok(())
}

fn raise_exception(message: String) -> std::result::Result<JinjaValue, minijinja::Error> {
    Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)`, so `{"a": 1, "b": [1, 2]}` with Python's spacing and
/// dict keys in their order.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(out)
}

/// Python's `json.dumps` layout: `", "` and `": "` separators inline, `","` and newlines
/// with `indent` spaces per level when indenting.
fn write_python_json(
    v: &JinjaValue,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    let (open, close, is_map) = match v.kind() {
        ValueKind::Seq | ValueKind::Iterable => ('[', ']', false),
        ValueKind::Map => ('{', '}', true),
        ValueKind::Undefined | ValueKind::None => {
            out.push_str("null");
            return Ok(());
        }
        // Scalars: serde_json's escaping is Python's with ensure_ascii=False.
        _ => {
            let json = serde_json::to_string(v).map_err(|e| {
                minijinja::Error::new(JinjaErrorKind::InvalidOperation, format!("tojson: {e}"))
            })?;
            out.push_str(&json);
            return Ok(());
        }
    };
    let mut items: Vec<JinjaValue> = v.try_iter()?.collect();
    if is_map && sort {
        items.sort_by_key(|k| k.to_string());
    }
    out.push(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(item_separator);
        }
        newline(out, depth + 1);
        if is_map {
            out.push_str(&Value::String(item.to_string()).to_string());
            out.push_str(": ");
            write_python_json(&v.get_item(item)?, indent, sort, depth + 1, out)?;
        } else {
            write_python_json(item, indent, sort, depth + 1, out)?;
        }
    }
    if !items.is_empty() {
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

/// `strftime_now(format)`: the current UTC time, for the `%d %b %Y`-style formats templates
/// use (Llama 3.2 writes "Today Date: 02 Dec 2026").
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] =
    ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// C's strftime for the common conversions, at `secs` since the epoch (UTC).
fn strftime(format: &str, secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// How lists of turns become text: a model's chat template, or the HH-RLHF format.
#[derive(Debug, Clone, Default)]
pub enum ChatFormat {
    /// `"\n\nHuman: ...\n\nAssistant: ..."`, the bundled data's own format.
    #[default]
    Hh,
    Template(Arc<ChatTemplate>),
}

impl ChatFormat {
    /// The text of `turns`, ending with the opening of an assistant turn when
    /// `add_generation_prompt`.
    pub fn render(&self, turns: &[Value], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatFormat::Template(t) => t.render(turns, add_generation_prompt),
            ChatFormat::Hh => {
                check_turns(turns)?;
                let mut text = render_hh(turns)?;
                if add_generation_prompt {
                    text.push_str(crate::io::data::HH_ASSISTANT);
                }
                Ok(text)
            }
        }
    }

    /// Conversations that share `history` and continue with each of `replies`, as one shared
    /// prompt and a response text per reply: `prompt + responses[i]` is exactly the rendering
    /// of `history + replies[i]`. The prompt is the rendering of `history` with the generation
    /// prompt, cut back to what every full rendering begins with (TRL's rule: some templates
    /// open the generation prompt differently from a finished turn).
    pub fn split(&self, history: &[Value], replies: &[&[Value]]) -> Result<(String, Vec<String>)> {
        if history.is_empty() {
            return Err(Error::invalid("the conversation has no turns before the response"));
        }
        let mut prompt = self.render(history, true)?;
        let mut full = Vec::with_capacity(replies.len());
        for reply in replies {
            if reply.is_empty() {
                return Err(Error::invalid("a response has no turns"));
            }
            let text = self.render(&[history, reply].concat(), false)?;
            prompt.truncate(common_prefix_len(&prompt, &text));
            full.push(text);
        }
        let responses = full.into_iter().map(|t| t[prompt.len()..].to_string()).collect();
        Ok((prompt, responses))
    }
}

/// Bytes `a` and `b` begin with in common, at a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Turns in the HH-RLHF text format.
fn render_hh(turns: &[Value]) -> Result<String> {
    let mut out = String::new();
    for (i, turn) in turns.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = turn
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(format!("turn {i} has no string `content`")))?;
        let speaker = match role {
            "user" | "human" => "Human",
            "assistant" | "gpt" | "model" => "Assistant",
            "system" => "System",
            other => return Err(Error::invalid(format!("turn {i} has unknown role `{other}`"))),
        };
        out.push_str(&format!("\n\n{speaker}: {content}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(src: &str) -> ChatTemplate {
        let special = SpecialTokens { bos: Some("<s>".into()), ..Default::default() };
        ChatTemplate::new(src, special).unwrap()
    }

    #[test]
    fn renders_with_transformers_whitespace_rules() {
        // trim_blocks and lstrip_blocks: block tags leave no newline or indentation behind.
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n\
             U:{{ m.content | trim }}\n  {% else %}\nA:{{ m.content }}\n  {% endif %}\n\
             {% endfor %}{% if add_generation_prompt %}A:{% endif %}",
        );
        let msgs = [
            json!({"role": "user", "content": " hi "}),
            json!({"role": "assistant", "content": "yo"}),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "<s>U:hi\nA:yo\n");
        assert_eq!(t.render(&msgs[..1], true).unwrap(), "<s>U:hi\nA:");
    }

    #[test]
    fn python_methods_exceptions_and_json() {
        let t = template(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}\
             {% endif %}{{ messages[0].content.strip().upper() }}|{{ messages[0] | tojson }}",
        );
        let out = t.render(&[json!({"role": "user", "content": " a\"é "})], false).unwrap();
        // Keys in the row's own order (Python keeps insertion order).
        assert_eq!(out, "A\"É|{\"role\": \"user\", \"content\": \" a\\\"é \"}");
        let e = t.render(&[json!({"role": "system", "content": "x"})], false).unwrap_err();
        assert!(e.message().contains("first must be user"), "{}", e.message());
        let mut out = String::new();
        let v = JinjaValue::from(minijinja::value::Serde(json!({"b": [1, {}], "a": []})));
        write_python_json(&v, Some(2), true, 0, &mut out).unwrap();
        assert_eq!(out, "{\n  \"a\": [],\n  \"b\": [\n    1,\n    {}\n  ]\n}");
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let t = template(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        );
        let e = t.render(&[json!({"role": "user", "content": "x"})], false).unwrap_err();
        assert!(e.message().contains("instruction budget"), "{}", e.message());
        assert!(ChatTemplate::new("{% for %}", SpecialTokens::default()).is_err());
        let huge = "x".repeat(crate::limits::MAX_JSON_FILE_BYTES as usize + 1);
        let e = ChatTemplate::new(&huge, SpecialTokens::default()).unwrap_err();
        assert!(e.message().contains("chat template's length"), "{}", e.message());
        assert!(t.render(&[json!({"content": "x"})], false).is_err());
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn output_is_capped_by_the_size_of_the_turns() {
        let turns = [json!({"role": "user", "content": "x"})];
        // Few instructions, gigabytes of output: refused at the cap, not after the allocation.
        for src in
            ["{% for i in range(100000) %}{{ 'y' * 99999 }}{% endfor %}", "{{ 'x' * 99999999 }}"]
        {
            let e = template(src).render(&turns, false).unwrap_err();
            assert!(e.message().contains("wrote more than"), "{src}: {}", e.message());
        }
        // Up to the cap is fine: 4 bytes per byte of turns plus the slack.
        let long = "z".repeat(3 << 20);
        let t = template("{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}");
        let text = t.render(&[json!({"role": "user", "content": long})], false).unwrap();
        assert_eq!(text.len(), 6 << 20);
    }

    #[test]
    fn split_gives_the_shared_prompt_and_each_response() {
        let history = [json!({"role": "user", "content": "hi"})];
        let a = [json!({"role": "assistant", "content": "b"})];
        let b = [json!({"role": "assistant", "content": "<c>"})];
        // The generation prompt opens with "<think>", which a finished turn does not have.
        let t = ChatFormat::Template(Arc::new(template(
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}\
             {% if add_generation_prompt %}[assistant]<think>{% endif %}",
        )));
        let (prompt, responses) = t.split(&history, &[&a, &b]).unwrap();
        assert_eq!(prompt, "[user]hi[assistant]");
        assert_eq!(responses, ["b", "<c>"]);
        // The cut is by characters: it may fall inside what the responses begin with, which
        // changes nothing scored (prompt and response are joined before tokenizing).
        let (prompt, responses) = t.split(&history, &[&b]).unwrap();
        assert_eq!((prompt.as_str(), responses[0].as_str()), ("[user]hi[assistant]<", "c>"));
        let (prompt, responses) = ChatFormat::Hh.split(&history, &[&a]).unwrap();
        assert_eq!(prompt, "\n\nHuman: hi\n\nAssistant:");
        assert_eq!(responses, [" b"]);
        assert!(ChatFormat::Hh.split(&[], &[&a]).is_err());
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime("%d %b %Y %H:%M:%S %A %%", t), "26 Jul 2024 13:05:09 Friday %");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
