//! A synthetic walk (a seeded random walker at 1 Hz with GPS noise), for
//! tests, the fuzz corpus and measurements of the codec.

use super::*;

/// A small deterministic PRNG (splitmix64): the walk must be the same for a
/// seed everywhere, and the crate takes no `rand` dependency for a test aid.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in lo..=hi.
    pub(super) fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Approximately standard normal (Irwin–Hall: four uniforms), bounded at
    /// ±3.46. Only + and * so the walk is bit-identical on every platform.
    fn normal(&mut self) -> f64 {
        let sum = self.unit() + self.unit() + self.unit() + self.unit();
        (sum - 2.0) * 1.732_050_807_568_877_2
    }
}

const WALK_ORIGIN_LON_E7: i32 = 23_499_000;

/// Correlation of the GPS error from one second to the next: exp(-1 s / 30 s).
const GPS_ERROR_RHO: f64 = 0.967_216_100_482_005_9;

/// Rotates the unit vector `(x, y)` by `angle` radians (|angle| well under 1).
/// sin and cos are short Taylor series, not libm, so the walk does not depend
/// on the platform's maths library.
fn rotate(x: f64, y: f64, angle: f64) -> (f64, f64) {
    let a2 = angle * angle;
    let cos = 1.0 - a2 / 2.0 + a2 * a2 / 24.0 - a2 * a2 * a2 / 720.0;
    let sin = angle * (1.0 - a2 / 6.0 + a2 * a2 / 120.0 - a2 * a2 * a2 / 5040.0);
    unit(x * cos - y * sin, x * sin + y * cos)
}

/// `(x, y)` scaled to length 1 (east if it has none).
fn unit(x: f64, y: f64) -> (f64, f64) {
    let norm = (x * x + y * y).sqrt();
    if norm > 0.0 {
        (x / norm, y / norm)
    } else {
        (1.0, 0.0)
    }
}

/// A plausible path of one player, for measurements and tests: `count` fixes
/// starting at `start_ts_ms`, the same for the same seed on every platform.
///
/// The model, one step per second:
/// - The player alternates walking legs (60–600 s) and pauses (20–180 s).
///   Walking, the speed drifts around a per-leg pace of 1.0–1.6 m/s and the
///   heading wanders gently (a turn rate that is itself a slow random
///   process, about 3°/s), with a street corner (a 60–120° turn over 4 s)
///   about once every 90 s. Paused, the player does not move at all.
/// - The reported fix is the true position plus a GPS error that is an AR(1)
///   process per axis with a 30 s correlation time and a standard deviation
///   of 0.4 × the reported accuracy (a few metres): errors drift, they do not
///   jump from fix to fix, and a standing player's fix wanders — by about
///   1 m from one second to the next at the median accuracy, on the noisy
///   side of what phones (which smooth their fixes) report.
/// - Accuracy follows a per-leg level (3.5–10 m, one leg in five 10–18 m, as
///   in a street canyon) with multiplicative noise, clamped to 3–20 m; the
///   receiver re-estimates it on about half of the fixes and repeats the last
///   value otherwise, and it is reported to the centimetre.
/// - About once every 90 s fixes are missed for 1–9 s (a timestamp jump of
///   2–10 s). Each timestamp is the whole second plus a delivery jitter of
///   ±30 ms, uniform and independent per fix.
///
/// The walk starts within about 1 km of the origin (Île de la Cité, Paris).
pub fn synthetic_walk(seed: u64, count: usize, start_ts_ms: u64) -> Vec<Position> {
    let mut rng = SplitMix64(seed);
    // True position in metres east and north of the origin.
    let mut east = rng.uniform(-1000.0, 1000.0);
    let mut north = rng.uniform(-1000.0, 1000.0);
    let (mut heading_x, mut heading_y) = unit(rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0));
    let mut turn_rate = 0.0; // radians per second
    let mut corner_left_s = 0; // seconds left in a street-corner turn
    let mut corner_rate = 0.0;
    let mut walking = rng.chance(0.5);
    let mut phase_left_s = 0i64;
    let mut pace = 1.3;
    let mut speed = 0.0;
    let mut accuracy_level_m = 6.0;
    let mut accuracy_m = 6.0;
    let mut reported_accuracy_cm = 600u32;
    let (mut error_east, mut error_north) = (0.0, 0.0);
    let error_innovation = (1.0 - GPS_ERROR_RHO * GPS_ERROR_RHO).sqrt();
    let mut missing_left_s = 0;

    let mut fixes = Vec::with_capacity(count);
    let mut second = 0u64;
    while fixes.len() < count {
        if phase_left_s == 0 {
            walking = !walking;
            phase_left_s = if walking {
                rng.int(60, 600)
            } else {
                rng.int(20, 180)
            };
            pace = rng.uniform(1.0, 1.6);
            accuracy_level_m = if rng.chance(0.2) {
                rng.uniform(10.0, 18.0)
            } else {
                rng.uniform(3.5, 10.0)
            };
        }
        phase_left_s -= 1;

        if walking {
            speed += 0.2 * (pace - speed) + 0.03 * rng.normal();
            turn_rate = 0.9 * turn_rate + 0.02 * rng.normal();
            if corner_left_s == 0 && rng.chance(1.0 / 90.0) {
                corner_left_s = 4;
                let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
                corner_rate = sign * rng.uniform(60.0, 120.0).to_radians() / 4.0;
            }
            let mut turn = turn_rate;
            if corner_left_s > 0 {
                corner_left_s -= 1;
                turn += corner_rate;
            }
            (heading_x, heading_y) = rotate(heading_x, heading_y, turn);
            east += heading_x * speed;
            north += heading_y * speed;
        } else {
            speed = 0.0;
        }

        accuracy_m += 0.05 * (accuracy_level_m - accuracy_m) + 0.03 * accuracy_m * rng.normal();
        accuracy_m = accuracy_m.clamp(3.0, 20.0);
        let error_sd_m = 0.4 * accuracy_m;
        error_east = GPS_ERROR_RHO * error_east + error_innovation * error_sd_m * rng.normal();
        error_north = GPS_ERROR_RHO * error_north + error_innovation * error_sd_m * rng.normal();

        if missing_left_s > 0 {
            missing_left_s -= 1;
        } else {
            if rng.chance(0.5) {
                reported_accuracy_cm = (accuracy_m * 100.0).round() as u32;
            }
            let jitter_ms = rng.int(-30, 30);
            let ts = start_ts_ms
                .saturating_add(second * 1000)
                .saturating_add_signed(jitter_ms)
                .max(1);
            fixes.push(Position {
                lat_e7: WALK_ORIGIN_LAT_E7
                    + ((north + error_north) * LAT_E7_PER_METRE).round() as i32,
                lon_e7: WALK_ORIGIN_LON_E7
                    + ((east + error_east) * LON_E7_PER_METRE).round() as i32,
                accuracy_cm: reported_accuracy_cm,
                client_ts_ms: ts,
            });
            if rng.chance(1.0 / 90.0) {
                missing_left_s = rng.int(1, 9);
            }
        }
        second += 1;
    }
    fixes
}
