//! The little arithmetic the report needs: medians, ratios of runs
//! measured side by side, latency percentiles.

use hdrhistogram::Histogram;

/// Median of the finite values (mean of the middle two for an even count);
/// None when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median of `f` over `items` (see [`median`]); NaN when none is finite.
pub fn median_by<T>(items: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    let v: Vec<f64> = items.iter().map(|x| f(x)).collect();
    median(&v).unwrap_or(f64::NAN)
}

/// The item whose `f` is nearest `target` (the first of equals); None
/// without items.
pub fn nearest<T>(
    items: impl IntoIterator<Item = T>,
    target: f64,
    f: impl Fn(&T) -> f64,
) -> Option<T> {
    items
        .into_iter()
        .min_by(|a, b| (f(a) - target).abs().total_cmp(&(f(b) - target).abs()))
}

/// `items` spread over `parts` (the connections or clients of each
/// process), as (first index, count): equal shares, the remainder one each
/// to the first parts.
pub fn shares(items: usize, parts: usize) -> Vec<(usize, usize)> {
    let (each, extra) = (items / parts, items % parts);
    let mut first = 0;
    (0..parts)
        .map(|k| {
            let count = each + usize::from(k < extra);
            first += count;
            (first - count, count)
        })
        .collect()
}

/// Median of the ratios `a[i] / b[i]` of runs paired by index.
///
/// Each pair was measured back to back, so slow drifts of the (shared,
/// noisy) machine hit both members alike and cancel in their ratio; the
/// median of those ratios is steadier than the ratio of the two medians.
/// Pairs with a missing, zero or non-finite member are skipped.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite() && **y != 0.0)
        .map(|(x, y)| x / y)
        .collect();
    median(&ratios)
}

/// Measures up to `1 + retries` times, until an attempt's disturbance (the
/// share of a measured core that went to anything else on the shared
/// machine; infinite for an attempt that could not be judged) is at most
/// `max`; keeps the least disturbed attempt. Returns it and the attempts
/// thrown away, whose problems still belong in the report.
pub fn least_disturbed<T>(
    retries: usize,
    max: f64,
    mut measure: impl FnMut(usize) -> (T, f64),
) -> (T, Vec<T>) {
    let (mut best, mut best_score) = measure(0);
    let mut thrown = Vec::new();
    for attempt in 1..=retries {
        if best_score <= max {
            break;
        }
        if best_score.is_finite() {
            eprintln!(
                "    {:.0}% of a measured core went elsewhere (over {:.0}%): again",
                best_score * 100.0,
                max * 100.0
            );
        } else {
            eprintln!("    a run failed: again");
        }
        let (m, score) = measure(attempt);
        if score < best_score {
            thrown.push(std::mem::replace(&mut best, m));
            best_score = score;
        } else {
            thrown.push(m);
        }
    }
    (best, thrown)
}

/// How a progress line names a repeated attempt; the first has no tag.
pub fn attempt_tag(attempt: usize) -> String {
    if attempt > 0 {
        format!(" (attempt {})", attempt + 1)
    } else {
        String::new()
    }
}

/// Why a run thrown away by `least_disturbed` was measured again.
pub fn redone_because(foreign_server_pct: f64, foreign_client_pct: f64) -> String {
    format!(
        "redone ({}% / {}% of the server's / generator's core went elsewhere)",
        crate::report::num(foreign_server_pct, 0),
        crate::report::num(foreign_client_pct, 0)
    )
}

/// Nanoseconds, from 1 µs to 10 minutes at 3 significant digits; values
/// outside are clamped, so recording never fails.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants within what the crate accepts: cannot fail.
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles of one run, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// Parses a byte count: a plain number, or one with a K, M or G suffix
/// (binary: 1K = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, ' '),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 1024, 16K, 4M)"))?;
    let shift = match unit {
        ' ' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A byte count as the shortest exact K/M form (1024 -> "1 KiB").
pub fn format_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            median(&[f64::NAN, 5.0]),
            Some(5.0),
            "non-finite values are ignored"
        );
    }

    #[test]
    fn paired_ratio_is_median_of_pairwise_ratios() {
        // Pairwise ratios 2.0, 0.5, 1.5: median 1.5. The ratio of medians
        // would be 20/10 = 2.0, dragged by the drift between pairs.
        let zc = [20.0, 5.0, 30.0];
        let plain = [10.0, 10.0, 20.0];
        assert_eq!(paired_ratio(&zc, &plain), Some(1.5));
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None, "a zero base is skipped");
        assert_eq!(
            paired_ratio(&[2.0, 9.0], &[1.0]),
            Some(2.0),
            "unpaired runs are ignored"
        );
    }

    #[test]
    fn least_disturbed_stops_early_and_keeps_the_best() {
        // Calm at once: one attempt.
        let (kept, thrown) = least_disturbed(2, 0.1, |a| (a, 0.05));
        assert_eq!((kept, thrown), (0, vec![]));
        // Disturbed, then worse, then calm: the calm one is kept.
        let scores = [0.3, 0.5, 0.02];
        let (kept, thrown) = least_disturbed(2, 0.1, |a| (a, scores[a]));
        assert_eq!((kept, thrown), (2, vec![1, 0]));
        // Never calm: the least disturbed of all attempts.
        let scores = [0.3, 0.2, f64::INFINITY];
        let (kept, thrown) = least_disturbed(2, 0.1, |a| (a, scores[a]));
        assert_eq!((kept, thrown), (1, vec![0, 2]));
        // No retries allowed.
        let (kept, thrown) = least_disturbed(0, 0.1, |a| (a, 0.9));
        assert_eq!((kept, thrown), (0, vec![]));
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = latency_histogram();
        for ms in 1..=1000u64 {
            h.saturating_record(ms * 1_000_000);
        }
        h.saturating_record(u64::MAX); // clamped, not an error
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1001);
        let near = |got: u64, want_ms: u64| {
            let want = want_ms * 1_000_000;
            assert!(got.abs_diff(want) <= want / 500, "{got} vs {want}");
        };
        near(p.p50, 501);
        near(p.p90, 901);
        near(p.p99, 991);
        near(p.p999, 1000);
        assert!(p.max >= 599_000_000_000, "clamped to the top: {}", p.max);
        assert_eq!(
            Percentiles::of(&latency_histogram()),
            Percentiles::default()
        );
    }

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("16K"), Ok(16 << 10));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("K").is_err());
        assert_eq!(format_size(256 << 10), "256 KiB");
        assert_eq!(format_size(4 << 20), "4 MiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
