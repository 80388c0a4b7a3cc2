//! alignkit-labeler: rank model responses in a terminal, never lose a judgment, and export
//! the result as TRL preference pairs for reward-model and DPO training.
//!
//! A ratatui + crossterm application in the Model / Message / update / view shape:
//! [`App`] holds the state, [`keys`] maps key events to [`Msg`], [`update`] changes the state
//! and returns [`Effect`]s (it never touches the terminal or the disk), [`ui::view`] draws.
//! [`Session`] runs the loop and executes effects: every judgment is appended to the
//! judgments file, flushed and fsynced before the screen advances.
//!
//! Formats (see `ARCHITECTURE.md`): candidates `{"id","prompt","responses":[{"text",
//! "source"?}]}`; judgments one [`Record`] per line, never rewritten (undo appends a
//! [`Correction`]); export `{"prompt","chosen","rejected"}`.

pub mod app;
pub mod candidates;
pub mod clock;
pub mod error;
pub mod export;
pub mod keys;
pub mod layout;
pub mod order;
pub mod record;
pub mod session;
pub mod stats;
pub mod ui;
pub mod wrap;

pub use app::{App, Effect, Mode, Msg, Settings, update};
pub use candidates::{Item, Loaded, Response, load_candidates, load_prefs};
pub use clock::Clock;
pub use error::{LabelError, LineError};
pub use export::{ExportSummary, export};
pub use record::{
    Correction, Decision, JudgeMode, Judgment, JudgmentLog, Ledger, LogRead, Record, read_log,
    write_recovery,
};
pub use session::{Input, LabelOptions, Outcome, Session};
pub use stats::{Stats, compute as compute_stats};

/// Reads several judgments files as one log, in the order given.
pub fn read_logs(paths: &[std::path::PathBuf]) -> Result<LogRead, LabelError> {
    let mut all = LogRead::default();
    for p in paths {
        let read = read_log(p)?;
        all.records.extend(read.records);
        all.warnings.extend(read.warnings);
    }
    Ok(all)
}
