//! Formatting shared by the reports: numbers for markdown tables, JSON
//! values, the command line as run.

/// A number with `decimals` places, or "–" when there is none.
pub fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "–".to_string()
    }
}

/// A share (0.25) as a whole percentage ("25%").
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0}%", x * 100.0)
    } else {
        "–".to_string()
    }
}

/// A whole number with thin groups of three ("1 234 567").
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_string();
    }
    let digits = format!("{:.0}", x);
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", digits),
    };
    let mut out = sign.to_string();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A progress line for one run: its figures (or `no figures`), then one
/// indented line per problem.
pub fn summary(figures: Option<String>, problems: &[String]) -> String {
    let mut s = figures.unwrap_or_else(|| "no figures".to_string());
    for p in problems {
        s.push_str("\n    problem: ");
        s.push_str(p);
    }
    s
}

/// Bytes as MiB with `decimals` places.
pub fn mib(bytes: f64, decimals: usize) -> String {
    num(bytes / f64::from(1 << 20), decimals)
}

/// ` (text)` after a progress line, or nothing for no text.
pub fn parenthesised(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// A report title's ending for a run's label: ` (LABEL)`, or nothing.
pub fn label_words(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(" ({label})")
    }
}

/// The first lines under a report's title: the command as run, and the
/// host, `host_more` after it.
pub fn header_lines(s: &mut String, host: &crate::procfs::Host, host_more: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(s, "- command: `{}`", command_line());
    let _ = writeln!(
        s,
        "- host: {} CPUs, `{}`, kernel `{}`{host_more}",
        host.cpus, host.cpu_model, host.kernel
    );
}

/// `- run N: PROBLEM` for each problem of each run (N from 1).
pub fn run_problems<'a, P>(runs: impl IntoIterator<Item = P>) -> Vec<String>
where
    P: IntoIterator<Item = &'a String>,
{
    let mut lines = Vec::new();
    for (i, problems) in runs.into_iter().enumerate() {
        for p in problems {
            lines.push(format!("- run {}: {p}", i + 1));
        }
    }
    lines
}

/// A report's last section: `problems` (lines) under "Problems seen:",
/// or, without any, "No problems: " and `all_well`.
pub fn problems_section(s: &mut String, problems: Vec<String>, all_well: &str) {
    use std::fmt::Write as _;
    if problems.is_empty() {
        let _ = writeln!(s, "No problems: {all_well}");
    } else {
        let _ = writeln!(s, "Problems seen:\n");
        for p in problems {
            let _ = writeln!(s, "{p}");
        }
    }
}

/// This process's command line, quoted for a shell where needed.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSON string literal.
pub fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A JSON number; null for NaN and infinities, which JSON cannot carry.
pub fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

/// A JSON array of numbers.
pub fn json_list(xs: &[f64]) -> String {
    format!(
        "[{}]",
        xs.iter()
            .map(|&x| json_num(x))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// The flags of a measuring scenario's runs and their report: how many, and
/// where the report goes. A scenario that words one for its own case says so
/// with `#[command(mut_arg(..))]`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunFlags {
    /// Runs, each against a fresh server; the report gives each and their
    /// median
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Emit one JSON object per run (then one for the median) instead of
    /// markdown
    #[arg(long)]
    pub json: bool,
    /// Also write the markdown report to this file (with --json, both)
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// Where a scenario's latency distributions go: `DIR/STEM[-LABEL]-SUFFIX.hgrm`,
/// the label's characters other than ASCII letters and digits as `_`.
pub struct HgrmFiles<'a> {
    dir: &'a std::path::Path,
    label: String,
}

impl<'a> HgrmFiles<'a> {
    /// Makes `dir` if need be.
    pub fn new(dir: &'a std::path::Path, label: &str) -> Result<HgrmFiles<'a>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let label = if label.is_empty() {
            String::new()
        } else {
            let safe = |c: char| if c.is_ascii_alphanumeric() { c } else { '_' };
            format!("-{}", label.chars().map(safe).collect::<String>())
        };
        Ok(HgrmFiles { dir, label })
    }

    /// Writes `text` as `STEM[-LABEL]-SUFFIX.hgrm`.
    pub fn write(&self, stem: &str, suffix: &str, text: &str) -> Result<(), String> {
        let path = (self.dir).join(format!("{stem}{}-{suffix}.hgrm", self.label));
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// The end of a scenario's driver: the latency histogram files where
/// `hgrm_dir` is given (`write_hgrms`), the report where `flags` send it,
/// then, where `failed` says why, that as the error: the report is written
/// either way, the exit status says whether it is one of a healthy
/// appliance.
pub fn finish(
    flags: &RunFlags,
    hgrm_dir: Option<&std::path::Path>,
    write_hgrms: impl FnOnce(&std::path::Path) -> Result<(), String>,
    markdown: impl Fn() -> String,
    json_lines: impl FnOnce() -> String,
    failed: Option<&str>,
) -> Result<(), String> {
    if let Some(dir) = hgrm_dir {
        write_hgrms(dir)?;
    }
    emit(flags.report.as_deref(), flags.json, markdown, json_lines)?;
    match failed {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// The JSON lines of a scenario's runs: one per run (`"run": 1, 2, ...`),
/// then one for the median (`"run": "median"`), each written by
/// `line(run, its "run" value)`.
pub fn json_runs<R>(runs: &[R], median: &R, line: impl Fn(&R, &str) -> String) -> String {
    let mut out = String::new();
    for (i, r) in runs.iter().enumerate() {
        out.push_str(&line(r, &(i + 1).to_string()));
    }
    out.push_str(&line(median, "\"median\""));
    out
}

/// Writes a scenario's report: its markdown to `path` (`--report`) if given,
/// and to stdout the JSON lines (`--json`) or the markdown.
pub fn emit(
    path: Option<&std::path::Path>,
    json: bool,
    markdown: impl Fn() -> String,
    json_lines: impl FnOnce() -> String,
) -> Result<(), String> {
    use std::io::Write;
    if let Some(path) = path {
        std::fs::write(path, markdown()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let text = if json { json_lines() } else { markdown() };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing the report: {e}"))
}

/// Test helper: each of `keys` stands in `line`.
#[cfg(test)]
pub(crate) fn assert_has_keys(line: &str, keys: &[&str]) {
    for key in keys {
        assert!(line.contains(key), "{key} missing from {line}");
    }
}

/// Test helper: `report` ([`json_runs`]) is `lines` lines, the median
/// run's last.
#[cfg(test)]
pub(crate) fn assert_runs_then_median(report: &str, lines: usize) {
    assert_eq!(report.lines().count(), lines);
    assert!(report
        .lines()
        .last()
        .unwrap()
        .contains("\"run\":\"median\""));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nulls() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(json_num(f64::NAN), "null");
        assert_eq!(json_num(1.5), "1.5");
        assert_eq!(json_list(&[1.0, f64::INFINITY]), "[1,null]");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1 234 567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1234.0), "-1 234");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn numbers_and_shares() {
        assert_eq!(num(1.23456, 2), "1.23");
        assert_eq!(num(f64::INFINITY, 2), "–");
        assert_eq!(pct(0.256), "26%");
        assert_eq!(pct(f64::NAN), "–");
    }
}
