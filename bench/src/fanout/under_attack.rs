//! `storm --attack` in the driver (issue 15): every round runs the same
//! storm twice, each against a fresh appliance, once calm and once under
//! attack (attack.rs), the order alternating from round to round as the
//! machine drifts; in both the returning subscribers are newcomers, each
//! from an address of its own, timed from connect to SUBSCRIBED with
//! their refusals counted (newcomers.rs). This module makes the two sides,
//! reads their figures, and reports them side by side with the ratio of
//! the connect-to-SUBSCRIBED p99s (markdown and JSON).

use std::fmt::Write as _;

use super::{json_case, median_pool, median_run, pct_of_core, Args, Run, Shape};
use crate::attack::{AttackFlags, Counts};
use crate::newcomers;
use crate::outcome::Outcome;
use crate::report::{json_list, json_num, num, thousands};
use crate::server::Stopped;
use crate::stats::{median, median_by};
use crate::targets::Target;

/// The appliance's admission counters (its ShardStats at exit, summed
/// over shards) shown next to what the attackers saw.
const SERVER_COUNTERS: [&str; 7] = [
    "accepted",
    "handshakes_evicted",
    "handshakes_timed_out",
    "refused_rate",
    "refused_tls_rate",
    "refused_source",
    "rejected_full",
];

/// The attack flags of a run in attack mode.
fn flags(args: &Args) -> Option<AttackFlags> {
    match args.shape {
        Shape::Storm(f) if f.attack.attack.is_some() => Some(f.attack),
        _ => None,
    }
}

/// Refuses what attack mode cannot run (nothing without --attack).
pub(super) fn check(args: &Args) -> Result<(), String> {
    let Some(f) = flags(args) else {
        return Ok(());
    };
    if args.target != Target::Cluecast {
        return Err(format!(
            "--attack measures the appliance's admission: the cluecast target only, not {}",
            args.target.name()
        ));
    }
    if args.vs_plain {
        return Err("--attack pairs calm and attack runs; it does not go with --vs-plain".into());
    }
    if let Shape::Storm(s) = args.shape {
        if s.storm_subscribers > newcomers::COUNT_MAX {
            return Err(format!(
                "--attack: at most {} storm subscribers (an address each in 127.2.0.0/16)",
                newcomers::COUNT_MAX
            ));
        }
    }
    let server = args.common.server.unwrap_or(args.common.listen);
    if !server.is_ipv4() {
        return Err(format!(
            "--attack: the server must be on IPv4 loopback, not {server}"
        ));
    }
    f.check(args.tls || args.tls_ca.is_some())
}

/// The two sides of every round, calm first.
pub(super) fn sides(args: &Args) -> Option<Vec<Args>> {
    flags(args)?;
    let side = |calm: bool| {
        let mut a = args.clone();
        if let Shape::Storm(f) = &mut a.shape {
            f.attack.attack_calm = calm;
        }
        a
    };
    Some(vec![side(true), side(false)])
}

/// Which side a run is: "calm", "attack"; None without --attack.
fn side(args: &Args) -> Option<&'static str> {
    flags(args).map(|f| if f.attack_calm { "calm" } else { "attack" })
}

/// The order of the sides in round `round` (from 0): as given in even
/// rounds, reversed in odd ones with --attack.
pub(super) fn order(args: &Args, round: usize, sides: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sides).collect();
    if flags(args).is_some() && round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The progress tag of a side (" calm", " attack"), empty without.
pub(super) fn tag(side_args: &Args) -> String {
    side(side_args).map_or(String::new(), |s| format!(" {s}"))
}

/// Words for the report's title.
pub(super) fn title(args: &Args) -> &'static str {
    match side(args) {
        Some("calm") => ", calm (the attack's baseline: no attackers)",
        Some(_) => ", under attack",
        None => "",
    }
}

/// The newcomers' and attackers' figures of one run.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Figures {
    /// Newcomers that tried, that got SUBSCRIBED, attempts turned away
    /// before WELCOME, newcomers turned away at least once.
    newcomers: u64,
    subscribed: u64,
    refusals: u64,
    refused: u64,
    /// Connect-to-SUBSCRIBED p50, p99, max (ms).
    connect_ms: [f64; 3],
    attack: Counts,
    /// [`SERVER_COUNTERS`]; None where the server printed none.
    server: [Option<u64>; 7],
}

impl Figures {
    pub(super) fn of(o: &Outcome, stopped: &Stopped) -> Figures {
        Figures {
            newcomers: o.newcomers,
            subscribed: o.newcomers_subscribed,
            refusals: o.newcomer_refusals,
            refused: o.newcomers_refused,
            connect_ms: [o.newcomer_p50, o.newcomer_p99, o.newcomer_max].map(|ns| match ns {
                0 => f64::NAN,
                ns => ns as f64 / 1e6,
            }),
            attack: Counts::of(o),
            server: SERVER_COUNTERS.map(|k| stopped.stat(k)),
        }
    }

    /// Each figure's median over `runs`.
    pub(super) fn median(runs: &[&Run]) -> Figures {
        let med = |f: &dyn Fn(&Figures) -> f64| median_by(runs, |r| f(&r.admission));
        let count = |f: &dyn Fn(&Figures) -> u64| med(&|x| f(x) as f64).round() as u64;
        let a = |f: fn(&Counts) -> u64| count(&|x| f(&x.attack));
        Figures {
            newcomers: count(&|x| x.newcomers),
            subscribed: count(&|x| x.subscribed),
            refusals: count(&|x| x.refusals),
            refused: count(&|x| x.refused),
            connect_ms: std::array::from_fn(|i| med(&|x| x.connect_ms[i])),
            attack: Counts {
                opened: a(|c| c.opened),
                failed: a(|c| c.failed),
                goaway_server_full: a(|c| c.goaway_server_full),
                errors: a(|c| c.errors),
                handshake_timeouts: a(|c| c.handshake_timeouts),
                closed_silently: a(|c| c.closed_silently),
                welcomed: a(|c| c.welcomed),
                held: a(|c| c.held),
            },
            server: std::array::from_fn(|i| {
                let v: Vec<f64> = (runs.iter().filter_map(|r| r.admission.server[i]))
                    .map(|n| n as f64)
                    .collect();
                median(&v).map(|m| m.round() as u64)
            }),
        }
    }
}

/// What the report should say of a run's newcomers and attackers.
pub(super) fn problems(args: &Args, f: &Figures) -> Vec<String> {
    let Some(side) = side(args) else {
        return Vec::new();
    };
    let mut p = Vec::new();
    if f.refusals > 0 {
        p.push(format!(
            "{side}: {} newcomers turned away before WELCOME ({} attempts refused); each \
             waited and tried again",
            f.refused, f.refusals
        ));
    }
    if f.subscribed < f.newcomers {
        p.push(format!(
            "{side}: {} of {} newcomers never got SUBSCRIBED",
            f.newcomers - f.subscribed,
            f.newcomers
        ));
    }
    if side == "attack" && f.attack.opened == 0 {
        p.push("attack: the attackers opened no connection".into());
    }
    if f.attack.failed > 0 {
        p.push(format!(
            "attack: {} of {} connections failed to connect",
            f.attack.failed, f.attack.opened
        ));
    }
    p
}

/// The progress line's words for a run's newcomers and attackers.
pub(super) fn summary(args: &Args, r: &Run) -> String {
    if side(args).is_none() {
        return String::new();
    }
    let f = &r.admission;
    let a = &f.attack;
    format!(
        "; newcomers {}/{} back, {} refused, connect→SUBSCRIBED p50 {} p99 {} max {} ms; \
         attack: {} opened, {} GOAWAY ServerFull, {} ERROR, {} closed silently, {} held",
        f.subscribed,
        f.newcomers,
        f.refusals,
        num(f.connect_ms[0], 2),
        num(f.connect_ms[1], 2),
        num(f.connect_ms[2], 2),
        a.opened,
        a.goaway_server_full,
        a.errors,
        a.closed_silently,
        a.held
    )
}

/// The server's admission counters as `a / b / c ...` ("–" where absent).
fn server_counts(f: &Figures) -> String {
    let each: Vec<String> = (f.server.iter())
        .map(|c| c.map_or("–".into(), |n| thousands(n as f64)))
        .collect();
    each.join(" / ")
}

/// The newcomers' and attackers' table, after the storm's.
pub(super) fn table(s: &mut String, args: &Args, named: &[(String, &Run)]) {
    let (Some(f), Some(side)) = (flags(args), side(args)) else {
        return;
    };
    let attack = match side {
        "calm" => "No attackers in this run (the calm side of the pair).".to_string(),
        _ => format!(
            "The attack, from the warm-up's start to the window's end: {} from {} source \
             addresses in 127.3.0.0/16, {} new connections/s in all, at most {} held at once, \
             each held until the server closed it. *opened*: connections tried; *GOAWAY*: \
             answered GOAWAY ServerFull; *ERROR*: answered ERROR (of which HandshakeTimeout); \
             *silent*: closed by the server without a frame (over TLS every refusal is one); \
             *held*: open and unanswered when the attack stopped.",
            f.attack.map_or(String::new(), |k| k.to_string()),
            f.attack_sources,
            thousands(f.attack_rate_per_s),
            thousands(f.attack_sockets_max as f64)
        ),
    };
    let _ = writeln!(
        s,
        "\nNewcomers: the returning subscribers, each from an address of its own in \
         127.2.0.0/16. *connect→SUBSCRIBED*: from just before its connect(2) to its SUBSCRIBED, \
         waits after refusals included (ms); *refused*: attempts that did not reach WELCOME \
         (GOAWAY, ERROR, a close, a timeout), each retried after the GOAWAY's retry hint or a \
         short backoff. {attack} *server*: its counters {} at exit.\n",
        SERVER_COUNTERS.join(" / ")
    );
    let _ = writeln!(
        s,
        "| run | newcomers back | refused (newcomers) | connect→SUBSCRIBED p50 | p99 | max | \
         attack opened | GOAWAY | ERROR (timeout) | silent | failed | held | server |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, r) in named.iter().filter(|(_, r)| r.measured) {
        let (x, a) = (&r.admission, &r.admission.attack);
        let _ = writeln!(
            s,
            "| {name} | {} / {} | {} ({}) | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            x.subscribed,
            x.newcomers,
            x.refusals,
            x.refused,
            num(x.connect_ms[0], 3),
            num(x.connect_ms[1], 3),
            num(x.connect_ms[2], 3),
            thousands(a.opened as f64),
            thousands(a.goaway_server_full as f64),
            thousands(a.errors as f64),
            thousands(a.handshake_timeouts as f64),
            thousands(a.closed_silently as f64),
            a.failed,
            a.held,
            server_counts(x),
        );
    }
}

/// The run's own JSON members (with leading commas): its side, the
/// newcomers and the attack (null on the calm side); empty without
/// --attack.
pub(super) fn json(args: &Args, r: &Run) -> String {
    let (Some(f), Some(side)) = (flags(args), side(args)) else {
        return String::new();
    };
    let x = &r.admission;
    let attack = match side {
        "calm" => "null".to_string(),
        _ => {
            let a = &x.attack;
            let kinds: Vec<String> = f
                .attack
                .iter()
                .flat_map(|k| k.iter())
                .map(|k| format!("\"{}\"", k.name()))
                .collect();
            format!(
                "{{\"kinds\":[{}],\"sources\":{},\"rate_per_s\":{},\"sockets_max\":{},\
                 \"opened\":{},\"failed\":{},\"goaway_server_full\":{},\"errors\":{},\
                 \"handshake_timeouts\":{},\"closed_silently\":{},\"welcomed\":{},\"held\":{}}}",
                kinds.join(","),
                f.attack_sources,
                json_num(f.attack_rate_per_s),
                f.attack_sockets_max,
                a.opened,
                a.failed,
                a.goaway_server_full,
                a.errors,
                a.handshake_timeouts,
                a.closed_silently,
                a.welcomed,
                a.held
            )
        }
    };
    let server: Vec<String> = (SERVER_COUNTERS.iter().zip(x.server))
        .map(|(k, v)| format!("\"{k}\":{}", v.map_or("null".into(), |n| n.to_string())))
        .collect();
    format!(
        ",\"side\":\"{side}\",\"newcomers\":{{\"count\":{},\"subscribed\":{},\"refused\":{},\
         \"refused_newcomers\":{},\"connect_to_subscribed_ms\":{{\"p50\":{},\"p99\":{},\
         \"max\":{}}}}},\"attack\":{attack},\"server_admission\":{{{}}}",
        x.newcomers,
        x.subscribed,
        x.refusals,
        x.refused,
        json_num(x.connect_ms[0]),
        json_num(x.connect_ms[1]),
        json_num(x.connect_ms[2]),
        server.join(",")
    )
}

/// Connect-to-SUBSCRIBED p99, attack / calm, per round where both sides
/// were measured.
fn p99_ratios(calm: &[Run], attack: &[Run]) -> Vec<f64> {
    (calm.iter().zip(attack))
        .filter(|(c, a)| c.measured && a.measured)
        .map(|(c, a)| a.admission.connect_ms[1] / c.admission.connect_ms[1])
        .collect()
}

/// The comparison after the two reports (None without --attack).
pub(super) fn comparison_markdown(args: &Args, runs: &[Vec<Run>]) -> Option<String> {
    let (f, [calm, attack]) = (flags(args)?, runs) else {
        return None;
    };
    let (c, a) = (median_run(calm), median_run(attack));
    let (cf, af) = (
        Figures::median(&median_pool(calm).0),
        Figures::median(&median_pool(attack).0),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {}{}: newcomers calm and under attack, target `{}`\n",
        args.shape.name(),
        if args.tls { " over TLS 1.3" } else { "" },
        args.target.name()
    );
    let _ = writeln!(
        s,
        "The two reports above, side by side: {} rounds, each the same storm twice against a \
         fresh appliance, calm and under attack ({} from {} addresses, {} connections/s, at \
         most {} held), calm first in odd rounds and the attack first in even ones. Medians of \
         each side; *attack / calm* is their ratio.\n",
        args.runs.repeat,
        f.attack.map_or(String::new(), |k| k.to_string()),
        f.attack_sources,
        thousands(f.attack_rate_per_s),
        thousands(f.attack_sockets_max as f64)
    );
    let _ = writeln!(
        s,
        "| | calm | under attack | attack / calm |\n|---|---:|---:|---:|"
    );
    let ratio = |x: f64, y: f64| num(y / x, 2);
    let mut row = |name: &str, x: String, y: String, r: String| {
        let _ = writeln!(s, "| {name} | {x} | {y} | {r} |");
    };
    let back = |f: &Figures| format!("{} / {}", f.subscribed, f.newcomers);
    row("newcomers back", back(&cf), back(&af), String::new());
    let refused = |f: &Figures| format!("{} ({} newcomers)", f.refusals, f.refused);
    row(
        "refused attempts",
        refused(&cf),
        refused(&af),
        String::new(),
    );
    for (i, name) in [
        (0, "connect→SUBSCRIBED p50 ms"),
        (1, "**connect→SUBSCRIBED p99 ms**"),
        (2, "connect→SUBSCRIBED max ms"),
    ] {
        let (x, y) = (cf.connect_ms[i], af.connect_ms[i]);
        row(name, num(x, 3), num(y, 3), ratio(x, y));
    }
    row(
        "live p99 ms while they came back",
        num(c.phase[1], 3),
        num(a.phase[1], 3),
        ratio(c.phase[1], a.phase[1]),
    );
    row(
        "caught up ms (drop → last one back caught up)",
        num(c.storm_resume_ms, 1),
        num(a.storm_resume_ms, 1),
        ratio(c.storm_resume_ms, a.storm_resume_ms),
    );
    row(
        "lost / duplicated",
        format!("{} / {}", c.lost, c.duplicated),
        format!("{} / {}", a.lost, a.duplicated),
        String::new(),
    );
    row(
        "server CPU (% of one core)",
        pct_of_core(c.server_cpu_pct),
        pct_of_core(a.server_cpu_pct),
        ratio(c.server_cpu_pct, a.server_cpu_pct),
    );
    let at = &af.attack;
    row(
        "attack: opened / GOAWAY ServerFull / ERROR / silent / held",
        "–".into(),
        format!(
            "{} / {} / {} / {} / {}",
            thousands(at.opened as f64),
            thousands(at.goaway_server_full as f64),
            thousands(at.errors as f64),
            thousands(at.closed_silently as f64),
            at.held
        ),
        String::new(),
    );
    row(
        &format!("server: {}", SERVER_COUNTERS.join(" / ")),
        server_counts(&cf),
        server_counts(&af),
        String::new(),
    );
    let each: Vec<String> = p99_ratios(calm, attack)
        .iter()
        .map(|r| num(*r, 2))
        .collect();
    let _ = writeln!(
        s,
        "\nConnect→SUBSCRIBED p99, attack / calm, round by round: {}.",
        if each.is_empty() {
            "no round measured both".to_string()
        } else {
            each.join(", ")
        }
    );
    Some(s)
}

/// The comparison as one JSON line (`"comparison": "attack_vs_calm"`, no
/// `"run"`: summary.rs reads only medians); None without --attack.
pub(super) fn comparison_json(args: &Args, runs: &[Vec<Run>]) -> Option<String> {
    let [calm, attack] = runs else {
        return None;
    };
    flags(args)?;
    let (c, a) = (median_run(calm), median_run(attack));
    let (cf, af) = (
        Figures::median(&median_pool(calm).0),
        Figures::median(&median_pool(attack).0),
    );
    let rounds = p99_ratios(calm, attack);
    let both = |x: String, y: String| format!("{{\"calm\":{x},\"attack\":{y}}}");
    let count = |n: u64| n.to_string();
    Some(format!(
        "{{{},\"comparison\":\"attack_vs_calm\",\"rounds\":{},\
         \"newcomers_refused\":{},\"connect_to_subscribed_p99_ms\":{},\
         \"server_cpu_pct\":{},\"lost\":{},\
         \"attack_over_calm\":{{\"connect_to_subscribed_p99\":{},\"rounds\":{}}}}}\n",
        json_case(args),
        args.runs.repeat,
        both(count(cf.refusals), count(af.refusals)),
        both(json_num(cf.connect_ms[1]), json_num(af.connect_ms[1])),
        both(json_num(c.server_cpu_pct), json_num(a.server_cpu_pct)),
        both(count(c.lost), count(a.lost)),
        json_num(af.connect_ms[1] / cf.connect_ms[1]),
        json_list(&rounds),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `storm` Args as parsed from a command line.
    fn parse_storm(words: &[&str]) -> Args {
        let a: super::super::StormArgs = crate::cli::parse_flags("storm", words);
        Args {
            shape: Shape::Storm(a.storm),
            ..a.load
        }
    }

    fn run(p99_ms: f64, refusals: u64) -> Run {
        let mut r = Run {
            measured: true,
            ..Run::default()
        };
        r.admission.newcomers = 500;
        r.admission.subscribed = 500;
        r.admission.refusals = refusals;
        r.admission.refused = refusals.min(500);
        r.admission.connect_ms = [p99_ms / 2.0, p99_ms, 2.0 * p99_ms];
        r.admission.attack.opened = 100;
        r
    }

    #[test]
    fn sides_are_calm_then_attack_and_alternate() {
        let args = parse_storm(&["--attack", "silent,trickle"]);
        let sides = sides(&args).unwrap();
        assert_eq!(
            sides.iter().map(|s| side(s).unwrap()).collect::<Vec<_>>(),
            ["calm", "attack"]
        );
        assert_eq!(order(&args, 0, 2), [0, 1]);
        assert_eq!(order(&args, 1, 2), [1, 0]);
        assert_eq!(order(&parse_storm(&[]), 1, 1), [0]);
        assert!(super::sides(&parse_storm(&[])).is_none());
        assert_eq!(tag(&sides[0]), " calm");
    }

    #[test]
    fn attack_mode_refuses_what_it_cannot_run() {
        let err = check(&parse_storm(&["--attack", "tls-hello"])).unwrap_err();
        assert!(err.contains("needs --tls"), "{err}");
        check(&parse_storm(&["--attack", "tls-hello", "--tls"])).unwrap();
        let err = check(&parse_storm(&["--attack", "silent", "--target", "redis"])).unwrap_err();
        assert!(err.contains("cluecast target only"), "{err}");
        let err = check(&parse_storm(&["--attack", "silent", "--tls", "--vs-plain"])).unwrap_err();
        assert!(err.contains("--vs-plain"), "{err}");
        check(&parse_storm(&[])).unwrap();
    }

    #[test]
    fn json_has_the_agreed_keys_and_the_ratio() {
        let args = parse_storm(&["--attack", "silent,trickle", "--repeat", "2"]);
        let sides = sides(&args).unwrap();
        let (calm, attack) = (
            vec![run(1.0, 0), run(3.0, 0)],
            vec![run(4.0, 2), run(6.0, 0)],
        );
        let line = json(&sides[1], &attack[0]);
        crate::report::assert_has_keys(
            &line,
            &[
                ",\"side\":\"attack\"",
                "\"newcomers\":{\"count\":500,\"subscribed\":500,\"refused\":2,",
                "\"connect_to_subscribed_ms\":{\"p50\":2,\"p99\":4,\"max\":8}",
                "\"attack\":{\"kinds\":[\"silent\",\"trickle\"],\"sources\":200,\"rate_per_s\":2000,",
                "\"opened\":100,",
            ],
        );
        assert!(json(&sides[0], &calm[0]).contains("\"attack\":null"));
        let cmp = comparison_json(&args, &[calm.clone(), attack.clone()]).unwrap();
        assert!(cmp.contains("\"comparison\":\"attack_vs_calm\""), "{cmp}");
        assert!(
            cmp.contains("\"connect_to_subscribed_p99_ms\":{\"calm\":2,\"attack\":5}"),
            "{cmp}"
        );
        assert!(
            cmp.contains(
                "\"attack_over_calm\":{\"connect_to_subscribed_p99\":2.5,\"rounds\":[4,2]}"
            ),
            "{cmp}"
        );
        let md = comparison_markdown(&args, &[calm, attack]).unwrap();
        assert!(
            md.contains("| **connect→SUBSCRIBED p99 ms** | 2.000 | 5.000 | 2.50 |"),
            "{md}"
        );
        assert!(md.contains("round by round: 4.00, 2.00."), "{md}");
    }
}
