//! Reading the examples out of a Markdown document: its ```console blocks that run grpcurl,
//! each `$ ` command (with its `\` continuation lines) and the output shown after it; and
//! splitting a command into words as a POSIX shell would for the subset the docs use.

use std::collections::HashMap;

/// The marker put right before a block that cannot run here, with the reason in brackets.
pub const SKIP_MARKER: &str = "<!-- docs-examples: skip";

/// A ```console block holding at least one grpcurl command.
pub struct Block {
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The reason of a `<!-- docs-examples: skip (…) -->` marker right before the block.
    pub skip: Option<String>,
    pub commands: Vec<Example>,
}

/// One `$ ` command and the output the doc shows for it.
pub struct Example {
    /// 1-based line of the `$ `.
    pub line: usize,
    /// The command without its `$ `; continuation lines kept (`\`, newline and all).
    pub command: String,
    /// The lines shown after the command, up to the next `$ ` or the end of the block.
    pub output: Vec<String>,
}

/// The console blocks of `text` that run grpcurl, in document order.
pub fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence.len();
        let console = fence.trim_end() == "```console";
        let open = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push((i + 1, lines[i].get(indent..).unwrap_or(lines[i].trim_start())));
            i += 1;
        }
        i += 1;
        if console && body.iter().any(|(_, l)| l.contains("grpcurl")) {
            found.push(Block { line: open + 1, skip: skip_reason(&lines[..open]), commands: examples(&body) });
        }
    }
    found
}

/// The reason of a skip marker on the last non-blank line before a block.
fn skip_reason(before: &[&str]) -> Option<String> {
    let last = before.iter().rev().find(|l| !l.trim().is_empty())?.trim();
    let rest = last.strip_prefix(SKIP_MARKER)?.strip_suffix("-->")?.trim();
    Some(rest.trim_start_matches('(').trim_end_matches(')').to_owned())
}

fn examples(body: &[(usize, &str)]) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut lines = body.iter();
    while let Some(&(number, line)) = lines.next() {
        if let Some(command) = line.strip_prefix("$ ") {
            let mut command = command.to_owned();
            while command.ends_with('\\') || inside_quotes(&command) {
                let Some((_, next)) = lines.next() else { break };
                command.push('\n');
                command.push_str(next);
            }
            examples.push(Example { line: number, command, output: Vec::new() });
        } else if let Some(last) = examples.last_mut() {
            last.output.push(line.to_owned());
        } else if !line.trim().is_empty() {
            // Output before any command: kept as a command the runner refuses to run.
            examples.push(Example { line: number, command: line.to_owned(), output: Vec::new() });
        }
    }
    examples
}

/// Whether `text` ends inside a quoted string (the command goes on on the next line).
fn inside_quotes(text: &str) -> bool {
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\\') | (Some('"'), '\\') => {
                chars.next();
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    quote.is_some()
}

/// Splits a command into words: whitespace, `'…'`, `"…"`, `$NAME` and `${NAME}` (from
/// `vars`), `\` escapes and line continuations, `#` comments. Anything else a shell would treat
/// specially (pipes, redirections, `;`, `$(…)`) is refused, naming it.
pub fn words(command: &str, vars: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\\' => match chars.next() {
                Some('\n') => words.extend(word.take()),
                Some(escaped) => word.get_or_insert_default().push(escaped),
                None => return Err("a `\\` at the end of the command".into()),
            },
            '\'' => {
                let w = word.get_or_insert_default();
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("an unclosed `'`".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_default();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\' | '$')) => {
                            w.push(chars.next().unwrap_or('\\'))
                        }
                        Some('$') => w.push_str(&expand(&mut chars, vars)?),
                        Some('`') => return Err("command substitution is not supported".into()),
                        Some(c) => w.push(c),
                        None => return Err("an unclosed `\"`".into()),
                    }
                }
            }
            '$' => {
                let value = expand(&mut chars, vars)?;
                word.get_or_insert_default().push_str(&value);
            }
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '|' | ';' | '&' | '<' | '>' | '`' | '(' | ')' => {
                return Err(format!("`{c}` is shell syntax the examples runner does not support"));
            }
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn expand(chars: &mut std::iter::Peekable<std::str::Chars>, vars: &HashMap<String, String>) -> Result<String, String> {
    let braced = chars.peek() == Some(&'{');
    if braced {
        chars.next();
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if braced && chars.next() != Some('}') {
        return Err(format!("`${{{name}` is not closed"));
    }
    if name.is_empty() {
        return Err("`$` without a variable name (`$(…)` is not supported)".into());
    }
    vars.get(&name)
        .cloned()
        .ok_or_else(|| format!("`${name}` is not set: set it with a `$ {name}=…` line from an earlier output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_shell_quoting() {
        let vars = HashMap::from([("KEY".to_owned(), "kw_1".to_owned())]);
        let w = words("grpcurl -H \"authorization: Bearer $KEY\" \\\n  -d '{\"key\":\"'$KEY'\"}' x # note", &vars);
        assert_eq!(w.unwrap(), ["grpcurl", "-H", "authorization: Bearer kw_1", "-d", "{\"key\":\"kw_1\"}", "x"]);
        assert!(words("a | b", &vars).is_err());
        assert!(words("echo $NOPE", &vars).unwrap_err().contains("NOPE"));
    }

    #[test]
    fn blocks_keep_commands_outputs_and_skip_markers() {
        let doc = "text\n<!-- docs-examples: skip (needs TLS) -->\n```console\n$ grpcurl a \\\n  b\n{\n}\n$ grpcurl c '{\n}'\n```\n\
                   ```console\n$ keyward master status\n```\n";
        let found = blocks(doc);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].line, found[0].skip.as_deref()), (3, Some("needs TLS")));
        assert_eq!(found[0].commands[0].command, "grpcurl a \\\n  b");
        assert_eq!(found[0].commands[0].output, ["{", "}"]);
        assert_eq!((found[0].commands[1].line, found[0].commands[1].output.len()), (8, 0));
        assert_eq!(found[0].commands[1].command, "grpcurl c '{\n}'");
    }
}
