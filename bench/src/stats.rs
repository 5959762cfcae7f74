//! The little arithmetic the report needs: medians, and ratios of runs
//! measured side by side.

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
