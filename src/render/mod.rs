//! Email rendering: Tera templates (subject, HTML, text, preheader) from a templates
//! directory or the embedded defaults, CSS inlined for mail clients, errors located at
//! FILE:LINE:COLUMN, and hot reload that only ever swaps in templates that check clean.
//! See `docs/templates.md` for the editor's view.

mod context;
mod embedded;
mod filters;
mod live;
mod problem;
#[cfg(test)]
mod tests;

pub use context::{
    CampaignInfo, CustomerInfo, EmailContext, OrderInfo, OrderLine, PickedItem, StoreInfo,
    first_name, sample_context,
};
pub use filters::{add_utm, format_money, local_date, pluralize};
pub use live::LiveTemplates;
pub use problem::Problem;

use problem::Sources;
use std::collections::BTreeMap;
use std::path::Path;

/// Width of the plain-text part generated from HTML (RFC 5322 recommends ≤ 78).
const TEXT_WIDTH: usize = 78;

/// Longest subject, in characters; a longer one is cut and ends in "…". RFC 5322 allows
/// 998 characters a header line, and the mailer folds encoded (non-ASCII) subjects, so
/// this keeps every line of the header within the limit with room to spare, whatever the
/// names and titles a template puts in; clients show about 60–80 characters anyway.
pub const MAX_SUBJECT_CHARS: usize = 250;

/// One rendered email.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendered {
    /// Single line, trimmed (newlines and runs of spaces collapsed), without control
    /// characters, at most [`MAX_SUBJECT_CHARS`] characters.
    pub subject: String,
    /// Full HTML document with the `<style>` rules inlined into `style` attributes.
    pub html: String,
    /// `body.txt` rendered, or text generated from the HTML when the campaign has none.
    pub text: String,
    /// `preheader.txt` rendered (single line), else the context's `preheader`.
    pub preheader: Option<String>,
}

/// A parsed, ready-to-render set of templates. Parsing happens once at load; rendering
/// only walks the parsed trees, and the CSS inliner is built once.
pub struct Templates {
    tera: tera::Tera,
    inliner: css_inline::CSSInliner<'static>,
    sources: Sources,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("root", &self.sources.root)
            .field("files", &self.sources.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Templates {
    /// Reads and parses every `.html` and `.txt` file under `dir`. All syntax errors of
    /// all files are reported, each naming its own file.
    pub fn load(dir: &Path) -> Result<Templates, Vec<Problem>> {
        let root = dir.display().to_string();
        let files = read_tree(dir, &root)?;
        Self::from_sources(Sources { root, files })
    }

    /// The templates shipped in the binary (a copy of `templates/`).
    pub fn embedded() -> Result<Templates, Vec<Problem>> {
        let files = embedded::EMBEDDED
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect();
        Self::from_sources(Sources {
            root: "templates".to_owned(),
            files,
        })
    }

    /// `load(dir)` when the directory exists, else the embedded defaults, so the binary
    /// works from anywhere. A directory that exists but is broken is an error, never
    /// silently replaced.
    pub fn load_or_embedded(dir: &Path) -> Result<Templates, Vec<Problem>> {
        if dir.is_dir() {
            Self::load(dir)
        } else {
            Self::embedded()
        }
    }

    fn from_sources(sources: Sources) -> Result<Templates, Vec<Problem>> {
        // Parse each file alone first: Tera stops at the first bad file, and we want
        // every problem, each attributed to the right file (a partial, not its includer).
        let problems: Vec<Problem> = sources
            .files
            .iter()
            .filter_map(|(name, src)| {
                tera::Template::new(name, None, src)
                    .err()
                    .map(|e| sources.parse_problem(name, &e))
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut tera = tera::Tera::default();
        // Only HTML is escaped; includes inherit the choice of the template rendered, so
        // a partial used from subject.txt or body.txt stays unescaped.
        tera.autoescape_on(vec![".html"]);
        filters::register(&mut tera);
        tera.add_raw_templates(sources.files.iter().map(|(n, s)| (n.as_str(), s.as_str())))
            .map_err(|e| vec![inheritance_problem(&sources, &e)])?;
        let inliner = css_inline::CSSInliner::options()
            .load_remote_stylesheets(false)
            .build();
        Ok(Templates {
            tera,
            inliner,
            sources,
        })
    }

    /// Template names ("upgrade/body.html") relative to the templates dir.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.files.keys().map(String::as_str)
    }

    /// Campaign template folders: those holding a `subject.txt`.
    pub fn campaigns(&self) -> Vec<String> {
        self.names()
            .filter_map(|n| n.strip_suffix("/subject.txt"))
            .filter(|n| !n.contains('/'))
            .map(str::to_owned)
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        self.sources.files.contains_key(name)
    }

    fn render_file(&self, name: &str, ctx: &tera::Context) -> Result<String, Problem> {
        self.tera
            .render(name, ctx)
            .map_err(|e| self.sources.render_problem(name, &e))
    }

    fn missing(&self, template: &str) -> Option<Problem> {
        let path = |n: &str| self.sources.path_of(n);
        let prefix = format!("{template}/");
        if !self.names().any(|n| n.starts_with(&prefix)) {
            return Some(Problem {
                file: path(template),
                line: 1,
                column: 1,
                message: format!("campaign template folder `{template}` does not exist"),
            });
        }
        ["subject.txt", "body.html"]
            .iter()
            .map(|f| format!("{template}/{f}"))
            .find(|n| !self.has(n))
            .map(|n| Problem {
                file: path(&n),
                line: 1,
                column: 1,
                message: "missing: every campaign needs subject.txt and body.html".to_owned(),
            })
    }

    /// Renders campaign `template` (a folder name such as "upgrade") for one email.
    pub fn render(&self, template: &str, ctx: &EmailContext) -> Result<Rendered, Problem> {
        if let Some(p) = self.missing(template) {
            return Err(p);
        }
        let body_html = format!("{template}/body.html");
        let mut tctx = tera::Context::from_serialize(ctx).map_err(|e| {
            self.sources
                .problem(&body_html, (1, 1), format!("context: {e}"))
        })?;
        let preheader_name = format!("{template}/preheader.txt");
        let preheader = if self.has(&preheader_name) {
            let p = one_line(&self.render_file(&preheader_name, &tctx)?);
            // The layout shows it as hidden inbox preview text.
            tctx.insert("preheader", &p);
            Some(p).filter(|p| !p.is_empty())
        } else {
            ctx.preheader.clone()
        };
        let subject = capped(
            one_line(&self.render_file(&format!("{template}/subject.txt"), &tctx)?),
            MAX_SUBJECT_CHARS,
        );
        let raw_html = self.render_file(&body_html, &tctx)?;
        let html = self.inliner.inline(&raw_html).map_err(|e| {
            self.sources
                .problem(&body_html, (1, 1), format!("CSS inlining failed: {e}"))
        })?;
        let body_txt = format!("{template}/body.txt");
        let text = if self.has(&body_txt) {
            self.render_file(&body_txt, &tctx)?
        } else {
            html_to_text(&raw_html).map_err(|e| {
                self.sources
                    .problem(&body_html, (1, 1), format!("text part: {e}"))
            })?
        };
        Ok(Rendered {
            subject,
            html,
            text,
            preheader,
        })
    }

    /// Renders every campaign with [`sample_context`] and returns all problems found:
    /// missing folders/files, render errors of each part, and a footer without the
    /// postal address or the unsubscribe link.
    pub fn check(&self, campaigns: &[(String, String)]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (template, strategy) in campaigns {
            if let Some(p) = self.missing(template) {
                problems.push(p);
                continue;
            }
            let ctx = sample_context(template, strategy);
            let Ok(tctx) = tera::Context::from_serialize(&ctx) else {
                continue;
            };
            // Each part on its own, so one broken part does not hide another.
            let mut part_failed = false;
            for part in ["subject.txt", "preheader.txt", "body.html", "body.txt"] {
                let name = format!("{template}/{part}");
                if self.has(&name)
                    && let Err(p) = self.render_file(&name, &tctx)
                {
                    part_failed = true;
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
            if part_failed {
                continue;
            }
            match self.render(template, &ctx) {
                Err(p) => problems.push(p),
                Ok(r) => problems.extend(self.footer_problems(template, &ctx, &r)),
            }
        }
        problems
    }

    fn footer_problems(&self, template: &str, ctx: &EmailContext, r: &Rendered) -> Vec<Problem> {
        let mut out = Vec::new();
        let html_name = format!("{template}/body.html");
        let txt_name = format!("{template}/body.txt");
        let text_file = if self.has(&txt_name) {
            &txt_name
        } else {
            &html_name
        };
        let wanted = [
            (
                "the store's postal address (store.postal_address)",
                &ctx.store.postal_address,
            ),
            (
                "the unsubscribe link (unsubscribe_url)",
                &ctx.unsubscribe_url,
            ),
        ];
        for (what, value) in wanted {
            // The inliner re-serializes HTML; compare on its escaping of the value.
            let in_html =
                r.html.contains(value.as_str()) || r.html.contains(&value.replace('&', "&amp;"));
            if !in_html {
                out.push(self.sources.problem(
                    &html_name,
                    (1, 1),
                    format!("the HTML part must show {what}; include \"partials/footer.html\""),
                ));
            }
            if !r.text.contains(value.as_str()) {
                out.push(self.sources.problem(
                    text_file,
                    (1, 1),
                    format!("the text part must show {what}; include \"partials/footer.txt\""),
                ));
            }
        }
        out
    }
}

/// Loads `dir` and checks `campaigns` ((template, strategy) pairs) with sample data.
/// Empty when everything parses and renders.
pub fn check(dir: &Path, campaigns: &[(String, String)]) -> Vec<Problem> {
    match Templates::load(dir) {
        Ok(t) => t.check(campaigns),
        Err(problems) => problems,
    }
}

/// Subject and preheader are header-like: one line, no surrounding space, and no control
/// character (a NUL from a stored name must not reach a header raw).
fn one_line(s: &str) -> String {
    let words: Vec<String> = s
        .split_whitespace()
        .map(|w| w.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ")
}

/// `s` cut to at most `max` characters, the cut marked with "…".
fn capped(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s,
        Some(_) => {
            let keep = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            format!("{}…", s[..keep].trim_end())
        }
    }
}

fn html_to_text(html: &str) -> Result<String, html2text::Error> {
    let text = html2text::config::plain().string_from_read(html.as_bytes(), TEXT_WIDTH)?;
    // html2text wraps the link list ("[3]: https://…") like prose, which breaks long
    // URLs over lines; join the pieces back so every link stays clickable.
    let mut out = String::with_capacity(text.len());
    let mut in_link_list = false;
    for line in text.lines() {
        let line = line.trim_end();
        if in_link_list && !line.is_empty() && !line.starts_with('[') {
            out.pop(); // the newline after the previous piece
        } else {
            in_link_list = is_link_line(line);
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// "[12]: https://…": an entry of html2text's link list.
fn is_link_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|r| r.split_once("]: "))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A failed `extends`/macro import after every file parsed on its own.
fn inheritance_problem(sources: &Sources, err: &tera::Error) -> Problem {
    if let tera::ErrorKind::MissingParent { current, parent } = &err.kind {
        let pos = sources
            .files
            .get(current)
            .and_then(|src| src.find(parent.as_str()).map(|o| problem::line_col(src, o)))
            .unwrap_or((1, 1));
        return sources.problem(
            current,
            pos,
            format!("extends `{parent}`, which does not exist"),
        );
    }
    let chain = problem::error_chain(err);
    let name = chain
        .split('\'')
        .nth(1)
        .filter(|n| sources.files.contains_key(*n))
        .unwrap_or("")
        .to_owned();
    sources.problem(&name, (1, 1), chain.replace('\n', ": "))
}

/// Every `.html`/`.txt` file under `dir`, by '/'-separated name relative to `dir`.
fn read_tree(dir: &Path, root: &str) -> Result<BTreeMap<String, String>, Vec<Problem>> {
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    let io_problem = |file: String, e: std::io::Error| Problem {
        file,
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    };
    while let Some((path, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) => {
                problems.push(io_problem(path.display().to_string(), e));
                continue;
            }
        };
        for entry in entries.flatten() {
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname.starts_with('.') {
                continue; // editor swap files, .DS_Store
            }
            let name = format!("{prefix}{fname}");
            let p = entry.path();
            if p.is_dir() {
                stack.push((p, format!("{name}/")));
            } else if fname.ends_with(".html") || fname.ends_with(".txt") {
                match std::fs::read_to_string(&p) {
                    Ok(s) => {
                        files.insert(name, s);
                    }
                    Err(e) => problems.push(io_problem(format!("{root}/{name}"), e)),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}
