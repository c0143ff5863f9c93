//! `keyward-bench console`: the web console's page times with many keys. Tops a running server
//! (started with `--console-listen`) up with keys by concurrent CreateKey, signs in to the
//! console with the admin key, then loads each main page `rounds` times, one at a time, and
//! reports for each the server's own time (the `Server-Timing` header the console sends) and
//! the time until the whole response was read here.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keyward::proto;

use crate::{
    error::{BenchError, Result},
    figures::{Figures, micros},
    target::{Presented, Target},
};

pub struct ConsoleOptions {
    /// Keys to add before measuring (0: measure what is there).
    pub keys: usize,
    /// CreateKey calls in flight while adding them.
    pub create_concurrency: usize,
    /// Loads of each page.
    pub rounds: usize,
    /// VerifyKey on one key for this long first, so its page is a busy key's (zero: none).
    pub busy: Duration,
}

struct Page {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: String,
    elapsed: Duration,
}

async fn get(addr: SocketAddr, method: &str, path: &str, cookie: &str, body: Option<String>) -> Result<Page> {
    let io = |what: &str| BenchError::io(format!("{what} the console at {addr}"));
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(io("connecting to"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| io("talking to")(std::io::Error::other(e)))?;
    tokio::spawn(connection);
    let origin = format!("http://{addr}");
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded");
    if !cookie.is_empty() {
        request = request.header("cookie", cookie);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("a valid request");
    let response = sender.send_request(request).await.map_err(|e| io("reading from")(std::io::Error::other(e)))?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| io("reading from")(std::io::Error::other(e)))?.to_bytes();
    Ok(Page {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// `text` as a form value: bytes other than A-Z a-z 0-9 - _ . ~ percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `app;dur=MS` of a `Server-Timing` header.
fn server_time(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("server-timing")?.to_str().ok()?;
    let ms: f64 = value.split("dur=").nth(1)?.split([',', ';']).next()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// The `href` of the page's `rel="prev"` or `rel="next"` link, unescaped.
fn rel_link(body: &str, rel: &str) -> Option<String> {
    let marker = format!("rel=\"{rel}\" href=\"");
    let at = body.find(&marker)? + marker.len();
    let end = body[at..].find('"')?;
    Some(body[at..at + end].replace("&amp;", "&"))
}

/// The `href` of the page's `rel="next"` link, unescaped.
fn next_link(body: &str) -> Option<String> {
    rel_link(body, "next")
}

/// The value of the page's CSRF field.
fn csrf_token(body: &str) -> Option<String> {
    let marker = "name=\"csrf\" value=\"";
    let at = body.find(marker)? + marker.len();
    let end = body[at..].find('"')?;
    Some(body[at..at + end].to_owned())
}

/// The text of the audit page's whole-chain result, tags removed, once the check finished.
fn whole_chain_result(body: &str) -> Option<String> {
    let at = body.find("id=\"whole-chain\"")?;
    let rest = &body[at..];
    let text = &rest[rest.find('>')? + 1..rest.find("</p>")?];
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    (!plain.starts_with("Checking")).then_some(plain)
}

/// Starts the audit page's whole-chain check and waits for its result; reports how long it took.
async fn whole_chain(console: SocketAddr, cookie: &str, out: &mut impl FnMut(String)) -> Result<()> {
    let audit = get(console, "GET", "/audit", cookie, None).await?;
    let csrf = csrf_token(&audit.body).ok_or(BenchError::Usage("the audit page has no CSRF field"))?;
    let started = Instant::now();
    get(console, "POST", "/audit/verify", cookie, Some(format!("csrf={}", percent_encode(&csrf)))).await?;
    loop {
        let page = get(console, "GET", "/audit", cookie, None).await?;
        if let Some(result) = whole_chain_result(&page.body) {
            out(format!(
                "whole-chain check: {result}; {:.1} s until the page showed it",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Usage("the whole-chain check did not finish within 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of pages a keys list says it has ("page N of M").
fn page_count(body: &str) -> Option<usize> {
    let at = body.find(" of ")?;
    let rest = &body[at..];
    let at = rest.find(", page ")?;
    let rest = &rest[at..];
    let of = rest.find(" of ")? + 4;
    rest[of..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Makes one key and verifies it from 16 tasks for `seconds` (then waits for the usage log's
/// flush), so that its page shows a busy key's chart; returns its id.
async fn busy_key(target: &Target, seconds: Duration, out: &mut impl FnMut(String)) -> Result<String> {
    let create = proto::CreateKeyRequest { name: "bench-console-busy".into(), ..Default::default() };
    let mut client = proto::key_service_client::KeyServiceClient::new(target.channel());
    let created = client.create_key(target.request(create)).await.map_err(|s| BenchError::call("CreateKey", &s))?;
    let created = created.into_inner();
    let id = created.info.map(|i| i.key_id).unwrap_or_default();
    let presented = Presented { key: Arc::new(created.key), client_ip: "192.0.2.7".into(), required_scopes: vec![] };
    let figures = target.run(&presented, 16, seconds).await?;
    out(figures.report(&format!("VerifyKey on the busy key, x16, {} s", seconds.as_secs())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(id)
}

pub async fn console(
    target: &str,
    console: SocketAddr,
    admin_key: &str,
    o: &ConsoleOptions,
    out: &mut impl FnMut(String),
) -> Result<()> {
    let connections = 4;
    let target = Target::connect(target, admin_key, connections).await?;
    let mut ids = Vec::new();
    if o.keys > 0 {
        let template = proto::CreateKeyRequest {
            name: "bench-console".into(),
            scopes: vec!["bench:read".into()],
            ..Default::default()
        };
        let (made, figures) = target.create_many(&template, o.keys, o.create_concurrency.max(1)).await?;
        out(figures
            .report(&format!("CreateKey, {} keys, x{} over {connections} connections", o.keys, o.create_concurrency)));
        ids = made;
    }

    let form = format!("key={}", percent_encode(admin_key));
    let signed_in = get(console, "POST", "/login", "", Some(form)).await?;
    let cookie = signed_in
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or(BenchError::Usage("signing in to the console failed: is --key-file an admin key of this server?"))?;

    let busy = if o.busy.is_zero() { None } else { Some(busy_key(&target, o.busy, out).await?) };

    let first = get(console, "GET", "/keys", &cookie, None).await?;
    let second = next_link(&first.body).unwrap_or_else(|| "/keys".into());
    let by_name = get(console, "GET", "/keys?sort=name&dir=desc", &cookie, None).await?;
    let last = page_count(&by_name.body).unwrap_or(1);
    let detail = match ids.last() {
        Some(id) => format!("/keys/{id}"),
        None => "/keys".into(),
    };
    let mut pages = vec![
        ("keys, first page (oldest first)", "/keys".to_owned()),
        ("keys, second page", second),
        ("keys, every key sorted by name, descending", "/keys?sort=name&dir=desc".to_owned()),
        ("keys, sorted by name, last page", format!("/keys?sort=name&dir=desc&page={last}")),
        ("keys, every key sorted by last use", "/keys?sort=last_used&dir=desc".to_owned()),
        ("keys, a name matching none", "/keys?name=no-such-key".to_owned()),
        ("keys, a name matching every bench key, sorted by owner", "/keys?name=bench&sort=owner".to_owned()),
        ("key page, a key never used", detail),
        ("audit (events, checkpoint, chain check of the latest 1000)", "/audit".to_owned()),
        ("master key with per-version counts", "/master".to_owned()),
    ];
    if let Some(id) = busy {
        pages.push(("key page, a busy key (usage chart, top addresses)", format!("/keys/{id}")));
    }
    for (what, path) in pages {
        let (mut server, mut client, mut errors) = (Vec::new(), Vec::new(), 0);
        let started = Instant::now();
        for _ in 0..o.rounds.max(1) {
            let page = get(console, "GET", &path, &cookie, None).await?;
            if page.status != http::StatusCode::OK {
                errors += 1;
            }
            server.push(micros(server_time(&page.headers).unwrap_or_default()));
            client.push(micros(page.elapsed));
        }
        let elapsed = started.elapsed();
        let (server, client) = (Figures::new(server, errors, elapsed), Figures::new(client, 0, elapsed));
        out(format!(
            "{what}: server ms p50 {:.2} p99 {:.2} max {:.2}; client ms p50 {:.2} max {:.2}; {} loads, {} not 200",
            server.quantile_ms(0.5),
            server.quantile_ms(0.99),
            server.quantile_ms(1.0),
            client.quantile_ms(0.5),
            client.quantile_ms(1.0),
            server.calls,
            errors
        ));
    }
    whole_chain(console, &cookie, out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_and_next_links_are_read() {
        let mut h = http::HeaderMap::new();
        h.insert("server-timing", "app;dur=12.345".parse().unwrap());
        assert_eq!(server_time(&h), Some(Duration::from_micros(12_345)));
        let body = r#"<a rel="next" href="/keys?name=a&amp;page=2">Next</a>"#;
        assert_eq!(next_link(body).as_deref(), Some("/keys?name=a&page=2"));
        assert_eq!(next_link("none"), None);
    }

    #[test]
    fn the_csrf_token_and_the_whole_chain_result_are_read() {
        assert_eq!(csrf_token(r#"<input type="hidden" name="csrf" value="ab12">"#).as_deref(), Some("ab12"));
        let done =
            r#"<p id="whole-chain" class="ok" role="status">Whole chain Intact: 9 events (checked <code>x</code>)</p>"#;
        assert_eq!(whole_chain_result(done).as_deref(), Some("Whole chain Intact: 9 events (checked x)"));
        let running = r#"<p id="whole-chain" role="status" data-refresh="2">Checking the whole chain</p>"#;
        assert_eq!(whole_chain_result(running), None);
    }

    #[test]
    fn the_page_count_is_read_from_the_summary() {
        let body = r#"<p id="list-summary">Keys 1–50 of 100001, page 1 of 2001.</p>"#;
        assert_eq!(page_count(body), Some(2001));
        assert_eq!(page_count("No keys match."), None);
    }
}
