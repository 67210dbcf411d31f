//! Data in (SPEC §3): JSON Lines for every kind, CSV for products and customers. Each
//! line becomes a domain record or a `FILE:LINE: field: why` report; good lines are
//! stored in chunks whatever the bad ones do. The HTTP API uses the same parsing and
//! storing (`parse_record`, `Batch::store`).

use crate::domain::ScheduleRule;
use crate::domain::{Customer, Event, FieldError, Order, Product, ProductId, Timestamp};
use crate::store::{ImportOutcome, Store, StoreError};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Products,
    Customers,
    Orders,
    Events,
}

impl Kind {
    pub fn parse(raw: &str) -> Result<Kind, String> {
        Ok(match raw {
            "products" => Kind::Products,
            "customers" => Kind::Customers,
            "orders" => Kind::Orders,
            "events" => Kind::Events,
            _ => {
                return Err(format!(
                    "{raw:?} is not one of products|customers|orders|events"
                ));
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Products => "products",
            Kind::Customers => "customers",
            Kind::Orders => "orders",
            Kind::Events => "events",
        }
    }
}

/// One bad input line.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub line: usize,
    pub error: FieldError,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub lines: usize,
    pub stored: usize,
    pub bad: Vec<BadLine>,
    /// Well-formed lines the order lifecycle refused in part (the stored order is
    /// further along, or newer): reported, not counted as bad.
    pub warnings: Vec<BadLine>,
    pub scheduled: u64,
    pub cancelled: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{name}: cannot read: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records of one kind, parsed and ready to store.
#[derive(Debug)]
pub enum Batch {
    Products(Vec<Product>),
    Customers(Vec<Customer>),
    Orders(Vec<Order>),
    Events(Vec<Event>),
}

/// What parsing needs to know: the catalog's product ids (orders must name known
/// products).
pub struct ParseContext {
    pub product_ids: HashSet<ProductId>,
}

impl ParseContext {
    pub async fn load(store: &Store, kind: Kind) -> Result<ParseContext, StoreError> {
        let product_ids = if kind == Kind::Orders {
            store.product_ids().await?
        } else {
            HashSet::new()
        };
        Ok(ParseContext { product_ids })
    }
}

impl Batch {
    pub fn new(kind: Kind) -> Batch {
        match kind {
            Kind::Products => Batch::Products(Vec::new()),
            Kind::Customers => Batch::Customers(Vec::new()),
            Kind::Orders => Batch::Orders(Vec::new()),
            Kind::Events => Batch::Events(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Batch::Products(v) => v.len(),
            Batch::Customers(v) => v.len(),
            Batch::Orders(v) => v.len(),
            Batch::Events(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses one JSON value of this batch's kind and keeps it; the first error if not.
    pub fn push(&mut self, v: &Value, ctx: &ParseContext) -> Result<(), FieldError> {
        self.push_all(v, ctx).map_err(|e| {
            e.into_iter()
                .next()
                .unwrap_or_else(|| FieldError::line("invalid"))
        })
    }

    /// Parses one JSON value of this batch's kind and keeps it; every error if not (type
    /// and format errors first, then referential ones).
    pub fn push_all(&mut self, v: &Value, ctx: &ParseContext) -> Result<(), Vec<FieldError>> {
        match self {
            Batch::Products(b) => b.push(Product::from_json_all(v)?),
            Batch::Customers(b) => b.push(Customer::from_json_all(v)?),
            Batch::Orders(b) => b.push(Order::from_json_all(v, |p| ctx.product_ids.contains(p))?),
            Batch::Events(b) => b.push(Event::from_json_all(v)?),
        }
        Ok(())
    }

    /// Upserts the batch (a repeated id: the last one wins, for orders as far as the
    /// order lifecycle allows) and schedules follow-ups.
    pub async fn store(
        self,
        store: &Store,
        rules: &[ScheduleRule],
        now: Timestamp,
    ) -> Result<ImportOutcome, StoreError> {
        let n = self.len();
        match self {
            Batch::Products(v) => {
                store
                    .upsert_products(&last_per_id(v, |p| p.id.to_string()))
                    .await?
            }
            Batch::Customers(v) => {
                store
                    .upsert_customers(&last_per_id(v, |c| c.id.to_string()))
                    .await?
            }
            // Not deduplicated: the store applies repeats in order, so a line that
            // would move an order back is refused and named, whatever came first.
            Batch::Orders(v) => return store.upsert_orders(&v, rules, now).await,
            Batch::Events(v) => store.insert_events(&v).await?,
        }
        Ok(ImportOutcome {
            stored: n,
            ..Default::default()
        })
    }
}

/// Keeps the last record of each id, in first-seen order (PostgreSQL refuses to update
/// one row twice in a statement, and the last line is the newest truth).
fn last_per_id<T>(v: Vec<T>, id: impl Fn(&T) -> String) -> Vec<T> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(v.len());
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for r in v {
        match index.get(&id(&r)) {
            Some(&i) => out[i] = r,
            None => {
                index.insert(id(&r), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// Records stored per transaction while importing a file.
const FLUSH: usize = 5000;

/// Imports one file or stream. `csv` selects CSV (products and customers only).
/// `progress` is told the bytes read so far.
pub async fn import_reader(
    store: &Store,
    kind: Kind,
    reader: impl BufRead,
    csv: bool,
    rules: &[ScheduleRule],
    now: Timestamp,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let ctx = ParseContext::load(store, kind).await?;
    let mut report = ImportReport::default();
    let mut batch = Batch::new(kind);
    let mut stored_lines = 0usize;
    // The input line of each record in `batch`, to name a record the store refused.
    let mut at: Vec<usize> = Vec::new();

    let mut writer = Writer {
        store: store.clone(),
        rules: rules.into(),
        now,
        pending: None,
    };

    let mut bytes = 0u64;
    for raw in read_lines(reader, csv) {
        let raw = raw?;
        report.lines += 1;
        bytes = bytes.max(raw.bytes);
        match raw.value.and_then(|v| batch.push(&v, &ctx)) {
            Ok(()) => {
                stored_lines += 1;
                at.push(raw.line);
            }
            Err(error) => report.bad.push(BadLine {
                line: raw.line,
                error,
            }),
        }
        if batch.len() >= FLUSH {
            writer
                .submit(
                    std::mem::replace(&mut batch, Batch::new(kind)),
                    std::mem::take(&mut at),
                    &mut report,
                )
                .await?;
            progress(bytes);
        }
    }
    if !batch.is_empty() {
        writer.submit(batch, at, &mut report).await?;
    }
    writer.wait(&mut report).await?;
    progress(bytes);
    report.stored = stored_lines;
    Ok(report)
}

/// One input line (a CSV record), turned into the JSON object the record parsers read,
/// or the `(line)`/column error that stopped that.
#[derive(Debug)]
pub struct RawLine {
    /// 1-based physical line where the record starts.
    pub line: usize,
    /// Bytes of input read so far (for progress).
    pub bytes: u64,
    pub value: Result<Value, FieldError>,
}

/// The records of a JSON Lines or CSV stream, one [`RawLine`] per non-blank line (CSV:
/// per record after the header row). Pure: no store, so the parsers can be tested (and
/// fuzzed) without a database; `import_reader` stores what this yields.
pub fn read_lines<R: BufRead>(reader: R, csv: bool) -> LineReader<R> {
    if csv {
        LineReader::Csv(CsvLines {
            rdr: csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(reader),
            headers: None,
            rec: csv::ByteRecord::new(),
            done: false,
            records: 0,
        })
    } else {
        LineReader::Json(JsonLines {
            reader,
            buf: Vec::with_capacity(4096),
            line: 0,
            bytes: 0,
        })
    }
}

pub enum LineReader<R> {
    Json(JsonLines<R>),
    Csv(CsvLines<R>),
}

impl<R: BufRead> Iterator for LineReader<R> {
    type Item = Result<RawLine, ImportError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            LineReader::Json(j) => j.next(),
            LineReader::Csv(c) => c.next().map(Ok),
        }
    }
}

pub struct JsonLines<R> {
    reader: R,
    buf: Vec<u8>,
    line: usize,
    bytes: u64,
}

impl<R: BufRead> JsonLines<R> {
    fn next(&mut self) -> Option<Result<RawLine, ImportError>> {
        loop {
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(source) => {
                    return Some(Err(ImportError::Read {
                        name: String::new(),
                        source,
                    }));
                }
            };
            if n == 0 {
                return None;
            }
            self.line += 1;
            self.bytes += n as u64;
            let raw = trim_eol(&self.buf);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(RawLine {
                line: self.line,
                bytes: self.bytes,
                value: parse_json_line(raw),
            }));
        }
    }
}

pub struct CsvLines<R> {
    rdr: csv::Reader<R>,
    headers: Option<Vec<String>>,
    rec: csv::ByteRecord,
    done: bool,
    records: usize,
}

impl<R: BufRead> CsvLines<R> {
    fn next(&mut self) -> Option<RawLine> {
        if self.done {
            return None;
        }
        if self.headers.is_none() {
            match self.rdr.byte_headers() {
                Ok(h) => {
                    self.headers = Some(
                        h.iter()
                            .map(|h| String::from_utf8_lossy(h).trim().to_owned())
                            .collect(),
                    )
                }
                Err(e) => {
                    self.done = true;
                    return Some(RawLine {
                        line: 1,
                        bytes: 0,
                        value: Err(FieldError::line(format!("bad CSV header: {e}"))),
                    });
                }
            }
        }
        let headers = self.headers.as_deref().unwrap_or_default();
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(false) => None,
            Ok(true) => {
                self.records += 1;
                let pos = self.rec.position();
                Some(RawLine {
                    line: pos.map_or(0, |p| p.line() as usize),
                    bytes: pos.map_or(0, |p| p.byte()),
                    value: csv_to_json(headers, &self.rec),
                })
            }
            Err(e) => {
                self.records += 1;
                let line = e.position().map_or(self.records + 1, |p| p.line() as usize);
                // A record of the wrong width or with bad UTF-8 is one bad line; any other
                // CSV error leaves the reader lost, so the rest is not guessed at.
                if !matches!(
                    e.kind(),
                    csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }
                ) {
                    self.done = true;
                }
                Some(RawLine {
                    line,
                    bytes: e.position().map_or(0, |p| p.byte()),
                    value: Err(FieldError::line(format!("bad CSV: {e}"))),
                })
            }
        }
    }
}

/// Stores chunks on a task of their own, one at a time and in order, so parsing the
/// next chunk overlaps with writing this one.
struct Writer {
    store: Store,
    rules: std::sync::Arc<[ScheduleRule]>,
    now: Timestamp,
    /// The chunk being written and the input line of each of its records.
    pending: Option<(StoreTask, Vec<usize>)>,
}

type StoreTask = tokio::task::JoinHandle<Result<ImportOutcome, StoreError>>;

impl Writer {
    async fn submit(
        &mut self,
        batch: Batch,
        at: Vec<usize>,
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        self.wait(report).await?;
        let (store, rules, now) = (
            self.store.clone(),
            std::sync::Arc::clone(&self.rules),
            self.now,
        );
        let task = tokio::spawn(async move { batch.store(&store, &rules, now).await });
        self.pending = Some((task, at));
        Ok(())
    }

    async fn wait(&mut self, report: &mut ImportReport) -> Result<(), StoreError> {
        if let Some((task, at)) = self.pending.take() {
            let outcome = task
                .await
                .map_err(|e| StoreError::Corrupt(format!("import writer stopped: {e}")))??;
            add(report, outcome, &at);
        }
        Ok(())
    }
}

fn add(report: &mut ImportReport, o: ImportOutcome, at: &[usize]) {
    report.scheduled += o.scheduled;
    report.cancelled += o.cancelled;
    for k in o.kept {
        report.warnings.push(BadLine {
            line: at.get(k.index).copied().unwrap_or(0),
            error: FieldError::new(k.field(), k.why()),
        });
    }
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// One JSON Lines line: UTF-8 and one JSON value, or a `(line)` error.
pub fn parse_json_line(raw: &[u8]) -> Result<Value, FieldError> {
    let text = std::str::from_utf8(raw)
        .map_err(|e| FieldError::line(format!("not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    serde_json::from_str(text).map_err(|e| {
        let mut msg = format!("invalid JSON: {e}");
        if raw.len() > 100_000 {
            msg.push_str(&format!(" (line of {} bytes)", raw.len()));
        }
        FieldError::line(msg)
    })
}

/// A CSV row as the JSON object the record parsers read: `|` splits lists, `true` and
/// `false` are booleans, empty cells are absent.
fn csv_to_json(headers: &[String], rec: &csv::ByteRecord) -> Result<Value, FieldError> {
    let mut obj = Map::new();
    for (h, cell) in headers.iter().zip(rec.iter()) {
        // A column without a name (a trailing comma in the header) is no field of ours.
        if h.is_empty() {
            continue;
        }
        let cell = std::str::from_utf8(cell)
            .map_err(|_| FieldError::new(h.as_str(), "not valid UTF-8"))?
            .trim();
        if cell.is_empty() {
            continue;
        }
        let v = match h.as_str() {
            "compatible_with" | "tags" => Value::Array(
                cell.split('|')
                    .map(|s| Value::String(s.trim().to_owned()))
                    .collect(),
            ),
            "in_stock" | "marketing_consent" => match cell {
                "true" | "TRUE" | "True" => Value::Bool(true),
                "false" | "FALSE" | "False" => Value::Bool(false),
                other => Value::String(other.to_owned()),
            },
            _ => Value::String(cell.to_owned()),
        };
        obj.insert(h.clone(), v);
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_errors() {
        assert_eq!(parse_json_line(b"{\"a\":1,,}").unwrap_err().field, "(line)");
        assert!(
            parse_json_line(&[0xff, 0xfe, 0xc3, 0x28])
                .unwrap_err()
                .why
                .contains("UTF-8")
        );
        assert!(parse_json_line(b"{\"a\": 1}").is_ok());
    }

    #[test]
    fn last_record_of_an_id_wins() {
        let v = last_per_id(vec![("a", 1), ("b", 2), ("a", 3)], |r| r.0.to_string());
        assert_eq!(v, vec![("a", 3), ("b", 2)]);
    }
}
