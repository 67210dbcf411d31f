//! [`Problem`]: a template error pinned to FILE:LINE:COLUMN, and the conversions from
//! Tera's errors. Tera gives positions only for syntax errors (pest's " --> L:C"); for
//! render errors we search the template sources for the offending token.

use std::collections::BTreeMap;
use std::fmt;

/// A template error at a position. `line` and `column` are 1-based (column in
/// characters); a problem about a whole file or folder points at 1:1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Path as the templates dir was given plus the template name
    /// ("templates/upgrade/body.html").
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for Problem {}

/// Template sources by name ("upgrade/body.html"), kept so errors can be located and
/// named relative to the dir the caller gave.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    /// How the templates dir was given ("templates"); prefixes every file name.
    pub root: String,
    pub files: BTreeMap<String, String>,
}

impl Sources {
    pub fn path_of(&self, name: &str) -> String {
        if self.root.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{}", self.root.trim_end_matches('/'), name)
        }
    }

    pub fn problem(
        &self,
        name: &str,
        (line, column): (usize, usize),
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            file: self.path_of(name),
            line,
            column,
            message: message.into(),
        }
    }

    /// A syntax error of one file, from `tera::Template::new`.
    pub fn parse_problem(&self, name: &str, err: &tera::Error) -> Problem {
        let src = self.files.get(name).map(String::as_str).unwrap_or("");
        let chain = error_chain(err);
        // An unclosed block makes pest complain at the end of the file; the opening tag
        // is what the editor needs to see.
        if let Some((pos, message)) = unbalanced_block(src) {
            return self.problem(name, pos, message);
        }
        let pos = pest_position(&chain).unwrap_or((1, 1));
        let expected = chain
            .lines()
            .find_map(|l| l.trim().strip_prefix("= "))
            .map(str::to_owned)
            .unwrap_or_else(|| last_line_of(&chain));
        self.problem(name, pos, format!("syntax error: {expected}"))
    }

    /// A render error of `template` (a top-level name such as "upgrade/body.html").
    /// Finds which file holds the offending variable/filter/include and where.
    pub fn render_problem(&self, template: &str, err: &tera::Error) -> Problem {
        let chain = error_chain(err);
        let message = most_specific(err);
        // Candidate files: those the error names (innermost first), then the rendered
        // template, then every other file (parents and includes are not always named).
        let mut candidates: Vec<String> = quoted_names(&chain)
            .into_iter()
            .rev()
            .filter(|n| self.files.contains_key(n))
            .collect();
        candidates.push(template.to_owned());
        candidates.extend(self.files.keys().cloned());

        let needle = offending_token(err, &chain);
        if let Some(needle) = &needle {
            for name in &candidates {
                if let Some(pos) = self.files.get(name).and_then(|src| needle.find_in(src)) {
                    return self.problem(name, pos, message);
                }
            }
        }
        self.problem(template, (1, 1), message)
    }
}

/// Every message of the error and its sources, one per line.
pub(crate) fn error_chain(err: &tera::Error) -> String {
    let mut out = err.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(e) = cur {
        out.push('\n');
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// The innermost error message: what went wrong, without "Failed to render …".
fn most_specific(err: &tera::Error) -> String {
    let mut msg = err.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(e) = cur {
        msg = e.to_string();
        cur = e.source();
    }
    if let tera::ErrorKind::FilterNotFound(name) = innermost_kind(err) {
        return format!("unknown filter `{name}`");
    }
    if msg.starts_with("Variable `")
        && msg.contains("not found in context")
        && let Some(var) = between_backticks(&msg)
    {
        return format!("unknown variable `{var}` (see docs/templates.md for the variables)");
    }
    msg
}

fn innermost_kind(err: &tera::Error) -> &tera::ErrorKind {
    let mut last = &err.kind;
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<tera::Error>() {
            last = &t.kind;
        }
        cur = e.source();
    }
    last
}

fn last_line_of(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_owned()
}

/// " --> 3:12" in a pest message.
fn pest_position(chain: &str) -> Option<(usize, usize)> {
    let at = chain.find("--> ")? + 4;
    let rest = &chain[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let (l, c) = rest[..end].split_once(':')?;
    Some((l.parse().ok()?, c.parse().ok()?))
}

/// Template names quoted in Tera's messages ('upgrade/body.html'), in order.
fn quoted_names(chain: &str) -> Vec<String> {
    chain
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// What to search for in the sources.
enum Needle {
    /// A variable path such as `customer.nmae`, as a whole word.
    Variable(String),
    /// `| name`: a filter application.
    Filter(String),
    /// Any literal text (a template name in an include).
    Literal(String),
}

impl Needle {
    fn find_in(&self, src: &str) -> Option<(usize, usize)> {
        let offset = match self {
            Needle::Variable(v) => find_word(src, v, |_| true),
            Needle::Filter(f) => find_word(src, f, |before| before.trim_end().ends_with('|')),
            Needle::Literal(l) => src.find(l.as_str()),
        }?;
        Some(line_col(src, offset))
    }
}

/// First occurrence of `word` not glued to identifier characters (so `customer.nmae`
/// does not match inside `my_customer.nmae2`), and whose preceding text passes `ok`.
fn find_word(src: &str, word: &str, ok: impl Fn(&str) -> bool) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let mut start = 0;
    while let Some(i) = src[start..].find(word) {
        let at = start + i;
        let before = &src[..at];
        let after = &src[at + word.len()..];
        let clean_before = !before.chars().next_back().is_some_and(ident);
        let clean_after = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if clean_before && clean_after && ok(before) {
            return Some(at);
        }
        start = at + word.len().max(1);
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn between_backticks(s: &str) -> Option<String> {
    let a = s.find('`')? + 1;
    let b = s[a..].find('`')? + a;
    Some(s[a..b].to_owned())
}

fn offending_token(err: &tera::Error, chain: &str) -> Option<Needle> {
    match innermost_kind(err) {
        tera::ErrorKind::FilterNotFound(f) => return Some(Needle::Filter(f.clone())),
        tera::ErrorKind::TemplateNotFound(t) => return Some(Needle::Literal(t.clone())),
        tera::ErrorKind::FunctionNotFound(f) => return Some(Needle::Variable(f.clone())),
        tera::ErrorKind::TestNotFound(t) => return Some(Needle::Variable(t.clone())),
        _ => {}
    }
    for line in chain.lines() {
        if line.starts_with("Variable `") {
            return between_backticks(line).map(Needle::Variable);
        }
        if let Some(rest) = line.strip_prefix("Filter `") {
            return between_backticks(&format!("`{rest}")).map(Needle::Filter);
        }
        if let Some(rest) = line.strip_prefix("Function `") {
            return between_backticks(&format!("`{rest}")).map(Needle::Variable);
        }
    }
    None
}

/// Scans block tags (`{% if %}` … `{% endif %}`) and returns the first unmatched one:
/// an opener never closed, or a closer without (or not matching) its opener.
pub(crate) fn unbalanced_block(src: &str) -> Option<((usize, usize), String)> {
    const PAIRS: [(&str, &str); 6] = [
        ("if", "endif"),
        ("for", "endfor"),
        ("block", "endblock"),
        ("macro", "endmacro"),
        ("filter", "endfilter"),
        ("raw", "endraw"),
    ];
    let mut stack: Vec<(&str, usize)> = Vec::new();
    let mut i = 0;
    while let Some(rel) = src[i..].find("{%") {
        let at = i + rel;
        // Comments can hold anything, including tags.
        if let Some(c) = src[i..at].find("{#") {
            let cstart = i + c;
            match src[cstart..].find("#}") {
                Some(end) => {
                    i = cstart + end + 2;
                    continue;
                }
                None => return None,
            }
        }
        let Some(close) = src[at..].find("%}") else {
            return None; // pest reports that one precisely
        };
        let inner = src[at + 2..at + close].trim_start_matches('-').trim();
        let keyword = inner.split_whitespace().next().unwrap_or("");
        i = at + close + 2;
        if let Some((open, _)) = PAIRS.iter().find(|(o, _)| *o == keyword) {
            stack.push((open, at));
            if *open == "raw" {
                // Skip to the matching endraw: its content is not parsed.
                let mut j = i;
                while let Some(r) = src[j..].find("{%") {
                    let t = j + r;
                    let Some(e) = src[t..].find("%}") else { break };
                    let kw = src[t + 2..t + e].trim_matches('-').trim();
                    if kw == "endraw" {
                        stack.pop();
                        i = t + e + 2;
                        break;
                    }
                    j = t + e + 2;
                }
            }
        } else if let Some((open, _)) = PAIRS.iter().find(|(_, c)| *c == keyword) {
            match stack.pop() {
                Some((top, _)) if top == *open => {}
                Some((top, pos)) => {
                    let end = PAIRS.iter().find(|(o, _)| *o == top).map_or("", |p| p.1);
                    return Some((
                        line_col(src, pos),
                        format!(
                            "`{{% {top} %}}` is never closed: add `{{% {end} %}}` before `{{% {keyword} %}}`"
                        ),
                    ));
                }
                None => {
                    return Some((
                        line_col(src, at),
                        format!("`{{% {keyword} %}}` without an opening `{{% {open} %}}`"),
                    ));
                }
            }
        }
    }
    stack.pop().map(|(top, pos)| {
        let end = PAIRS.iter().find(|(o, _)| *o == top).map_or("", |p| p.1);
        (
            line_col(src, pos),
            format!("`{{% {top} %}}` is never closed: add `{{% {end} %}}`"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unbalanced_blocks() {
        assert_eq!(unbalanced_block("a {% if x %}b{% endif %}"), None);
        let (pos, msg) =
            unbalanced_block("line\n  {% if x %}\n{% for a in b %}{% endfor %}").unwrap();
        assert_eq!(pos, (2, 3));
        assert!(msg.contains("endif"), "{msg}");
        let (pos, _) = unbalanced_block("{% for a in b %}\n{% endif %}").unwrap();
        assert_eq!(pos, (1, 1));
        assert_eq!(
            unbalanced_block("{# {% if %} #}{% raw %}{% if %}{% endraw %}"),
            None
        );
        let (pos, msg) = unbalanced_block("x\n{% endif %}").unwrap();
        assert_eq!(pos, (2, 1));
        assert!(msg.contains("without"), "{msg}");
    }

    #[test]
    fn positions_and_words() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        let src = "{{ my_customer.nmae }} {{ customer.nmae }}";
        assert_eq!(find_word(src, "customer.nmae", |_| true), Some(26));
        assert_eq!(pest_position(" --> 3:12\n  |"), Some((3, 12)));
        let p = Problem {
            file: "t/a.html".into(),
            line: 3,
            column: 4,
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "t/a.html:3:4: bad");
    }
}
