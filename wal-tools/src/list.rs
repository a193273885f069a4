//! `wal-dump list`: one line (or JSON object) per record, filtered.

use std::io::Write;

use serde_json::{json, Value};
use wconf::state::record::kind;
use wconf::wal::format::FLAG_BATCH_END;

use crate::decode::{decode, type_name, Decoded};
use crate::log::{computed_crc, file_name, Fatal, Located, Log};
use crate::{exit, Format};

/// The schema name of list output; bumped when a field changes meaning or
/// goes away (adding a field does not bump it).
pub const SCHEMA: &str = "wal-dump/list/v1";

/// The hard cap on records kept in memory for `--format json`, which must
/// print one document; `ndjson` and `text` stream and have no cap.
pub const JSON_RECORDS_MAX: usize = 1_000_000;

#[derive(Default)]
pub struct Filter {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub limit: Option<u64>,
    pub types: Vec<u16>,
    pub session: Option<String>,
    pub lock: Option<String>,
    pub path: Option<String>,
}

impl Filter {
    fn matches(&self, lsn: u64, k: u16, d: &Decoded) -> bool {
        self.from.is_none_or(|f| lsn >= f)
            && self.to.is_none_or(|t| lsn <= t)
            && (self.types.is_empty() || self.types.contains(&k))
            && self
                .session
                .as_ref()
                .is_none_or(|s| d.session().as_deref() == Some(s.as_str()))
            && self
                .lock
                .as_ref()
                .is_none_or(|l| d.locks().contains(&l.as_str()))
            && self.path.as_ref().is_none_or(|p| d.touches_path(p))
    }
}

pub struct Options {
    pub format: Format,
    pub raw: bool,
    pub hex: bool,
}

/// Prints the known types, one a line: kind number and name.
pub fn print_types() -> u8 {
    for (k, name) in kind::ALL {
        println!("{k:>5}  {name}");
    }
    exit::CLEAN
}

pub fn run(log: &Log, filter: &Filter, opts: &Options) -> Result<u8, Fatal> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut json_records = vec![];
    for located in log.records() {
        let located = located?;
        let r = &located.record;
        if filter.to.is_some_and(|t| r.lsn > t) || filter.limit.is_some_and(|l| printed >= l) {
            break;
        }
        if filter.from.is_some_and(|f| r.lsn < f) {
            continue;
        }
        let d = decode(r.lsn, r.kind, r.payload);
        if !filter.matches(r.lsn, r.kind, &d) {
            continue;
        }
        printed += 1;
        let w = match opts.format {
            Format::Json => {
                if json_records.len() >= JSON_RECORDS_MAX {
                    return Err(Fatal::usage(format!(
                        "--format json keeps at most {JSON_RECORDS_MAX} records in memory; \
                         use --format ndjson, or narrow with --from/--to/--limit"
                    )));
                }
                json_records.push(record_json(&located, &d, opts, false));
                Ok(())
            }
            _ => print_record(&mut out, &located, &d, opts),
        };
        if w.is_err() {
            // The reader went away (a pipe into `head`): not an error.
            return Ok(exit::CLEAN);
        }
    }
    let stop = log.stop.as_ref();
    if opts.format == Format::Json {
        let doc = json!({
            "schema": SCHEMA,
            "records": json_records,
            "end": end_json(log),
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("json"));
    }
    let _ = out.flush();
    if let Some(stop) = stop {
        eprintln!("wal-dump: {}", stop.describe());
        return Ok(stop.exit_code());
    }
    Ok(exit::CLEAN)
}

/// One record as a text line or an ndjson object (a streaming format:
/// `--format json`, one document, is the caller's business; `follow`
/// prints it as ndjson).
pub fn print_record(
    out: &mut impl Write,
    located: &Located<'_>,
    d: &Decoded,
    opts: &Options,
) -> std::io::Result<()> {
    match opts.format {
        Format::Text => writeln!(out, "{}", text_line(located, d, opts)),
        Format::Json | Format::Ndjson => {
            writeln!(out, "{}", record_json(located, d, opts, true))
        }
    }
}

/// How the readable log ends: `clean`, `torn-tail` or `damaged`, and where.
pub fn end_json(log: &Log) -> Value {
    match &log.stop {
        None => json!({"status": "clean", "last_lsn": log.last_lsn()}),
        Some(stop) => json!({
            "status": if stop.torn_tail { "torn-tail" } else { "damaged" },
            "last_lsn": log.last_lsn(),
            "segment": stop.segment.display().to_string(),
            "offset": stop.problem.offset,
            "lsn": stop.problem.lsn,
            "damage": stop.problem.damage.to_string(),
        }),
    }
}

fn text_line(l: &Located<'_>, d: &Decoded, opts: &Options) -> String {
    let r = &l.record;
    let mut s = format!(
        "{:>8} {:<16} len {:<6} {}@{:<8} session {} req {} {}",
        r.lsn,
        type_name(r.kind),
        r.payload.len(),
        file_name(l.segment),
        r.offset,
        d.session().unwrap_or_else(|| "-".into()),
        d.request_id().unwrap_or("-"),
        d.summary()
    );
    if opts.raw {
        let h = &r.header;
        let computed = computed_crc(l.segment, r);
        s.push_str(&format!(
            "\n         raw frame_len {} padded {} padding {} crc {:#010x} computed {:#010x}{} flags {:#06x}{} batch_index {}",
            h.frame_len,
            h.padded_len(),
            h.padded_len() - h.frame_len as usize,
            h.crc,
            computed,
            if computed == h.crc { "" } else { " MISMATCH" },
            h.flags,
            if h.flags & FLAG_BATCH_END != 0 { " (batch-end)" } else { "" },
            h.batch_index,
        ));
    }
    if opts.hex {
        for (i, chunk) in r.payload.chunks(16).enumerate() {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            s.push_str(&format!("\n         {:08x}  {}", i * 16, hex.join(" ")));
        }
    }
    s
}

fn record_json(l: &Located<'_>, d: &Decoded, opts: &Options, with_schema: bool) -> Value {
    let r = &l.record;
    let mut v = json!({
        "lsn": r.lsn,
        "kind": r.kind,
        "type": type_name(r.kind),
        "len": r.payload.len(),
        "segment": file_name(l.segment),
        "offset": r.offset,
        "session": d.session(),
        "request_id": d.request_id(),
        "summary": d.summary(),
        "record": d.to_json(),
        "decode_error": d.error(),
    });
    let obj = v.as_object_mut().expect("object");
    if with_schema {
        obj.insert("schema".into(), SCHEMA.into());
    }
    if opts.raw {
        let h = &r.header;
        obj.insert(
            "raw".into(),
            json!({
                "frame_len": h.frame_len,
                "padded_len": h.padded_len(),
                "padding": h.padded_len() - h.frame_len as usize,
                "crc_stored": h.crc,
                "crc_computed": computed_crc(l.segment, r),
                "flags": h.flags,
                "batch_end": h.is_batch_end(),
                "batch_index": h.batch_index,
            }),
        );
    }
    if opts.hex {
        let hex: String = r.payload.iter().map(|b| format!("{b:02x}")).collect();
        obj.insert("payload_hex".into(), hex.into());
    }
    v
}
