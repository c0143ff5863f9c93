//! Reading `/metrics`: a bare HTTP/1.1 GET, and a strict parser of the OpenMetrics text format
//! (the format Prometheus scrapes) that fails on anything it does not understand.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP response: status code, headers (lower-case names), body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// `METHOD path` on `addr`, `Connection: close`, read to the end.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting to the metrics port");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end with a blank line");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: HashMap<String, String> = lines
        .map(|l| l.split_once(':').expect("a header line"))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").expect("a Content-Length").parse().unwrap();
    assert_eq!(body.len(), length, "the body has its declared length");
    HttpResponse { status, headers, body: body.to_owned() }
}

/// A parsed exposition: every sample by name and labels.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: HashMap<String, String>,
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
}

impl Exposition {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// `get`, or 0 for a series not (yet) exposed.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    pub fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples.keys().flat_map(|(_, labels)| labels.values().map(String::as_str))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The suffixes a sample of each metric type may add to its family name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gauge" | "info" | "stateset" | "unknown" => &[""],
        other => panic!("unknown metric type {other:?}"),
    }
}

/// `{a="x",b="y"}` → labels; panics on anything malformed.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("a label in {text:?}"));
        assert!(valid_name(name), "label name {name:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {text:?}"),
            }
        };
        assert!(labels.insert(name.to_owned(), value).is_none(), "label {name} twice in {text:?}");
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or_else(|| {
            assert!(rest.is_empty(), "labels separated by commas in {text:?}");
            rest
        });
    }
    labels
}

/// Parses OpenMetrics text strictly: HELP/TYPE/UNIT before a family's samples, every sample in
/// a declared family with a suffix its type allows, valid names and values, no series twice,
/// and `# EOF` as the last line.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let lines = text.lines();
    let mut family: Option<(String, String)> = None;
    let mut eof = false;
    for line in lines {
        assert!(!eof, "nothing may follow # EOF");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().expect("a metric name"));
            assert!(valid_name(name), "metric name {name:?}");
            match keyword {
                "TYPE" => {
                    let kind = parts.next().expect("a type").to_owned();
                    suffixes(&kind);
                    assert!(out.types.insert(name.to_owned(), kind.clone()).is_none(), "{name} declared twice");
                    family = Some((name.to_owned(), kind));
                }
                "HELP" | "UNIT" => assert!(parts.next().is_some(), "{keyword} {name} has text"),
                other => panic!("unknown metadata line {other:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a numeric value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("labels end with }"))),
            None => (series, BTreeMap::new()),
        };
        let (family_name, kind) = family.as_ref().unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let suffix = name.strip_prefix(family_name.as_str()).unwrap_or_else(|| panic!("{name} outside {family_name}"));
        assert!(suffixes(kind).contains(&suffix), "{name} is not a {kind} sample of {family_name}");
        assert!(out.samples.insert((name.to_owned(), labels), value).is_none(), "series twice: {line:?}");
    }
    assert!(eof, "the exposition ends with # EOF");
    out
}

#[test]
fn the_parser_refuses_what_is_not_openmetrics() {
    let ok = "# HELP a_b x\n# TYPE a_b counter\na_b_total{k=\"v\\\"\"} 2\n# EOF\n";
    assert_eq!(parse(ok).get("a_b_total", &[("k", "v\"")]), Some(2.0));
    for bad in [
        "a 1\n# EOF\n",
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "# TYPE a gauge\na{k=v} 1\n# EOF\n",
        "# TYPE a gauge\na x\n# EOF\n",
        "# TYPE a gauge\na 1\na 2\n# EOF\n",
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
    }
}
