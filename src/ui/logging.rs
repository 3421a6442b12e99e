//! Logging: `-v` shows debug records (commands run, their output) on stderr;
//! `--local` sends everything to the systemd journal as `pdsup` (stderr when no
//! journal is there, e.g. in a container without journald).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Progress events are already shown by the UI; only -vv repeats them.
        metadata.level() <= self.level
            && (metadata.target() != "progress" || self.level >= LevelFilter::Trace)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let tag = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("{tag}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once. `verbosity`: 0 = warnings, 1 = debug, 2+ = trace.
pub fn init(verbosity: u8, journal: bool) {
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if journal && install_journal() {
        log::set_max_level(LevelFilter::Debug.max(level));
        return;
    }
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(target_os = "linux")]
fn install_journal() -> bool {
    if !systemd_journal_logger::connected_to_journal()
        && !std::path::Path::new("/run/systemd/journal/socket").exists()
    {
        return false;
    }
    match systemd_journal_logger::JournalLog::new() {
        Ok(logger) => logger
            .with_syslog_identifier("pdsup".to_string())
            .install()
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn install_journal() -> bool {
    false
}
