//! A minimal logger in Nomad's line format (`<RFC3339> [LEVEL]  <subsystem>: <message>`) on stderr,
//! which systemd puts in the journal. The level follows the agent's `log_level`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "[ERROR]",
            Level::Warn => "[WARN] ",
            Level::Info => "[INFO] ",
            Level::Debug => "[DEBUG]",
            Level::Trace => "[TRACE]",
        };
        // Messages carry their subsystem themselves ("client: ...", "http: ...").
        eprintln!(
            "{} {} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            level,
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger (once) and sets the level from a Nomad `log_level` string.
pub fn init(level: &str) {
    let _ = log::set_logger(&LOGGER);
    set_level(level);
}

pub fn set_level(level: &str) {
    let filter = match level.to_ascii_uppercase().as_str() {
        "TRACE" => LevelFilter::Trace,
        "DEBUG" => LevelFilter::Debug,
        "WARN" => LevelFilter::Warn,
        "ERROR" => LevelFilter::Error,
        "OFF" => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    log::set_max_level(filter);
}
