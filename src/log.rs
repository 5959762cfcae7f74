//! One line per event on stderr: `level component: message`, or with
//! `--log-format json` one JSON object (`ts_ns`, `level`, `component`,
//! `msg`) for log shippers. Levels above the one in effect are dropped; it
//! is set at start-up (`run --log-level`) and may be changed while running
//! (the admin listener's `/log-level`).
//! When stderr is the journal (systemd's JOURNAL_STREAM names its device
//! and inode), each line starts with its syslog priority (`<3>` error,
//! `<4>` warn, `<6>` info, `<7>` debug) so journald records the level.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Once;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The syslog priority journald reads from a `<N>` line prefix.
    fn syslog_priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn from_u8(value: u8) -> Level {
        match value {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// How each line is written (`run --log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[repr(u8)]
pub enum Format {
    /// `level component: message`
    Text = 0,
    /// `{"ts_ns":..,"level":..,"component":..,"msg":..}`
    Json = 1,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);
static TO_JOURNAL: AtomicBool = AtomicBool::new(false);
static DETECT_JOURNAL: Once = Once::new();

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Whether stderr is the stream systemd's JOURNAL_STREAM (`DEVICE:INODE`)
/// names, rather than a file or pipe it was redirected to.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The line for one event: priority prefix (journal only), then the level
/// and message as text (line breaks escaped, so an event stays one line) or
/// as a JSON object whose component is the message's `component: ` head.
fn line(level: Level, format: Format, journal: bool, args: std::fmt::Arguments<'_>) -> String {
    let message = args.to_string();
    let prefix = match journal {
        true => format!("<{}>", level.syslog_priority()),
        false => String::new(),
    };
    match format {
        Format::Text => {
            let message = if message.contains(['\n', '\r']) {
                message.replace('\n', "\\n").replace('\r', "\\r")
            } else {
                message
            };
            format!("{prefix}{} {message}\n", level.name())
        }
        Format::Json => {
            let (component, msg) = split_component(&message);
            let object = serde_json::json!({
                "ts_ns": cluecast_sys::realtime_ns(),
                "level": level.name(),
                "component": component,
                "msg": msg,
            });
            format!("{prefix}{object}\n")
        }
    }
}

/// `shard 0: queue full` is component `shard 0`, message `queue full`; a
/// message without such a head (or with a long one) has component "".
fn split_component(message: &str) -> (&str, &str) {
    const COMPONENT_BYTES_MAX: usize = 32;
    match message.split_once(": ") {
        Some((component, rest)) if component.len() <= COMPONENT_BYTES_MAX => (component, rest),
        _ => ("", message),
    }
}

pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    if enabled(level) {
        DETECT_JOURNAL.call_once(|| TO_JOURNAL.store(stderr_is_journal(), Ordering::Relaxed));
        let format = match FORMAT.load(Ordering::Relaxed) {
            0 => Format::Text,
            _ => Format::Json,
        };
        let line = line(level, format, TO_JOURNAL.load(Ordering::Relaxed), args);
        // One write per line, so lines of different threads never mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) } }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) } }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) } }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_level_and_the_journal_priority_and_stay_one_line() {
        let a = 7;
        assert_eq!(
            line(Level::Info, Format::Text, false, format_args!("x: {a}")),
            "info x: 7\n"
        );
        assert_eq!(
            line(Level::Warn, Format::Text, true, format_args!("x")),
            "<4>warn x\n"
        );
        assert_eq!(
            line(Level::Error, Format::Text, true, format_args!("x")),
            "<3>error x\n"
        );
        assert_eq!(
            line(Level::Debug, Format::Text, true, format_args!("x")),
            "<7>debug x\n"
        );
        assert_eq!(
            line(Level::Info, Format::Text, false, format_args!("a\nb\r")),
            "info a\\nb\\r\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each_with_the_component_split_off() {
        let parse = |line: &str| -> serde_json::Value {
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            serde_json::from_str(line).unwrap()
        };
        let v = parse(&line(
            Level::Warn,
            Format::Json,
            false,
            format_args!("shard 1: a \"quoted\"\nbreak"),
        ));
        assert_eq!(v["level"], "warn");
        assert_eq!(v["component"], "shard 1");
        assert_eq!(v["msg"], "a \"quoted\"\nbreak");
        assert!(v["ts_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        let v = parse(&line(
            Level::Info,
            Format::Json,
            false,
            format_args!("no head"),
        ));
        assert_eq!(
            (v["component"].as_str(), v["msg"].as_str()),
            (Some(""), Some("no head"))
        );
        let journal = line(Level::Error, Format::Json, true, format_args!("x: y"));
        assert!(journal.starts_with("<3>{"), "{journal}");
    }

    #[test]
    fn journal_detection_needs_a_matching_stream() {
        // Only the device and inode of stderr itself count.
        std::env::set_var("JOURNAL_STREAM", "0:0");
        assert!(!stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", "garbage");
        assert!(!stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let stderr = std::fs::File::from(fd).metadata().unwrap();
        std::env::set_var(
            "JOURNAL_STREAM",
            format!("{}:{}", stderr.dev(), stderr.ino()),
        );
        assert!(stderr_is_journal(), "stderr's own device and inode match");
        std::env::remove_var("JOURNAL_STREAM");
    }
}
