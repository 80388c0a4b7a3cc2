//! Chat templates rendered with minijinja the way transformers renders them
//! with Jinja2 (`transformers.utils.chat_template_utils`):
//!
//! - `trim_blocks` and `lstrip_blocks` on, trailing newline dropped;
//!   `{% break %}` / `{% continue %}` (transformers enables `loopcontrols`);
//! - `raise_exception(msg)` and `strftime_now(fmt)` as globals; an exception
//!   the template raises is an error naming its message; the clock
//!   `strftime_now` reads can be pinned ([`ChatTemplate::with_clock`]);
//! - `tojson` as `json.dumps(x, ensure_ascii=False)`: no HTML escaping, Python's
//!   `", "` / `": "` separators, `indent`, `sort_keys`, `separators` arguments;
//! - values printed (`{{ x }}`) and the `string` filter as Python's `str()`:
//!   `True`, `None`, `{'name': 'f', 'strict': False}` (SmolLM3 lists its XML
//!   tools with `tool | string`);
//! - Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, ...)
//!   through minijinja-contrib's pycompat;
//! - `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker)
//!   rendered as plain blocks, and tracked: [`ChatTemplate::render_tracked`]
//!   says where each generation block's text is, as
//!   `apply_chat_template(return_assistant_tokens_mask=True)` does;
//! - the special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`),
//!   `tools` ([`Tools`], `None` without) and `documents=None` in the context,
//!   as transformers passes them;
//! - the template variables of `apply_chat_template(..., **kwargs)` (Qwen3's
//!   `enable_thinking`), from a config's `data.chat_template_kwargs`.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, context};

use crate::error::{DataError, Result};
use crate::schema::Message;
use crate::tokenizer::TokenizerConfig;

const NAME: &str = "chat_template";
/// The template with markers around each generation block's output.
const TRACKED: &str = "chat_template_tracked";
/// Where a generation block's output starts and ends in a tracked render
/// (private-use code points, refused in messages).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Context names the renderer sets itself: a template variable may not take
/// one (transformers raises a TypeError for the duplicate keyword).
const RESERVED: [&str; 4] = ["messages", "add_generation_prompt", "tools", "documents"];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The special tokens and the template variables.
    globals: Value,
    /// Whether the template marks the assistant's text with
    /// `{% generation %}` blocks.
    tracks: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// Tool definitions as `apply_chat_template(tools=[...])` takes them: JSON
/// schemas (`{"type": "function", "function": {"name", "description",
/// "parameters"}}`). Read from JSON text so that every object keeps its keys
/// in the order written, as Python's dicts do: templates print them
/// (`tojson`, `string`) in that order.
#[derive(Debug, Clone)]
pub struct Tools(Value);

impl Tools {
    /// Parse a JSON array of tool schemas.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DataError::config(format!("tools: malformed JSON: {e}")))?;
        if value.kind() != ValueKind::Seq {
            return Err(DataError::config(
                "tools: expected a JSON array of tool schemas",
            ));
        }
        Ok(Self(value))
    }
}

impl ChatTemplate {
    /// Compile `source`; the special tokens come from `config`, and
    /// `kwargs` are the template variables every render sees.
    pub fn new(
        source: &str,
        config: &TokenizerConfig,
        kwargs: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("string", python_str_filter);
        env.set_formatter(python_formatter);
        let compile = |env: &mut Environment<'static>, name: &'static str, text: String| {
            env.add_template_owned(name, text)
                .map_err(|e| DataError::Template {
                    reason: error_chain(&e),
                })
        };
        let plain = accept_generation_tags(source, false);
        // The rewrite changed something: the template has generation blocks.
        let tracks = plain != source;
        compile(&mut env, NAME, plain)?;
        if tracks {
            compile(&mut env, TRACKED, accept_generation_tags(source, true))?;
        }
        let mut globals = std::collections::BTreeMap::new();
        for (name, value) in kwargs {
            if RESERVED.contains(&name.as_str()) {
                return Err(DataError::config(format!(
                    "chat_template_kwargs.{name}: the renderer sets `{name}` itself"
                )));
            }
            globals.insert(name.clone(), Value::from_serialize(value));
        }
        for (name, tok) in [
            ("bos_token", &config.bos_token),
            ("eos_token", &config.eos_token),
            ("pad_token", &config.pad_token),
            ("unk_token", &config.unk_token),
        ] {
            if let Some(t) = tok {
                globals.insert(name.to_string(), Value::from(t.as_str()));
            }
        }
        Ok(Self {
            env,
            globals: Value::from_iter(globals),
            tracks,
        })
    }

    /// `strftime_now` reads this instant (Unix seconds) instead of the
    /// clock, so a template that prints today's date (SmolLM3's) renders
    /// reproducibly; transformers has no such argument (its fixtures
    /// patch `datetime`).
    pub fn with_clock(mut self, unix_secs: i64) -> Self {
        self.env
            .add_function("strftime_now", move |format: String| {
                strftime(&format, unix_secs)
            });
        self
    }

    /// Render a conversation. With `add_generation_prompt`, the template appends
    /// the header that starts an assistant turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_as(NAME, messages, add_generation_prompt, None)
    }

    /// [`Self::render`] with tool definitions, as
    /// `apply_chat_template(messages, tools=[...])` renders them.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: &Tools,
    ) -> Result<String> {
        self.render_as(NAME, messages, add_generation_prompt, Some(tools))
    }

    /// Whether the template has `{% generation %}` blocks.
    pub fn tracks_generation(&self) -> bool {
        self.tracks
    }

    /// [`Self::render`] of a conversation (no generation prompt) with the
    /// byte range of each `{% generation %}` block's output in the text;
    /// `None` when the template has no such block.
    pub fn render_tracked(
        &self,
        messages: &[Message],
    ) -> Result<Option<(String, Vec<std::ops::Range<usize>>)>> {
        if !self.tracks {
            return Ok(None);
        }
        if let Some(i) = messages
            .iter()
            .position(|m| m.content.contains([OPEN, CLOSE]))
        {
            return Err(DataError::example(
                Some(&format!("messages[{i}]")),
                "contains U+E000 or U+E001, which mark the template's generation blocks",
            ));
        }
        let marked = self.render_as(TRACKED, messages, false, None)?;
        let mut text = String::with_capacity(marked.len());
        let mut spans = Vec::new();
        let mut open = None;
        for c in marked.chars() {
            match c {
                OPEN => open = Some(text.len()),
                CLOSE => {
                    if let Some(start) = open.take() {
                        spans.push(start..text.len());
                    }
                }
                c => text.push(c),
            }
        }
        Ok(Some((text, spans)))
    }

    fn render_as(
        &self,
        name: &str,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&Tools>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| DataError::Template {
                reason: error_chain(&e),
            })?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            tools => tools.map_or(Value::from(()), |t| t.0.clone()),
            documents => Value::from(()),
            ..self.globals.clone()
        };
        tmpl.render(ctx).map_err(|e| {
            DataError::example(None, format!("chat template error: {}", error_chain(&e)))
        })
    }
}

fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Rewrite `{% generation %}` to `{% if true %}` and `{% endgeneration %}` to
/// `{% endif %}`, keeping whitespace-control markers, so the template renders
/// the same text as transformers' AssistantTracker extension produces;
/// `tracked`: with [`OPEN`] and [`CLOSE`] output inside, between block tags
/// (so `trim_blocks` and `lstrip_blocks` act as on the original tags).
fn accept_generation_tags(src: &str, tracked: bool) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let opens = match body {
            "generation" => Some(true),
            "endgeneration" => Some(false),
            _ => None,
        };
        match opens {
            Some(opens) => {
                let lead = if inner.starts_with('-') { "-" } else { "" };
                let trail = if inner.ends_with('-') { "-" } else { "" };
                let r = if opens { "if true" } else { "endif" };
                if tracked {
                    let (first, marker, last) = match opens {
                        true => ("if true", OPEN, "if true"),
                        false => ("endif", CLOSE, "endif"),
                    };
                    let _ = write!(
                        out,
                        "{{%{lead} {first} %}}{{{{ '{marker}' }}}}{{% {last} {trail}%}}"
                    );
                } else {
                    let _ = write!(out, "{{%{lead} {r} {trail}%}}");
                }
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `tojson` as transformers defines it:
/// `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(v.as_usize().unwrap_or(0))),
            ValueKind::String => Some(v.as_str().unwrap_or("").to_owned()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() && !s.is_undefined() => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match (
                parts.first().and_then(Value::as_str),
                parts.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) if parts.len() == 2 => (a.to_owned(), b.to_owned()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ));
                }
            }
        }
        // Python's defaults: ", " without indent, "," with it.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    dump(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn dump(v: &Value, o: &JsonOpts, depth: usize, out: &mut String) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_str(v.as_str().unwrap_or(""), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                dump(item, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                match key.as_str() {
                    Some(k) => write_str(k, o.ensure_ascii, out),
                    None => write_str(&key.to_string(), o.ensure_ascii, out),
                }
                out.push_str(&o.key_sep);
                dump(&v.get_item(key)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_str(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

/// Python's `repr(float)` for the common cases (`1.0`, `0.5`, `1e+20`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust prints `1e20`/`1e-7`; Python prints `1e+20`/`1e-07`.
        let s = format!("{f:e}");
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    let s = f.to_string();
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn write_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `{{ value }}` as Jinja2 prints it: Python's `str(value)` for `None`,
/// booleans, lists and dicts (`True`, `{'a': [1, None]}`); everything else
/// as minijinja prints it.
fn python_formatter(
    out: &mut Output<'_>,
    state: &State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_repr(value, &mut s)?;
            out.write_str(&s).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Jinja2's `string` filter: Python's `str(value)`; a string stays as it is.
fn python_str_filter(value: Value) -> std::result::Result<Value, Error> {
    match value.kind() {
        ValueKind::String => Ok(value),
        ValueKind::Undefined => Ok(Value::from("")),
        _ => {
            let mut s = String::new();
            python_repr(&value, &mut s)?;
            Ok(Value::from(s))
        }
    }
}

/// Python's `repr()` of a JSON-like value: `'single'` quoted strings (double
/// quotes when the text has a `'` and no `"`), `True`/`False`/`None`,
/// `[a, b]`, `{'k': v}` with the keys in their order.
fn python_repr(v: &Value, out: &mut String) -> std::result::Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(v.clone())?;
            match f {
                f if f.is_nan() => out.push_str("nan"),
                f if f.is_infinite() => out.push_str(if f > 0.0 { "inf" } else { "-inf" }),
                f => out.push_str(&python_float(f)),
            }
        }
        ValueKind::String => python_str_repr(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&key, out)?;
                out.push_str(": ");
                python_repr(&v.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

fn python_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !python_printable(c) => {
                let _ = match c as u32 {
                    n @ 0..=0xff => write!(out, "\\x{n:02x}"),
                    n @ 0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    n => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character, as `repr` uses it: not
/// a control (Cc), format (Cf, the common ones), private-use (Co) or
/// separator character other than the space (Zs, Zl, Zp). Unassigned code
/// points (Cn) are not known here and print as themselves.
fn python_printable(c: char) -> bool {
    let format = matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0xE0001 | 0xE0020..=0xE007F);
    let private = matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF);
    !(c.is_control() || format || private || (c.is_whitespace() && c != ' '))
}

/// `strftime_now(format)`: the current time formatted like Python's
/// `strftime` for the usual directives (`%Y %m %d %e %H %I %M %S %p %y %j %B
/// %b %A %a %%`); others are kept verbatim. transformers formats
/// `datetime.now()`, the local time; this is UTC (the same where the local
/// zone is UTC, as on CI machines and in containers).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

fn strftime(format: &str, unix_secs: i64) -> String {
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
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (tod / 3600, tod % 3600 / 60, tod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:>2}"),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mi:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('B') => write!(out, "{}", MONTHS[(m - 1) as usize]),
            Some('b') => write!(out, "{}", &MONTHS[(m - 1) as usize][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Role;

    fn cfg() -> TokenizerConfig {
        TokenizerConfig {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..Default::default()
        }
    }

    fn render(src: &str, msgs: &[Message]) -> Result<String> {
        ChatTemplate::new(src, &cfg(), &Default::default())?.render(msgs, false)
    }

    #[test]
    fn trim_and_lstrip_blocks_like_jinja2() {
        let src = "{{ bos_token }}\n  {% for m in messages %}\n    [{{ m.role }}]{{ m.content }}\n  {% endfor %}\n";
        let out = render(src, &[Message::new(Role::User, "hi")]).unwrap();
        // Jinja2 with trim_blocks + lstrip_blocks gives exactly this.
        assert_eq!(out, "<s>\n    [user]hi\n");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let src = "{{ messages | tojson }}|{{ {'b': 1, 'a': [1.0, 2.5, 'é<&>\"'], 'c': none} | tojson(indent=2) }}";
        let out = render(src, &[Message::new(Role::User, "<b>\"x\"</b>\n")]).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"<b>\\\"x\\\"</b>\\n\"}]|{\n  \"b\": 1,\n  \"a\": [\n    1.0,\n    2.5,\n    \"é<&>\\\"\"\n  ],\n  \"c\": null\n}"
        );
        let out = render(
            "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, separators=[',', ':']) }}",
            &[],
        )
        .unwrap();
        assert_eq!(out, "{\"a\":2,\"b\":1}");
    }

    #[test]
    fn raise_exception_is_an_error_with_the_message() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        let err = render(src, &[Message::new(Role::Assistant, "x")]).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
        assert_eq!(render(src, &[Message::new(Role::User, "x")]).unwrap(), "ok");
    }

    #[test]
    fn python_methods_and_generation_tags() {
        let src = "{% for m in messages %}{{ m.content.strip().upper() }}{% if m.content.startswith(' a') %}!{% endif %}{%- generation -%}[{{ m.role }}]{%- endgeneration %}{% endfor %}";
        let out = render(src, &[Message::new(Role::User, " ab ")]).unwrap();
        assert_eq!(out, "AB![user]");
    }

    #[test]
    fn undefined_tools_are_none() {
        let out = render(
            "{% if tools is not none %}tools{% else %}none{% endif %}",
            &[],
        )
        .unwrap();
        assert_eq!(out, "none");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %b %j %d %B %Y %%", 1_709_211_909),
            "2024-02-29 13:05:09 Thu Feb 060 29 February 2024 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        let now = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert!(now.parse::<i32>().unwrap() >= 2024);
    }

    /// Jinja2 prints values, and its `string` filter converts them, with
    /// Python's `str()`: `repr` inside containers, quotes chosen as Python
    /// chooses them, `True`/`None`.
    #[test]
    fn values_print_as_python_str() {
        let src = "{{ true }}|{{ none }}|{{ [1, 2.5, 'a', none] }}|{{ {'k': \"it's\", 'q': '\"', 'b': false, 'n': '\\n\\u00a0é'} | string }}|{{ 'x' | string }}|{{ undefined_name | string }}";
        let out = render(src, &[]).unwrap();
        assert_eq!(
            out,
            "True|None|[1, 2.5, 'a', None]|{'k': \"it's\", 'q': '\"', 'b': False, 'n': '\\n\\xa0é'}|x|"
        );
    }

    #[test]
    fn loop_controls_and_a_pinned_clock() {
        let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %} {{ strftime_now('%d %B %Y') }}";
        let t = ChatTemplate::new(src, &cfg(), &Default::default())
            .unwrap()
            .with_clock(1_752_148_800);
        let msgs = [Message::new(Role::User, "a"), Message::new(Role::User, "b")];
        assert_eq!(t.render(&msgs, false).unwrap(), "a 10 July 2025");
    }

    #[test]
    fn tools_keep_their_key_order() {
        let t = ChatTemplate::new(
            "{{ tools | tojson }}|{{ tools[0] | string }}",
            &cfg(),
            &Default::default(),
        )
        .unwrap();
        let tools =
            Tools::from_json(r#"[{"type": "function", "function": {"name": "f"}}]"#).unwrap();
        assert_eq!(
            t.render_with_tools(&[], false, &tools).unwrap(),
            r#"[{"type": "function", "function": {"name": "f"}}]|{'type': 'function', 'function': {'name': 'f'}}"#
        );
        assert!(Tools::from_json("{}").is_err());
    }

    #[test]
    fn compile_errors_are_reported() {
        let err = ChatTemplate::new("{% for %}", &cfg(), &Default::default()).unwrap_err();
        assert!(err.to_string().starts_with("chat template:"), "{err}");
    }
}
