//! The unit tests of `zerocopy`.

use super::reports::{pairs, ratios, suggested_min, verdict};
use super::*;

fn run(mb: f64, cpu: f64) -> Run {
    Run {
        measured: true,
        mb_per_s: mb,
        server_cpu_per_gb: cpu,
        work_per_gb: cpu,
        ..Run::default()
    }
}

fn cells(size_ratios: &[(usize, f64)]) -> Vec<Cell> {
    size_ratios
        .iter()
        .flat_map(|&(size, cpu_ratio)| {
            let mut plain = Cell::new(size, Mode::Plain);
            plain.runs = vec![run(100.0, 1.0), run(110.0, 1.0)];
            let mut zc = Cell::new(size, Mode::ZeroCopy);
            zc.runs = vec![run(100.0, cpu_ratio), run(110.0, cpu_ratio)];
            [plain, zc]
        })
        .collect()
}

#[test]
fn verdicts_and_suggested_minimum() {
    // Loses small, wins from 16K on: the default follows.
    let c = cells(&[(1024, 1.3), (4096, 1.0), (16384, 0.8), (65536, 0.7)]);
    let v: Vec<&str> = pairs(&c)
        .into_iter()
        .map(|(p, z)| verdict(&ratios(p, z)))
        .collect();
    assert_eq!(
        v,
        [
            "zero-copy loses",
            "no clear difference",
            "zero-copy wins",
            "zero-copy wins"
        ]
    );
    assert_eq!(suggested_min(&c), 16384);
    // A win that does not hold at the largest size does not count.
    assert_eq!(suggested_min(&cells(&[(1024, 0.8), (4096, 1.2)])), 0);
    assert_eq!(suggested_min(&cells(&[(1024, 1.2)])), 0);
}

#[test]
fn disturbance_of_a_run() {
    let unmeasured = Run::default();
    assert_eq!(unmeasured.disturbance(), f64::INFINITY);
    let r = Run {
        measured: true,
        foreign_server: 0.05,
        foreign_client: f64::NAN,
        ..Run::default()
    };
    assert_eq!(r.disturbance(), 0.05);
}
