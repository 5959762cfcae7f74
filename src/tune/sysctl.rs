//! Kernel settings for many long-lived connections: the values of
//! tuning/sysctl.d/90-cluecast.conf (kept in the repository, compiled in)
//! live in /proc/sys, and the file installed in /etc/sysctl.d for every boot.

use super::host::Host;
use super::{whole_file, Area, Finding, Step};

pub const DROP_IN_TEXT: &str = include_str!("../../tuning/sysctl.d/90-cluecast.conf");
pub const DROP_IN: &str = "/etc/sysctl.d/90-cluecast.conf";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Each number at least the wanted one.
    AtLeast,
    /// A range (low high) that covers the wanted one.
    Range,
    Exactly,
}

#[derive(Debug)]
struct Wanted {
    key: String,
    values: Vec<u64>,
    kind: Kind,
    why: String,
}

/// The settings of the drop-in, each with the `KIND: why` line above it.
fn wanted() -> Result<Vec<Wanted>, String> {
    let mut settings = Vec::new();
    let mut comment: Option<&str> = None;
    for line in DROP_IN_TEXT.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix('#') {
            comment = Some(text.trim());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            comment = None;
            continue;
        };
        let bad = |what: &str| format!("{DROP_IN}: {what} for {}", key.trim());
        let (kind, why) = comment
            .and_then(|c| c.split_once(": "))
            .ok_or_else(|| bad("no `KIND: why` line"))?;
        let kind = match kind {
            "at least" => Kind::AtLeast,
            "range" => Kind::Range,
            "exactly" => Kind::Exactly,
            _ => return Err(bad("an unknown KIND")),
        };
        let values = numbers(value).ok_or_else(|| bad("a value that is not numbers"))?;
        if kind == Kind::Range && values.len() != 2 {
            return Err(bad("a range that is not two numbers"));
        }
        settings.push(Wanted {
            key: key.trim().to_string(),
            values,
            kind,
            why: why.to_string(),
        });
        comment = None;
    }
    Ok(settings)
}

fn numbers(text: &str) -> Option<Vec<u64>> {
    let values: Option<Vec<u64>> = text.split_whitespace().map(|v| v.parse().ok()).collect();
    values.filter(|v| !v.is_empty())
}

/// What the host needs, given what it has: the wanted values, raised to the
/// host's where the host already goes further.
fn needed(wanted: &Wanted, found: &[u64]) -> Vec<u64> {
    if found.len() != wanted.values.len() {
        return wanted.values.clone();
    }
    match wanted.kind {
        Kind::AtLeast => wanted
            .values
            .iter()
            .zip(found)
            .map(|(w, f)| *w.max(f))
            .collect(),
        Kind::Range => vec![
            wanted.values[0].min(found[0]),
            wanted.values[1].max(found[1]),
        ],
        Kind::Exactly => wanted.values.clone(),
    }
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn check(host: &Host, notes: &mut Vec<String>) -> Result<Vec<Finding>, String> {
    let mut findings = Vec::new();
    for wanted in wanted()? {
        let path = format!("/proc/sys/{}", wanted.key.replace('.', "/"));
        let Some(text) = host.read_if_exists(&path)? else {
            notes.push(format!("{}: not on this kernel, skipped", wanted.key));
            continue;
        };
        let found = numbers(&text).ok_or_else(|| format!("{path} does not hold numbers"))?;
        let needed = needed(&wanted, &found);
        if needed != found {
            findings.push(
                Finding::new(
                    Area::Sysctl,
                    wanted.key,
                    join(&found),
                    join(&needed),
                    wanted.why,
                )
                .fix(vec![Step::write(&path, format!("{}\n", join(&needed)))]),
            );
        }
    }
    let why = "sets the values above again at every boot".to_string();
    findings.extend(whole_file(
        host,
        Area::Sysctl,
        DROP_IN,
        DROP_IN_TEXT.to_string(),
        why,
        Vec::new(),
    )?);
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_of_the_drop_in_has_a_kind_and_a_reason() {
        let settings = wanted().unwrap();
        let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            settings.len(),
            DROP_IN_TEXT.lines().filter(|l| l.contains(" = ")).count()
        );
        for key in [
            "net.core.somaxconn",
            "fs.nr_open",
            "net.ipv4.ip_local_port_range",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(settings.iter().all(|s| s.why.len() > 20), "{settings:?}");
    }

    #[test]
    fn the_drop_in_admits_what_the_engine_and_the_unit_ask_for() {
        let settings = wanted().unwrap();
        let value = |key: &str| settings.iter().find(|s| s.key == key).unwrap().values[0];
        assert!(value("net.core.somaxconn") >= crate::sizing::LISTEN_BACKLOG as u64);
        assert!(value("fs.nr_open") >= super::super::limits::NOFILE_TARGET);
    }

    #[test]
    fn needed_keeps_what_the_host_does_better() {
        let wanted = |kind, values: &[u64]| Wanted {
            key: "k".into(),
            values: values.to_vec(),
            kind,
            why: String::new(),
        };
        let at_least = wanted(Kind::AtLeast, &[4096, 16384, 4194304]);
        assert_eq!(
            needed(&at_least, &[4096, 8192, 8388608]),
            [4096, 16384, 8388608]
        );
        let range = wanted(Kind::Range, &[1024, 65535]);
        assert_eq!(needed(&range, &[32768, 60999]), [1024, 65535]);
        assert_eq!(needed(&range, &[500, 65535]), [500, 65535]);
        assert_eq!(needed(&wanted(Kind::Exactly, &[0]), &[50]), [0]);
    }
}
