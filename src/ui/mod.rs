//! What the user sees: progress on stderr (an indicatif spinner per step on a
//! terminal, plain lines otherwise), results on stdout (the plan, the summary, or
//! one JSON document with `--json`). Every progress event is also a `log` record
//! under the `progress` target, which is how `--local` runs reach the journal.

pub mod fleet;
pub mod logging;
pub mod summary;

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::plan::{render_plan, Change, Progress, StepId, StepPlan};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spinners on a terminal.
    Tty,
    /// One line per event, for logs and CI.
    Plain,
    /// Nothing but errors on stderr; results as JSON on stdout.
    Quiet,
}

pub struct Ui {
    mode: Mode,
    json: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Ui {
    pub fn new(json: bool, quiet: bool) -> Self {
        let mode = if quiet || json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        };
        Ui {
            mode,
            json,
            bar: Mutex::new(None),
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    fn line(&self, text: &str) {
        match self.mode {
            Mode::Tty => self.suspend(|| eprintln!("{text}")),
            Mode::Plain => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }

    fn suspend(&self, f: impl FnOnce()) {
        match &*self.bar.lock().expect("ui lock") {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Ends any spinner (on errors, before the message is printed).
    pub fn clear(&self) {
        if let Some(bar) = self.bar.lock().expect("ui lock").take() {
            bar.abandon();
        }
    }
}

impl Progress for Ui {
    fn step_started(&self, index: usize, total: usize, step: StepId) {
        log::info!(target: "progress", "[{index}/{total}] {}", step.name());
        match self.mode {
            Mode::Tty => {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {wide_msg} {elapsed:.dim}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(format!("[{index}/{total}] {}", step.name()));
                bar.set_message("checking");
                bar.enable_steady_tick(Duration::from_millis(120));
                *self.bar.lock().expect("ui lock") = Some(bar);
            }
            Mode::Plain => eprintln!("[{index}/{total}] {}: checking", step.name()),
            Mode::Quiet => {}
        }
    }

    /// In a dry run, the plan is the result: it goes to stdout.
    fn show_plan(&self, plan: &StepPlan, dry_run: bool) {
        for note in &plan.notes {
            log::info!(target: "progress", "{}: note: {note}", plan.step.name());
        }
        if !dry_run || self.json {
            for note in &plan.notes {
                self.line(&format!("  note: {note}"));
            }
            return;
        }
        self.suspend(|| print!("{}", render_plan(plan, true)));
    }

    fn change_started(&self, change: &Change) {
        log::info!(target: "progress", "{}", change.summary);
        match self.mode {
            Mode::Tty => {
                if let Some(bar) = &*self.bar.lock().expect("ui lock") {
                    bar.println(format!("  → {}", change.summary));
                    bar.set_message(change.summary.clone());
                }
            }
            Mode::Plain => eprintln!("  → {}", change.summary),
            Mode::Quiet => {}
        }
    }

    /// A note on long work within a change (downloads, waits).
    fn progress(&self, message: &str) {
        log::debug!(target: "progress", "{message}");
        if let Mode::Tty = self.mode {
            if let Some(bar) = &*self.bar.lock().expect("ui lock") {
                bar.set_message(message.to_string());
            }
        }
    }

    /// A wait the user should know about (another program holds what we
    /// need): the spinner's message on a terminal, a line of its own otherwise.
    /// Callers repeat it now and then, so a long wait is never silent.
    fn waiting(&self, message: &str) {
        log::info!(target: "progress", "{message}");
        match self.mode {
            Mode::Tty => {
                if let Some(bar) = &*self.bar.lock().expect("ui lock") {
                    bar.set_message(message.to_string());
                }
            }
            Mode::Plain => eprintln!("    {message}"),
            Mode::Quiet => {}
        }
    }

    fn step_finished(&self, step: StepId, plan: &StepPlan, dry_run: bool) {
        let verdict = match (plan.changes.len(), dry_run) {
            (0, _) => "unchanged".to_string(),
            (n, true) => format!("{n} change(s) planned"),
            (n, false) => format!("{n} change(s) applied"),
        };
        log::info!(target: "progress", "{}: {verdict}", step.name());
        match self.mode {
            Mode::Tty => {
                if let Some(bar) = self.bar.lock().expect("ui lock").take() {
                    bar.finish_and_clear();
                }
                eprintln!("✓ {}: {verdict}", step.name());
            }
            Mode::Plain => eprintln!("  {}: {verdict}", step.name()),
            Mode::Quiet => {}
        }
    }

    fn note(&self, message: &str) {
        log::warn!(target: "progress", "note: {message}");
        self.line(&format!("  note: {message}"));
    }
}
