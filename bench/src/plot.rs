//! Latency percentile plots: HdrHistogram's percentile distribution text
//! (`.hgrm`), which runs in separate processes can leave behind, and an SVG
//! drawing of one or more distributions in the style of HdrHistogram's
//! plotter (percentiles on a log scale of 1/(1-p), latency linear).

use std::f64::consts::LN_10;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// `cluecast-bench plot`: one SVG of several runs' latency distributions.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The SVG file to write
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long, default_value = "Latency by percentile")]
    pub title: String,
    /// A line under the title (host, scenario, load)
    #[arg(long, default_value = "")]
    pub subtitle: String,
    /// Cut the latency axis here (ms); higher values run along the top
    #[arg(long)]
    pub y_max_ms: Option<f64>,
    /// Cut the latency axis at twice the largest value of this curve (so
    /// one far slower target does not flatten the rest)
    #[arg(long, conflicts_with = "y_max_ms")]
    pub y_max_of: Option<String>,
    /// Curves, each LABEL=FILE with FILE an .hgrm in ms (what `fanout
    /// --hgrm-dir` writes)
    #[arg(required = true)]
    pub curves: Vec<String>,
}

/// Reads every LABEL=FILE and writes the plot.
pub fn main(args: &Args) -> Result<(), String> {
    let mut curves = Vec::with_capacity(args.curves.len());
    for spec in &args.curves {
        let (label, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: a curve is LABEL=FILE"))?;
        let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
        let points = parse_hgrm(&text).map_err(|e| format!("{file}: {e}"))?;
        curves.push(Curve {
            label: label.to_string(),
            points,
        });
    }
    let y_max_ms = match &args.y_max_of {
        Some(label) => {
            let curve = curves
                .iter()
                .find(|c| &c.label == label)
                .ok_or_else(|| format!("--y-max-of {label}: no such curve"))?;
            let max = curve
                .points
                .iter()
                .map(|p| p.1)
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            (max > 0.0).then_some(2.0 * max)
        }
        None => args.y_max_ms,
    };
    let svg = percentile_svg(&args.title, &args.subtitle, &curves, y_max_ms);
    std::fs::write(&args.out, svg).map_err(|e| format!("writing {}: {e}", args.out.display()))
}

/// The column header `outputPercentileDistribution` writes.
const HGRM_HEADER: &str = "       Value     Percentile TotalCount 1/(1-Percentile)";

/// The usual resolution of a percentile distribution: five rows for each
/// halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The histogram's percentile distribution as HdrHistogram's
/// `outputPercentileDistribution` writes it: each value divided by
/// `unit_per_value` (1e6 turns nanoseconds into milliseconds) with as many
/// decimals as the histogram keeps significant digits, then the mean,
/// standard deviation, max, count and layout. An empty histogram has no
/// rows. `unit_per_value` must be positive and finite.
pub fn hgrm(h: &Histogram<u64>, unit_per_value: f64) -> String {
    assert!(
        unit_per_value.is_finite() && unit_per_value > 0.0,
        "hgrm: unit_per_value must be positive, not {unit_per_value}"
    );
    let d = usize::from(h.sigfig());
    let scaled = |v: f64| v / unit_per_value;
    let mut s = format!("{HGRM_HEADER}\n\n");
    // Iterating an empty histogram walks every bucket to yield nothing.
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = scaled(v.value_iterated_to() as f64);
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.d$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                // 1/(1-1) is infinite: the last row goes without it.
                let _ = writeln!(s, "{value:12.d$} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.d$}, StdDeviation   = {:12.d$}]",
        scaled(h.mean()),
        scaled(h.stdev())
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.d$}, Total count    = {:12}]",
        scaled(h.max() as f64),
        h.len()
    );
    // The crate keeps the sub-bucket count private; this is its formula (the
    // power of two that holds 2 * 10^sigfig at unit resolution).
    let sub_buckets = (2 * 10u32.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

/// The rows of a percentile distribution written by [`hgrm`] (or by
/// HdrHistogram itself) as (percentile 0..=100, value) pairs, in file order.
/// Blank and `#` lines are skipped; a missing header or any other line is an
/// error naming the line.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut rows = Vec::new();
    let mut header = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("Value") {
            header = true;
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if !header {
            return Err(bad("a row before the percentile distribution header"));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let row = match fields[..] {
            [value, q, count] | [value, q, count, _] => value
                .parse::<f64>()
                .ok()
                .zip(q.parse::<f64>().ok())
                .filter(|_| count.parse::<u64>().is_ok()),
            _ => None,
        };
        let Some((value, q)) = row else {
            return Err(bad("not a percentile row"));
        };
        if !(0.0..=1.0).contains(&q) {
            return Err(bad("percentile outside 0..1"));
        }
        rows.push((q * 100.0, value));
    }
    if !header {
        return Err("no percentile distribution header".to_string());
    }
    Ok(rows)
}

/// One distribution to draw: (percentile 0..=100, latency in ms) points, as
/// [`parse_hgrm`] returns them for a file written with `unit_per_value` 1e6.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 800.0;
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = 760.0;
const PLOT_TOP: f64 = 60.0;
const PLOT_BOTTOM: f64 = 400.0;
const LEGEND_TOP: f64 = PLOT_BOTTOM + 62.0;
const LEGEND_ROW: f64 = 18.0;

/// The x axis spans 0%..99.999% (5 decades of 1/(1-p)), or up to the
/// largest finite point beyond, but at most 99.999999%: past that the tick
/// labels would crowd each other.
const MIN_DECADES: f64 = 5.0;
const MAX_DECADES: f64 = 8.0;

/// Colour-blind-safe (Okabe–Ito); curves beyond it repeat them dashed.
const COLOURS: [&str; 7] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000",
];

/// A percentile plot of the curves as SVG: x is the percentile on the log
/// scale of 1/(1-p), labelled 0%, 90%, 99%, ..., ending at 99.999% or at the
/// largest finite point beyond (at most 99.999999%); y is latency in ms from 0
/// to a rounded value above the largest one drawn, or to `y_max_ms` when
/// that is lower (values above it are drawn at the top edge, below 0 at the
/// bottom). The title and subtitle (say, host and scenario) go on top.
///
/// The 100th percentile (the max) lies at infinity on this axis: it, and any
/// point beyond the axis, is drawn at the axis end, so a curve from `hgrm`
/// ends in a vertical step to its max just after its last finite row.
/// Points with a NaN or infinite coordinate or a percentile outside 0..=100
/// are skipped; a curve left with no points is listed in the legend as
/// "(no data)" and not drawn. The legend sits below the plot, so it never
/// covers a curve.
pub fn percentile_svg(
    title: &str,
    subtitle: &str,
    curves: &[Curve],
    y_max_ms: Option<f64>,
) -> String {
    // Per curve: (decades of 1/(1-p), infinite for p = 100; ms), sorted so
    // the 100th percentile comes after every finite point.
    let kept: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            let mut points: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter(|(p, ms)| (0.0..=100.0).contains(p) && ms.is_finite())
                .map(|&(p, ms)| (decades(p), ms))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        })
        .collect();
    let all = || kept.iter().flatten();
    let x_end = all()
        .map(|&(x, _)| x)
        .filter(|x| x.is_finite())
        .fold(MIN_DECADES, f64::max)
        .min(MAX_DECADES);
    let largest = all().map(|&(_, ms)| ms).fold(0.0, f64::max);
    let mut y_top = if largest > 0.0 {
        nice_above(largest)
    } else {
        1.0
    };
    if let Some(m) = y_max_ms.filter(|m| m.is_finite() && *m > 0.0) {
        y_top = y_top.min(m);
    }
    let px = |x: f64| PLOT_LEFT + x.min(x_end) / x_end * (PLOT_RIGHT - PLOT_LEFT);
    let py = |ms: f64| PLOT_BOTTOM - ms.clamp(0.0, y_top) / y_top * (PLOT_BOTTOM - PLOT_TOP);

    let labels: Vec<String> = curves
        .iter()
        .zip(&kept)
        .map(|(c, points)| {
            let missing = if points.is_empty() { " (no data)" } else { "" };
            format!("{}{missing}", c.label)
        })
        .collect();
    let legend = legend_layout(&labels);
    let height = LEGEND_TOP + legend.last().map_or(0.0, |&(_, row)| row) * LEGEND_ROW + 14.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
        w = WIDTH,
        h = coord(height)
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let mid = coord((PLOT_LEFT + PLOT_RIGHT) / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{mid}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{mid}" y="44" text-anchor="middle" fill="#555">{}</text>"##,
        escape(subtitle)
    );

    // Grid and tick labels.
    let y_step = nice_step(y_top);
    let y_decimals = decimals(y_step);
    let y_ticks: Vec<f64> = (0..)
        .map(|k| f64::from(k) * y_step)
        .take_while(|v| *v <= y_top * (1.0 + 1e-9))
        .collect();
    // A hair below a decade (99.9999% is 5.99999... decades) is float
    // error: that decade still gets its tick.
    let x_ticks = 0..=(x_end + 1e-9) as u32;
    s.push_str("<g stroke=\"#ddd\">\n");
    for k in x_ticks.clone() {
        let x = coord(px(f64::from(k)));
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}"/>"#,
            coord(PLOT_TOP),
            coord(PLOT_BOTTOM + 4.0)
        );
    }
    for &v in &y_ticks {
        let y = coord(py(v));
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}"/>"#,
            coord(PLOT_LEFT - 4.0),
            coord(PLOT_RIGHT)
        );
    }
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        coord(PLOT_LEFT),
        coord(PLOT_TOP),
        coord(PLOT_RIGHT - PLOT_LEFT),
        coord(PLOT_BOTTOM - PLOT_TOP)
    );
    s.push_str("<g font-size=\"11\" fill=\"#333\">\n");
    for k in x_ticks {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            coord(px(f64::from(k))),
            coord(PLOT_BOTTOM + 17.0),
            percentile_label(k)
        );
    }
    for &v in &y_ticks {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.y_decimals$}</text>"#,
            coord(PLOT_LEFT - 7.0),
            coord(py(v) + 4.0)
        );
    }
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        r#"<text x="{mid}" y="{}" text-anchor="middle">percentile</text>"#,
        coord(PLOT_BOTTOM + 38.0)
    );
    let _ = writeln!(
        s,
        r#"<text transform="rotate(-90)" x="{}" y="20" text-anchor="middle">latency (ms)</text>"#,
        coord(-(PLOT_TOP + PLOT_BOTTOM) / 2.0)
    );

    // Curves.
    s.push_str("<g fill=\"none\" stroke-width=\"1.5\" stroke-linejoin=\"round\">\n");
    for (i, points) in kept.iter().enumerate() {
        let mut xy: Vec<(String, String)> = points
            .iter()
            .map(|&(x, ms)| (coord(px(x)), coord(py(ms))))
            .collect();
        // Points closer than the rounding (the tail's many clamped rows) add
        // only bytes.
        xy.dedup();
        if xy.is_empty() {
            continue;
        }
        let joined: Vec<String> = xy.iter().map(|(x, y)| format!("{x},{y}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline stroke="{}"{} points="{}"/>"#,
            colour(i),
            dash(i),
            joined.join(" ")
        );
        // A polyline of one point draws nothing: mark it.
        if let [(x, y)] = &xy[..] {
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}" stroke="none"/>"#,
                colour(i)
            );
        }
    }
    s.push_str("</g>\n");

    // Legend.
    for (i, (label, &(x, row))) in labels.iter().zip(&legend).enumerate() {
        let y = LEGEND_TOP + row * LEGEND_ROW;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}"{} stroke-width="2"/>"#,
            coord(x),
            coord(y - 4.0),
            coord(x + 20.0),
            coord(y - 4.0),
            colour(i),
            dash(i)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            coord(x + 26.0),
            coord(y),
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// log10(1/(1-p)) for a percentile p: 0 at 0%, 1 at 90%, 2 at 99%;
/// infinite at 100%.
fn decades(p: f64) -> f64 {
    -(-p / 100.0).ln_1p() / LN_10
}

/// The tick label of decade k: 0%, 90%, 99%, 99.9%, ...
fn percentile_label(k: u32) -> String {
    match k {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        _ => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
}

/// Where each legend entry goes: (x, row), flowing left to right and
/// wrapping at the plot's right edge. Widths are estimated (no font
/// metrics here) at a generous 7 px per character.
fn legend_layout(labels: &[String]) -> Vec<(f64, f64)> {
    let mut at = Vec::with_capacity(labels.len());
    let (mut x, mut row) = (PLOT_LEFT, 0.0);
    for label in labels {
        let width = 26.0 + 7.0 * label.chars().count() as f64;
        if x > PLOT_LEFT && x + width > PLOT_RIGHT {
            x = PLOT_LEFT;
            row += 1.0;
        }
        at.push((x, row));
        x += width + 18.0;
    }
    at
}

fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

fn dash(i: usize) -> &'static str {
    if i >= COLOURS.len() {
        r#" stroke-dasharray="6 3""#
    } else {
        ""
    }
}

/// A step of 1, 2, 2.5 or 5 times a power of ten that cuts `span` into
/// about five.
fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// The next multiple of a nice step above a positive `v`, so the largest
/// value sits below the top edge.
fn nice_above(v: f64) -> f64 {
    let step = nice_step(v);
    ((v / step).floor() + 1.0) * step
}

/// Decimals that show every multiple of `step` exactly (2.5 -> 1).
fn decimals(step: f64) -> usize {
    (0..9)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(9)
}

/// An SVG coordinate with at most one decimal, to keep the file small.
fn coord(v: f64) -> String {
    let s = format!("{v:.1}");
    match s.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => s,
    }
}

/// Text for XML content and attributes; control characters XML cannot
/// carry are dropped.
fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\t' | '\n' | '\r' => s.push(' '),
            c if (c as u32) < 0x20 => {}
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::latency_histogram;

    /// Latencies whose tail grows like (1/(1-q))^shape, from `base_ms` at
    /// the median-ish up: the shape of a real run without its noise.
    fn synthetic(n: u32, base_ms: f64, shape: f64) -> Histogram<u64> {
        let mut h = latency_histogram();
        for i in 0..n {
            let q = (f64::from(i) + 0.5) / f64::from(n);
            let ms = base_ms * (1.0 / (1.0 - q)).powf(shape);
            h.saturating_record((ms * 1e6) as u64);
        }
        h
    }

    /// Tags open and close in order (a tiny check, not an XML parser), and
    /// every `&` starts an entity.
    fn well_formed(svg: &str) -> bool {
        let mut open = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let Some(len) = rest[i..].find('>') else {
                return false;
            };
            let tag = &rest[i + 1..i + len];
            rest = &rest[i + len + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if open.pop() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap_or(""));
            }
        }
        let entities = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
        open.is_empty()
            && svg
                .match_indices('&')
                .all(|(i, _)| entities.iter().any(|e| svg[i..].starts_with(e)))
    }

    fn check(svg: &str, polylines: usize) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        assert!(well_formed(svg), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), polylines, "{svg}");
        for bad in ["NaN", "inf"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
    }

    /// The points of the `n`th polyline.
    fn polyline(svg: &str, n: usize) -> Vec<(f64, f64)> {
        let line = svg.lines().filter(|l| l.starts_with("<polyline")).nth(n);
        let points = line.unwrap().split("points=\"").nth(1).unwrap();
        points
            .trim_end_matches("\"/>")
            .split(' ')
            .map(|xy| {
                let (x, y) = xy.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn plot_hgrm_round_trips() {
        let h = synthetic(100_000, 0.2, 0.5);
        let text = hgrm(&h, 1e6);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HGRM_HEADER);
        assert_eq!(lines[1], "");
        let n = lines.len();
        assert!(lines[n - 3].starts_with("#[Mean    = "), "{text}");
        assert!(lines[n - 2].ends_with("Total count    =       100000]"));
        assert!(lines[n - 1].ends_with("SubBuckets     =         2048]"));

        let rows = parse_hgrm(&text).unwrap();
        let want: Vec<_> = h.iter_quantiles(TICKS_PER_HALF_DISTANCE).collect();
        assert_eq!(rows.len(), want.len());
        for ((p, ms), v) in rows.iter().zip(&want) {
            assert!((p - v.quantile_iterated_to() * 100.0).abs() < 1e-9);
            assert!((ms - v.value_iterated_to() as f64 / 1e6).abs() <= 0.0005);
        }
        assert_eq!(rows.first().unwrap().0, 0.0);
        assert_eq!(rows.last().unwrap().0, 100.0);
        assert_eq!(
            rows.last().unwrap().1,
            format!("{:.3}", h.max() as f64 / 1e6)
                .parse::<f64>()
                .unwrap()
        );
    }

    #[test]
    fn plot_hgrm_rows_in_hdrhistogram_format() {
        let mut h = latency_histogram();
        h.saturating_record(2_000_000);
        h.saturating_record(2_000_000);
        let text = hgrm(&h, 1e6);
        assert!(
            text.starts_with(
                "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
                 \x20      2.001 0.000000000000          2           1.00\n\
                 \x20      2.001 1.000000000000          2\n\
                 #[Mean    =        2.000, StdDeviation   =        0.000]\n"
            ),
            "{text}"
        );
        // Nothing recorded: no rows, and no rows parsed back.
        let empty = hgrm(&latency_histogram(), 1e6);
        assert_eq!(parse_hgrm(&empty), Ok(vec![]));
        assert!(empty.contains("Total count    =            0]"), "{empty}");
    }

    #[test]
    fn plot_parse_hgrm_rejects_other_text() {
        assert!(parse_hgrm("").is_err(), "no header");
        assert!(parse_hgrm("1.0 0.5 3\n").is_err(), "no header");
        let head = format!("{HGRM_HEADER}\n\n");
        let err = parse_hgrm(&format!("{head}1.0 0.5\n")).unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(
            parse_hgrm(&format!("{head}1.0 1.5 3\n")).is_err(),
            "percentile"
        );
        assert!(parse_hgrm(&format!("{head}x 0.5 3 2.00\n")).is_err());
        assert_eq!(
            parse_hgrm(&format!("{head}  1.5 0.5 3 2.00\n#[Max = 1]\n")),
            Ok(vec![(50.0, 1.5)])
        );
    }

    #[test]
    fn plot_svg_of_two_histograms() {
        let curves: Vec<Curve> = [("cluecast <io_uring> & \"zc\"", 0.2), ("ceiling", 0.1)]
            .iter()
            .map(|&(label, base)| Curve {
                label: label.to_string(),
                points: parse_hgrm(&hgrm(&synthetic(100_000, base, 0.4), 1e6)).unwrap(),
            })
            .collect();
        let svg = percentile_svg("fan-out latency", "host-1 · 64 subscribers", &curves, None);
        check(&svg, 2);
        assert!(svg.contains(">cluecast &lt;io_uring&gt; &amp; &quot;zc&quot;</text>"));
        assert!(svg.contains(">ceiling</text>"));
        assert!(svg.contains(">fan-out latency</text>"));
        assert!(svg.contains(">host-1 · 64 subscribers</text>"));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        // 100 000 samples reach a little past 99.999%: the axis ends there,
        // no further tick.
        assert!(!svg.contains(">99.9999%<"));
        for n in 0..2 {
            let xy = polyline(&svg, n);
            // Percentile curves rise: y (downwards in SVG) never grows.
            assert!(xy.windows(2).all(|w| w[1].1 <= w[0].1), "{xy:?}");
            let &(x, y) = xy.last().unwrap();
            assert_eq!(x, PLOT_RIGHT, "the max is drawn at the axis end");
            assert!(y > PLOT_TOP, "the max stays below the top");
        }
    }

    #[test]
    fn plot_svg_edge_cases() {
        let curve = |label: &str, points: &[(f64, f64)]| Curve {
            label: label.to_string(),
            points: points.to_vec(),
        };
        // Nothing at all.
        check(&percentile_svg("", "", &[], None), 0);
        // Empty and all-invalid curves are listed, not drawn.
        let svg = percentile_svg(
            "t",
            "s",
            &[
                curve("none", &[]),
                curve(
                    "junk",
                    &[(f64::NAN, 1.0), (50.0, f64::INFINITY), (101.0, 1.0)],
                ),
            ],
            Some(f64::NAN),
        );
        check(&svg, 0);
        assert!(svg.contains(">none (no data)</text>"));
        assert!(svg.contains(">junk (no data)</text>"));
        // One point, all zeros: a marked point, y axis 0..1.
        let svg = percentile_svg("t", "s", &[curve("one", &[(50.0, 0.0)])], None);
        check(&svg, 1);
        assert!(svg.contains("<circle"));
        assert!(svg.contains(">1.0</text>"), "{svg}");
        // Only the 100th percentile: drawn at the axis end.
        let svg = percentile_svg("t", "s", &[curve("max", &[(100.0, 3.0)])], None);
        check(&svg, 1);
        assert!(svg.contains(&format!("points=\"{},", coord(PLOT_RIGHT))));
        // Clamped: the 9 ms point is drawn at the top edge of a 0..5 axis.
        let svg = percentile_svg(
            "t",
            "s",
            &[curve("c", &[(0.0, 1.0), (99.0, 9.0)])],
            Some(5.0),
        );
        check(&svg, 1);
        assert_eq!(polyline(&svg, 0)[1].1, PLOT_TOP);
        assert!(svg.contains(">5</text>") && !svg.contains(">6</text>"));
    }

    #[test]
    fn plot_percentile_axis() {
        assert_eq!(decades(0.0), 0.0);
        assert!((decades(90.0) - 1.0).abs() < 1e-12);
        assert!((decades(99.999) - 5.0).abs() < 1e-9);
        assert!(decades(100.0).is_infinite());
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(4), "99.99%");
        // A point at 99.9999% extends the axis to that decade's tick.
        let c = Curve {
            label: "c".to_string(),
            points: vec![(0.0, 1.0), (99.9999, 2.0), (100.0, 3.0)],
        };
        let svg = percentile_svg("t", "s", &[c], None);
        assert!(svg.contains(">99.9999%<") && !svg.contains(">99.99999%<"));
        // Far past the cap: the axis stops at 99.999999%.
        let c = Curve {
            label: "c".to_string(),
            points: vec![(0.0, 1.0), (99.99999999999, 2.0)],
        };
        let svg = percentile_svg("t", "s", &[c], None);
        assert!(svg.contains(">99.999999%<") && !svg.contains(">99.9999999%<"));
    }

    #[test]
    fn plot_nice_numbers() {
        assert_eq!(nice_above(3.0), 4.0);
        assert_eq!(nice_above(2.7), 3.0);
        assert_eq!(nice_above(0.95), 1.0);
        assert_eq!(nice_above(47.0), 50.0);
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(12.5), 2.5);
        assert_eq!(decimals(2.5), 1);
        assert_eq!(decimals(0.02), 2);
        assert_eq!(decimals(20.0), 0);
        assert_eq!(coord(12.04), "12");
        assert_eq!(coord(12.06), "12.1");
    }
}
