//! Checks the frame layouts of docs/PROTOCOL.md (section 3) and the sizes
//! derived from them (sections 11 and 13) against one table here.
//!
//! `LAYOUTS` lists each frame's fields in order. From it alone this test
//! derives every `Length:` formula and every offset and size the document
//! states, and compares them with the document's text. The same table is
//! checked against the codec: samples of every frame (empty and long
//! strings, positions, resume entries) are encoded and walked field by
//! field at the derived offsets, and so is every section 13 vector. A
//! formula, offset or size written wrong in the document fails here.

mod doc;
#[path = "layout/samples.rs"]
mod samples;

use std::collections::BTreeMap;
use std::fmt;

use cluecast_proto::*;

/// How a field is laid out.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An integer of the document's type name (`u8` .. `u64`, `i32`).
    Int(&'static str),
    /// Four raw bytes (HELLO's magic).
    Magic,
    /// `str8` whose length the document calls by this letter.
    Str8(&'static str),
    /// `str16`, likewise.
    Str16(&'static str),
    /// The frame's remaining bytes (`rest`), likewise.
    Rest(&'static str),
    /// PATH's positions: `rest`, 20 bytes each, `n` of them.
    Positions,
    /// GOAWAY's resume entries, as many as the `count` field before them,
    /// each laid out as `ENTRY`.
    Entries,
}

struct Layout {
    /// The frames the section describes (UNSUBSCRIBE and UNSUBSCRIBED, PING
    /// and PONG share one).
    frames: &'static [FrameType],
    fields: &'static [(&'static str, Kind)],
}

use Kind::*;

const LAYOUTS: &[Layout] = &[
    Layout {
        frames: &[FrameType::Hello],
        fields: &[
            ("magic", Magic),
            ("version_min", Int("u16")),
            ("version_max", Int("u16")),
            ("client_id", Str8("c")),
            ("token", Str16("k")),
        ],
    },
    Layout {
        frames: &[FrameType::Welcome],
        fields: &[
            ("version", Int("u16")),
            ("heartbeat_ms", Int("u32")),
            ("idle_timeout_ms", Int("u32")),
            ("frame_bytes_max", Int("u32")),
            ("payload_bytes_max", Int("u32")),
            ("subscriptions_max", Int("u16")),
            ("topic_bytes_max", Int("u8")),
        ],
    },
    Layout {
        frames: &[FrameType::Subscribe],
        fields: &[
            ("mode", Int("u8")),
            ("epoch", Int("u64")),
            ("last_seq", Int("u64")),
            ("topic", Str8("t")),
        ],
    },
    Layout {
        frames: &[FrameType::Subscribed],
        fields: &[
            ("status", Int("u8")),
            ("epoch", Int("u64")),
            ("oldest_seq", Int("u64")),
            ("last_seq", Int("u64")),
            ("topic", Str8("t")),
        ],
    },
    Layout {
        frames: &[FrameType::Unsubscribe, FrameType::Unsubscribed],
        fields: &[("topic", Str8("t"))],
    },
    Layout {
        frames: &[FrameType::Publish],
        fields: &[
            ("request_id", Int("u32")),
            ("topic", Str8("t")),
            ("payload", Rest("p")),
        ],
    },
    Layout {
        frames: &[FrameType::PublishAck],
        fields: &[
            ("request_id", Int("u32")),
            ("status", Int("u16")),
            ("flags", Int("u8")),
            ("epoch", Int("u64")),
            ("seq", Int("u64")),
        ],
    },
    Layout {
        frames: &[FrameType::Event],
        fields: &[
            ("seq", Int("u64")),
            ("epoch", Int("u64")),
            ("publish_ts_ns", Int("u64")),
            ("topic", Str8("t")),
            ("payload", Rest("p")),
        ],
    },
    Layout {
        frames: &[FrameType::TopicClose],
        fields: &[("request_id", Int("u32")), ("topic", Str8("t"))],
    },
    Layout {
        frames: &[FrameType::TopicClosed],
        fields: &[
            ("request_id", Int("u32")),
            ("status", Int("u16")),
            ("last_seq", Int("u64")),
            ("topic", Str8("t")),
        ],
    },
    Layout {
        frames: &[FrameType::Position],
        fields: &[
            ("lat_e7", Int("i32")),
            ("lon_e7", Int("i32")),
            ("accuracy_cm", Int("u32")),
            ("client_ts_ms", Int("u64")),
        ],
    },
    Layout {
        frames: &[FrameType::PathQuery],
        fields: &[
            ("request_id", Int("u32")),
            ("since_ms", Int("u64")),
            ("player", Str8("p")),
        ],
    },
    Layout {
        frames: &[FrameType::Path],
        fields: &[
            ("request_id", Int("u32")),
            ("status", Int("u16")),
            ("flags", Int("u8")),
            ("positions", Positions),
        ],
    },
    Layout {
        frames: &[FrameType::Ping, FrameType::Pong],
        fields: &[("nonce", Int("u64"))],
    },
    Layout {
        frames: &[FrameType::GoAway],
        fields: &[
            ("reason", Int("u8")),
            ("retry_after_ms", Int("u32")),
            ("reconnect", Str8("r")),
            ("count", Int("u16")),
            ("resume", Entries),
        ],
    },
    Layout {
        frames: &[FrameType::Error],
        fields: &[("code", Int("u16")), ("message", Str8("m"))],
    },
];

/// One GOAWAY resume entry; its topic's length is `t` (`tᵢ` summed).
const ENTRY: &[(&str, Kind)] = &[
    ("epoch", Int("u64")),
    ("last_seq", Int("u64")),
    ("topic", Str8("t")),
];

// ---- sizes as the document writes them ---------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Term {
    /// A variable length: `c`.
    Var(&'static str),
    /// `20 × n`.
    Times(u64, &'static str),
    /// `Σ(17 + tᵢ)`: one entry's size, summed over the entries.
    Sum(Box<Size>),
}

/// A constant plus variable terms: `14 + c`, `8 + 20 × n`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Size {
    constant: u64,
    terms: Vec<Term>,
}

impl Size {
    fn add(&mut self, other: &Size) {
        self.constant += other.constant;
        self.terms.extend(other.terms.iter().cloned());
    }

    /// Its value for the lengths a frame was found to have.
    fn eval(&self, vars: &Vars) -> u64 {
        let terms: u64 = self
            .terms
            .iter()
            .map(|term| match term {
                Term::Var(v) => vars.get(v),
                Term::Times(k, v) => k * vars.get(v),
                Term::Sum(entry) => vars.entries.iter().map(|e| entry.eval(e)).sum(),
            })
            .sum();
        self.constant + terms
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.constant != 0 || self.terms.is_empty() {
            parts.push(self.constant.to_string());
        }
        for term in &self.terms {
            parts.push(match term {
                Term::Var(v) => v.to_string(),
                Term::Times(k, v) => format!("{k} × {v}"),
                // The summed entry's variables carry the subscript i.
                Term::Sum(entry) => format!("Σ({})", entry.to_string().replace('t', "tᵢ")),
            });
        }
        write!(f, "{}", parts.join(" + "))
    }
}

/// The lengths found in one frame: each variable's, and each resume
/// entry's.
#[derive(Clone, Debug, Default)]
struct Vars {
    lengths: BTreeMap<&'static str, u64>,
    entries: Vec<Vars>,
}

impl Vars {
    fn get(&self, var: &str) -> u64 {
        *self
            .lengths
            .get(var)
            .unwrap_or_else(|| panic!("no length {var} was read"))
    }
}

/// The document's Type and Size cells for a field.
fn type_and_size(kind: Kind) -> (&'static str, Size) {
    let size = |constant, terms| Size { constant, terms };
    match kind {
        Int(name) => (name, size(int_bytes(name) as u64, vec![])),
        Magic => ("bytes", size(4, vec![])),
        Str8(v) => ("str8", size(1, vec![Term::Var(v)])),
        Str16(v) => ("str16", size(2, vec![Term::Var(v)])),
        Rest(v) => ("rest", size(0, vec![Term::Var(v)])),
        Positions => (
            "rest",
            size(0, vec![Term::Times(POSITION_BYTES as u64, "n")]),
        ),
        Entries => (
            "entry × count",
            size(0, vec![Term::Sum(Box::new(entry_size()))]),
        ),
    }
}

fn int_bytes(name: &str) -> usize {
    match name {
        "u8" => 1,
        "u16" => 2,
        "u32" | "i32" => 4,
        "u64" => 8,
        other => panic!("no integer type {other}"),
    }
}

fn entry_size() -> Size {
    let mut total = Size::default();
    for &(_, kind) in ENTRY {
        total.add(&type_and_size(kind).1);
    }
    total
}

/// Each field's offset (from `first`) and the size of them all.
fn offsets(fields: &[(&str, Kind)], first: u64) -> (Vec<Size>, Size) {
    let mut at = Size {
        constant: first,
        terms: vec![],
    };
    let mut offsets = Vec::new();
    for &(_, kind) in fields {
        offsets.push(at.clone());
        at.add(&type_and_size(kind).1);
    }
    (offsets, at)
}

/// What the length prefix holds: the type byte and the body.
fn length(layout: &Layout) -> Size {
    let (_, end) = offsets(layout.fields, HEADER_BYTES as u64);
    Size {
        constant: end.constant - 4,
        terms: end.terms,
    }
}

// ---- the document ---------------------------------------------------------

/// One `### 3.N` section: its frames, its Length, its tables' rows
/// (offset, size, type, field).
struct Section {
    heading: String,
    frames: Vec<u8>,
    length: String,
    tables: Vec<Vec<[String; 4]>>,
}

fn sections(doc: &str) -> Vec<Section> {
    let start = doc.find("\n## 3. Frames").expect("section 3");
    let end = doc.find("\n## 4. ").expect("section 4");
    let mut out: Vec<Section> = Vec::new();
    let mut prose = String::new();
    let mut in_table = false;
    for line in doc[start..end].lines() {
        if let Some(heading) = line.strip_prefix("### 3.") {
            finish_length(out.last_mut(), &prose);
            prose.clear();
            out.push(Section {
                heading: heading.to_string(),
                frames: frame_values(heading),
                length: String::new(),
                tables: Vec::new(),
            });
            continue;
        }
        let Some(section) = out.last_mut() else {
            continue;
        };
        if !line.starts_with('|') {
            in_table = false;
            prose.push_str(line);
            prose.push(' ');
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells[0].starts_with("Offset") || cells[0].starts_with("-") {
            if !in_table {
                section.tables.push(Vec::new());
                in_table = true;
            }
            continue;
        }
        let row = [&cells[0], &cells[1], &cells[2], &cells[3]].map(|c| c.to_string());
        section.tables.last_mut().expect("a header row").push(row);
    }
    finish_length(out.last_mut(), &prose);
    out
}

/// `0x01` and the like in a heading.
fn frame_values(heading: &str) -> Vec<u8> {
    heading
        .split("(0x")
        .skip(1)
        .map(|rest| u8::from_str_radix(&rest[..2], 16).expect("hex frame type"))
        .collect()
}

/// The formula of the section's "Length: `…`." (or "Length: 22.").
fn finish_length(section: Option<&mut Section>, prose: &str) {
    let Some(section) = section else { return };
    let after = prose
        .split("Length: ")
        .nth(1)
        .unwrap_or_else(|| panic!("3.{}: no Length", section.heading));
    section.length = match after.strip_prefix('`') {
        Some(quoted) => quoted.split('`').next().unwrap().to_string(),
        None => after.split('.').next().unwrap().to_string(),
    };
}

#[test]
fn section_3_formulas_offsets_and_sizes_follow_from_the_fields() {
    let doc = doc::doc();
    let sections = sections(&doc);
    assert_eq!(sections.len(), LAYOUTS.len(), "one section per layout");
    let mut wrong = Vec::new();
    for (section, layout) in sections.iter().zip(LAYOUTS) {
        let frames: Vec<u8> = layout.frames.iter().map(|&f| f as u8).collect();
        assert_eq!(section.frames, frames, "3.{}", section.heading);
        let derived = length(layout).to_string();
        if section.length != derived {
            wrong.push(format!(
                "3.{}: Length `{}`, the fields make `{derived}`",
                section.heading, section.length
            ));
        }
        let mut tables = vec![(layout.fields, HEADER_BYTES as u64)];
        if matches!(layout.fields.last(), Some((_, Entries))) {
            tables.push((ENTRY, 0));
        }
        assert_eq!(
            section.tables.len(),
            tables.len(),
            "3.{}: tables",
            section.heading
        );
        for (rows, (fields, first)) in section.tables.iter().zip(tables) {
            assert_eq!(rows.len(), fields.len(), "3.{}: rows", section.heading);
            let (offsets, _) = offsets(fields, first);
            for ((row, &(name, kind)), offset) in rows.iter().zip(fields).zip(offsets) {
                let (type_name, size) = type_and_size(kind);
                let size = match kind {
                    // The document does not spell the list's size out.
                    Entries => "…".to_string(),
                    _ => size.to_string(),
                };
                let derived = [offset.to_string(), size, type_name.to_string(), name.into()];
                if *row != derived {
                    wrong.push(format!(
                        "3.{} field {name}: the document has {row:?}, the fields make {derived:?}",
                        section.heading
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "docs/PROTOCOL.md:\n{}", wrong.join("\n"));
}

// ---- the codec --------------------------------------------------------------

/// A field's value as the layout reads it.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Int(i128),
    Bytes(Vec<u8>),
    Entries(Vec<Vec<Value>>),
}

/// Reads `fields` from `bytes` at `at`, checking each derived offset
/// against where the field really is; returns the values and the
/// lengths found.
fn walk(
    fields: &[(&'static str, Kind)],
    first: u64,
    bytes: &[u8],
    at: &mut usize,
    what: &str,
) -> (Vec<Value>, Vars) {
    let (offsets, _) = offsets(fields, first);
    let base = *at as u64 - first;
    let mut vars = Vars::default();
    let mut values = Vec::new();
    for (&(name, kind), offset) in fields.iter().zip(offsets) {
        assert_eq!(
            base + offset.eval(&vars),
            *at as u64,
            "{what} {name}: at offset {offset}"
        );
        let take = |n: usize, at: &mut usize| -> Vec<u8> {
            let field = bytes
                .get(*at..*at + n)
                .unwrap_or_else(|| panic!("{what} {name}: {n} bytes past the end"))
                .to_vec();
            *at += n;
            field
        };
        let value = match kind {
            Int(name) => {
                let raw = take(int_bytes(name), at);
                let unsigned = raw.iter().fold(0u64, |v, &b| v << 8 | b as u64);
                Value::Int(match name {
                    "i32" => unsigned as u32 as i32 as i128,
                    _ => unsigned as i128,
                })
            }
            Magic => Value::Bytes(take(4, at)),
            Str8(v) | Str16(v) => {
                let prefix = take(if matches!(kind, Str8(_)) { 1 } else { 2 }, at);
                let n = prefix.iter().fold(0usize, |n, &b| n << 8 | b as usize);
                vars.lengths.insert(v, n as u64);
                Value::Bytes(take(n, at))
            }
            Rest(v) => {
                vars.lengths.insert(v, (bytes.len() - *at) as u64);
                Value::Bytes(take(bytes.len() - *at, at))
            }
            Positions => {
                let n = bytes.len() - *at;
                assert_eq!(n % POSITION_BYTES, 0, "{what}: whole positions");
                vars.lengths.insert("n", (n / POSITION_BYTES) as u64);
                Value::Bytes(take(n, at))
            }
            Entries => {
                let Some(Value::Int(count)) = values.last() else {
                    panic!("{what}: the entries follow their count");
                };
                let mut entries = Vec::new();
                for _ in 0..*count {
                    let (entry, entry_vars) = walk(ENTRY, 0, bytes, at, what);
                    entries.push(entry);
                    vars.entries.push(entry_vars);
                }
                Value::Entries(entries)
            }
        };
        values.push(value);
    }
    (values, vars)
}

/// Walks a whole frame by its layout: the length prefix must equal the
/// Length formula, and the walk must end where the frame does.
fn walk_frame(bytes: &[u8], what: &str) -> Vec<Value> {
    let layout = LAYOUTS
        .iter()
        .find(|l| l.frames.iter().any(|&f| f as u8 == bytes[4]))
        .unwrap_or_else(|| panic!("{what}: no layout for type {:#04x}", bytes[4]));
    let mut at = HEADER_BYTES;
    let (values, vars) = walk(layout.fields, HEADER_BYTES as u64, bytes, &mut at, what);
    assert_eq!(at, bytes.len(), "{what}: bytes after the last field");
    let prefix = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as u64;
    assert_eq!(prefix, bytes.len() as u64 - 4, "{what}: length prefix");
    assert_eq!(
        length(layout).eval(&vars),
        prefix,
        "{what}: Length `{}`",
        length(layout)
    );
    values
}

#[test]
fn the_codec_lays_every_frame_out_at_the_derived_offsets() {
    let samples = samples::all();
    let types: std::collections::BTreeSet<u8> =
        samples.iter().map(|(f, _)| f.frame_type() as u8).collect();
    assert_eq!(types.len(), FrameType::ALL.len(), "a sample of every type");
    for (frame, expected) in samples {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        let what = format!("{:?} of {} bytes", frame.frame_type(), encoded.len());
        assert_eq!(walk_frame(&encoded, &what), expected, "{what}");
    }
}

#[test]
fn every_vector_follows_its_layout_and_states_its_length_right() {
    let doc = doc::doc();
    let vectors = doc::blocks(&doc, "vector");
    assert!(vectors.len() >= FrameType::ALL.len());
    let mut explained = 0;
    for v in &vectors {
        let what = format!("vector {} (line {})", v.name, v.line);
        walk_frame(&v.bytes, &what);
        // The prose after the vector, up to the next one.
        let marker = format!("<!-- vector: {} -->", v.name);
        let after = &doc[doc.find(&marker).unwrap() + marker.len()..];
        let prose = &after[..after.find("<!-- vector:").unwrap_or(after.len())];
        let Some(sum) = prose.split("Byte by byte: length `").nth(1) else {
            continue;
        };
        explained += 1;
        let prefix: Vec<u8> = sum[..11]
            .split(' ')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(prefix, v.bytes[..4], "{what}: the length bytes quoted");
        // "= 25 = 1 (type) + 4 (magic) + 2 + 2 + (1 + 7) + (2 + 6);"
        let stated = sum.split(';').next().unwrap().replace('\n', " ");
        let parts: Vec<&str> = stated.split(" = ").collect();
        assert_eq!(parts.len(), 3, "{what}: `= N = SUM;` in {stated:?}");
        let total: u64 = parts[1].trim().parse().unwrap();
        assert_eq!(total, v.bytes.len() as u64 - 4, "{what}: the length quoted");
        assert_eq!(add_up(parts[2]), total, "{what}: {:?}", parts[2]);
    }
    // The frames of section 12's worked example follow their layouts too.
    for example in doc::blocks(&doc, "example") {
        walk_frame(&example.bytes, &format!("example {}", example.name));
    }
    let stated = doc.matches("Byte by byte: length `").count();
    assert!(
        stated > 0 && explained == stated,
        "{explained} of {stated} explanations checked"
    );
}

/// The value of a sum such as `1 (type) + 4 + (8 + 8 + 1 + 7) + 2 × 20`:
/// words in brackets are labels, other brackets group terms of the sum.
fn add_up(sum: &str) -> u64 {
    let mut cleaned = String::new();
    let mut label = false;
    for (i, ch) in sum.char_indices() {
        match ch {
            '(' if sum[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic()) => label = true,
            ')' if label => label = false,
            '(' | ')' => {}
            _ if !label => cleaned.push(ch),
            _ => {}
        }
    }
    assert!(!sum.contains("× ("), "no product of a bracket in {sum:?}");
    cleaned
        .split('+')
        .map(|term| {
            term.split('×')
                .map(|n| {
                    n.trim()
                        .parse::<u64>()
                        .unwrap_or_else(|_| panic!("{n:?} in {sum:?}"))
                })
                .product::<u64>()
        })
        .sum()
}

#[test]
fn section_11_frame_limit_formula_follows_from_the_layouts() {
    // With every str8 at the wire's 255 bytes: the largest frame with no
    // payload or token, EVENT without its payload, HELLO without its token.
    let str8_max = |layout: &Layout, open: Option<&'static str>| {
        let mut vars = Vars::default();
        for &(_, kind) in layout.fields {
            if let Str8(v) = kind {
                vars.lengths.insert(v, TOPIC_BYTES_HARD_MAX as u64);
            }
        }
        if let Some(open) = open {
            vars.lengths.insert(open, 0);
        }
        length(layout).eval(&vars)
    };
    let layout_of = |t: FrameType| LAYOUTS.iter().find(|l| l.frames.contains(&t)).unwrap();
    let fixed = LAYOUTS
        .iter()
        .filter(|l| {
            l.fields
                .iter()
                .all(|(_, k)| matches!(k, Int(_) | Magic | Str8(_)))
        })
        .map(|l| str8_max(l, None))
        .max()
        .unwrap();
    let event = str8_max(layout_of(FrameType::Event), Some("p"));
    let hello = str8_max(layout_of(FrameType::Hello), Some("k"));
    let formula = format!("max({fixed}, {event} + payload_bytes_max, {hello} + token_bytes_max)");
    let doc = doc::doc();
    assert!(
        doc.contains(&formula),
        "section 11 should state frame_bytes_max as {formula}"
    );
    for (payload, token) in [(0, 0), (65_536, 4_096), (16, 65_535), (1 << 20, 0)] {
        let expected = fixed.max(event + payload as u64).max(hello + token as u64);
        assert_eq!(
            Limits::frame_bytes_for(payload, token) as u64,
            expected,
            "payload {payload}, token {token}"
        );
    }
    let default = Limits::DEFAULT.frame_bytes_max;
    assert!(doc.contains(&format!(
        "| frame_bytes_max | {} |",
        grouped(default as u64)
    )));
}

/// 65817 as the document writes it: `65 817`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(d);
    }
    out
}

#[test]
fn sizes_render_as_the_document_writes_them() {
    let hello = length(&LAYOUTS[0]);
    assert_eq!(hello.to_string(), "12 + c + k");
    let goaway = LAYOUTS
        .iter()
        .find(|l| l.frames == [FrameType::GoAway])
        .unwrap();
    assert_eq!(length(goaway).to_string(), "9 + r + Σ(17 + tᵢ)");
    assert_eq!(add_up("1 (type) + 4 + (1 + 7) + 2 × 20"), 53);
    assert_eq!(grouped(65_817), "65 817");
    assert_eq!(grouped(900), "900");
}
