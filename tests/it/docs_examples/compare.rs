//! Comparing what grpcurl printed with what a doc shows: JSON on the stable fields, values
//! that change from run to run (ids, keys, times) on their shape, and the doc's literal values
//! tied to the run's values so later commands can use them.

use serde_json::Value;

/// Fields whose values differ from run to run: compared on presence and JSON type only (and,
/// for a value the doc shows twice, on being the same value both times).
pub const UNSTABLE: &[&str] = &[
    "key",
    "keyId",
    "rotatedTo",
    "rotatedFrom",
    "rotatedAt",
    "createdAt",
    "updatedAt",
    "disabledAt",
    "revokedAt",
    "lastRefillAt",
    "lastUsedAt",
    "rotationDeadline",
    "rotateBy",
    "retryAfter",
    "nextPageToken",
    "actor",
    "clientAddr",
    "at",
    "mac",
    "seq",
    "firstSeq",
    "lastSeq",
    "checked",
    "startedAt",
    "keysPending",
    "keysNotPlain",
];

/// The doc's values of unstable fields and the values this run gave them, longest first when
/// substituted so that no value replaces part of another.
#[derive(Default)]
pub struct Literals(Vec<(String, String)>);

/// Shorter values (counts, sequence numbers) are too likely to occur by chance in a command.
const MIN_LITERAL_LEN: usize = 12;

impl Literals {
    pub fn actual(&self, shown: &str) -> Option<&str> {
        self.0.iter().find(|(d, _)| d == shown).map(|(_, a)| a.as_str())
    }

    fn learn(&mut self, shown: &str, actual: &str) {
        if shown.chars().count() >= MIN_LITERAL_LEN && self.actual(shown).is_none() {
            self.0.push((shown.to_owned(), actual.to_owned()));
            self.0.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        }
    }

    /// `text` with every doc value replaced by this run's.
    pub fn to_actual(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |t, (shown, actual)| t.replace(shown, actual))
    }

    /// `text` with every id, key and token of this run replaced by the doc's, to print outputs
    /// that can be pasted into the doc. Times stay this run's: no command types them, and an
    /// output's times then agree with each other.
    pub fn to_shown(&self, text: &str) -> String {
        self.0
            .iter()
            .filter(|(shown, _)| humantime::parse_rfc3339(shown).is_err())
            .fold(text.to_owned(), |t, (shown, actual)| t.replace(actual, shown))
    }
}

/// The marker of left-out fields or elements: a line holding only `...` or `…`.
pub const ELLIPSIS: &str = "…";

/// Parses a shown JSON output (one or more documents) where `...` lines mark fields or array
/// elements left out; they become a `"…"` key (objects) or a trailing `"…"` element (arrays).
pub fn shown_json(lines: &[String]) -> Result<Vec<Value>, String> {
    let mut text = String::new();
    let mut stack: Vec<char> = Vec::new();
    for line in lines {
        let t = line.trim();
        if t == "..." || t == ELLIPSIS {
            match stack.last() {
                Some('{') => text.push_str("\"…\": null,\n"),
                Some('[') => text.push_str("\"…\",\n"),
                _ => return Err("a `...` line outside any JSON object or array".into()),
            }
            continue;
        }
        track_brackets(line, &mut stack);
        text.push_str(line);
        text.push('\n');
    }
    let text = drop_trailing_commas(&text);
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the shown output is not JSON (with `...` lines): {e}"))
}

fn track_brackets(line: &str, stack: &mut Vec<char>) {
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '"') | (false, '"') => in_string = !in_string,
            (false, '{' | '[') => stack.push(c),
            (false, '}' | ']') => {
                stack.pop();
            }
            _ => {}
        }
    }
}

fn drop_trailing_commas(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' && matches!(chars[i + 1..].iter().find(|c| !c.is_whitespace()), Some('}' | ']')) {
            continue;
        }
        out.push(c);
    }
    out
}

/// Checks `actual` against the doc's `shown` value at `path`; learns the doc's literal values.
pub fn json(shown: &Value, actual: &Value, path: &str, literals: &mut Literals) -> Result<(), String> {
    match (shown, actual) {
        (Value::Object(s), Value::Object(a)) => {
            let open = s.contains_key(ELLIPSIS);
            // Every field is compared, so that every shown value is learned, and the first
            // difference is reported.
            let mut first = Ok(());
            for (name, value) in s.iter().filter(|(n, _)| *n != ELLIPSIS) {
                let here = format!("{path}.{name}");
                let result = match a.get(name) {
                    None => Err(format!("{here}: shown, but the server sent no such field")),
                    Some(got) if UNSTABLE.contains(&name.as_str()) => unstable(value, got, &here, literals),
                    Some(got) => json(value, got, &here, literals),
                };
                first = first.and(result);
            }
            if let Some(extra) = a.keys().find(|k| !open && !s.contains_key(*k)) {
                first = first.and(Err(format!(
                    "{path}.{extra}: the server sent it but the doc does not show it (show it, or a `...` line)"
                )));
            }
            first
        }
        (Value::Array(s), Value::Array(a)) => {
            let open = s.last().is_some_and(|v| v == ELLIPSIS);
            let s = if open { &s[..s.len() - 1] } else { &s[..] };
            let mut first = Ok(());
            for (i, (s, a)) in s.iter().zip(a).enumerate() {
                first = first.and(json(s, a, &format!("{path}[{i}]"), literals));
            }
            if a.len() < s.len() || (!open && a.len() != s.len()) {
                first = first.and(Err(format!("{path}: {} elements shown, the server sent {}", s.len(), a.len())));
            }
            first
        }
        (Value::String(s), Value::String(a)) => {
            let s = literals.to_actual(s);
            let matches = match s.strip_suffix(ELLIPSIS) {
                Some(prefix) => a.starts_with(prefix),
                None => *a == s,
            };
            if matches { Ok(()) } else { Err(format!("{path}: shown {s:?}, the server sent {a:?}")) }
        }
        (s, a) if s == a => Ok(()),
        (s, a) => Err(format!("{path}: shown {s}, the server sent {a}")),
    }
}

/// An unstable field: the same JSON type; a value the doc showed before must be the same value
/// again; a new one is learned.
fn unstable(shown: &Value, actual: &Value, path: &str, literals: &mut Literals) -> Result<(), String> {
    match (shown, actual) {
        (Value::String(s), Value::String(a)) => {
            if s.ends_with(ELLIPSIS) {
                return Ok(());
            }
            match literals.actual(s) {
                Some(known) if known != a => Err(format!(
                    "{path}: the doc shows {s:?}, as it did earlier, but the server sent {a:?} where it sent {known:?} before"
                )),
                _ => {
                    literals.learn(s, a);
                    Ok(())
                }
            }
        }
        (Value::Number(_), Value::Number(_)) | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => {
            json(shown, actual, path, literals)
        }
        (s, a) => Err(format!("{path}: shown {s}, the server sent {a} (another JSON type)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn ellipsis_lines_leave_fields_out_and_unstable_values_are_learned() {
        let shown = shown_json(&lines(
            "{\n  \"keyId\": \"01a2-aaaa-bbbb\",\n  ...\n  \"scopes\": [\n    \"a\",\n    ...\n  ],\n}",
        ))
        .unwrap();
        let actual: Value = serde_json::json!({"keyId": "0199-cccc-dddd", "name": "x", "scopes": ["a", "b"]});
        let mut literals = Literals::default();
        json(&shown[0], &actual, "", &mut literals).unwrap();
        assert_eq!(literals.to_actual("get 01a2-aaaa-bbbb"), "get 0199-cccc-dddd");

        let closed = shown_json(&lines("{\"keyId\": \"01a2-aaaa-bbbb\"}")).unwrap();
        assert!(json(&closed[0], &actual, "", &mut literals).unwrap_err().contains(".name"));
        let other = serde_json::json!({"keyId": "0199-eeee-ffff"});
        assert!(json(&closed[0], &other, "", &mut literals).unwrap_err().contains("before"));
    }

    #[test]
    fn stable_values_must_match() {
        let shown = shown_json(&lines("{ \"code\": \"VERIFY_CODE_VALID\" }")).unwrap();
        let actual = serde_json::json!({"code": "VERIFY_CODE_INVALID"});
        assert!(json(&shown[0], &actual, "", &mut Literals::default()).unwrap_err().contains(".code"));
    }
}
