//! docs/PROTOCOL.md as the tests read it: the document itself and its
//! frames shown as bytes (the section 13 test vectors, the worked example
//! of section 12). Shared by `vectors.rs`, `layout.rs` and, through a path
//! attribute, the appliance's `tests/reconnect_example.rs`.

#![allow(dead_code)] // each test crate uses part of it

pub struct Vector {
    pub name: String,
    pub line: usize,
    pub bytes: Vec<u8>,
}

/// Extracts the frames marked `kind` (`vector`, `example`): a
/// `<!-- KIND: NAME -->` line, then a ```text block with a `frame:` line and
/// a `hex:` line; hex may continue on the following lines up to the closing
/// fence.
pub fn blocks(doc: &str, kind: &str) -> Vec<Vector> {
    let marker = format!("<!-- {kind}:");
    let lines: Vec<&str> = doc.lines().collect();
    let mut vectors = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        let Some(rest) = line.strip_prefix(marker.as_str()) else {
            continue;
        };
        let name = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("line {i}: vector marker not closed"))
            .trim()
            .to_string();
        let start = i;
        assert_eq!(
            lines.get(i).map(|l| l.trim()),
            Some("```text"),
            "line {}: vector {name} must be followed by ```text",
            i + 1
        );
        i += 1;
        let mut saw_frame = false;
        let mut hex = None::<String>;
        loop {
            let l = lines
                .get(i)
                .unwrap_or_else(|| panic!("vector {name} (line {start}): unterminated block"))
                .trim();
            i += 1;
            if l == "```" {
                break;
            }
            if l.starts_with("frame:") {
                saw_frame = true;
            } else if let Some(h) = l.strip_prefix("hex:") {
                assert!(hex.is_none(), "vector {name}: two hex lines");
                hex = Some(h.to_string());
            } else if let Some(h) = hex.as_mut() {
                h.push(' ');
                h.push_str(l);
            } else {
                panic!("vector {name}: unexpected line {l:?}");
            }
        }
        assert!(saw_frame, "vector {name}: no frame: line");
        let hex = hex.unwrap_or_else(|| panic!("vector {name}: no hex: line"));
        let bytes = hex
            .split_whitespace()
            .map(|b| {
                assert_eq!(b.len(), 2, "vector {name}: {b:?} is not one byte");
                u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("vector {name}: bad hex {b:?}"))
            })
            .collect();
        vectors.push(Vector {
            name,
            line: start,
            bytes,
        });
    }
    vectors
}

pub fn doc() -> String {
    // Read at run time, not baked in at build time: the build cache is
    // shared between checkouts at different paths, and a test binary built
    // in one must find the document of the checkout it runs in. The
    // workspace root is the manifest's directory or its parent.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let path = std::path::Path::new(&dir)
        .ancestors()
        .map(|d| d.join("docs/PROTOCOL.md"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no docs/PROTOCOL.md above {dir}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A frame's Debug text with its byte strings shown as text where they are
/// printable ASCII: `topic: "hunt-7"` rather than `topic: [104, 117, ...]`.
pub fn frame_text(frame: &impl std::fmt::Debug) -> String {
    let debug = format!("{frame:?}");
    let mut out = String::new();
    let mut rest = debug.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
        let inner = &rest[open + 1..close.min(rest.len())];
        let bytes: Option<Vec<u8>> = inner.split(", ").map(|b| b.parse().ok()).collect();
        match bytes {
            Some(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                out.push_str(&format!("{:?}", String::from_utf8(b).unwrap()));
            }
            _ if inner.is_empty() => out.push_str("\"\""),
            _ => out.push_str(&rest[open..=close.min(rest.len() - 1)]),
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out + rest
}

/// A frame as the document shows it: the marker, then `frame:` and its
/// bytes, 16 to a hex line.
pub fn block(kind: &str, name: &str, frame: &str, bytes: &[u8]) -> String {
    let mut out = format!("<!-- {kind}: {name} -->\n```text\nframe: {frame}\n");
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let lead = if i == 0 { "hex: " } else { "     " };
        out += &format!("{lead}{}\n", hex.join(" "));
    }
    out + "```\n"
}
