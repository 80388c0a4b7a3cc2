//! The runner: loads the inputs, opens the judgments file before any UI, then loops
//! draw → key → `update` → effects. An `Append` effect is written and fsynced before the
//! next draw, so the screen never shows a judgment as done that is not on disk.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use crossterm::event::{self, Event};
use ratatui::DefaultTerminal;

use crate::app::{App, Effect, Level, Msg, Progress, Settings, update};
use crate::candidates::{Loaded, load_candidates, load_prefs};
use crate::clock::Clock;
use crate::error::{LabelError, LineError, with_causes};
use crate::keys;
use crate::record::{JudgeMode, JudgmentLog, Record, write_recovery};
use crate::ui;

/// How long to wait for a key before looking for other annotators' new records.
const IDLE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub enum Input {
    /// Candidates JSONL: `{"id","prompt","responses":[{"text","source"?}]}`.
    Candidates(PathBuf),
    /// TRL preference JSONL, to re-judge existing pairs.
    Prefs(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LabelOptions {
    pub input: Input,
    pub judgments: PathBuf,
    pub annotator: String,
    pub mode: JudgeMode,
    pub guidelines: Option<PathBuf>,
    pub overlap: Option<usize>,
    pub seed: u64,
    /// Refuse to start when any input line is malformed.
    pub strict: bool,
    pub show_source: bool,
}

/// What a finished session did.
#[derive(Debug)]
pub struct Outcome {
    /// Judgments saved to the judgments file in this session (undone ones not counted).
    pub judged_this_session: usize,
    pub progress: Progress,
    /// Records whose save failed and that neither a later save of the same item nor the
    /// retry on quit replaced: they are not in the judgments file.
    pub unsaved: Vec<Record>,
    /// Where `unsaved` were written instead (see [`write_recovery`]), or why they could
    /// not be; `None` when nothing is unsaved.
    pub recovery: Option<Result<PathBuf, LabelError>>,
}

enum Flow {
    Continue,
    /// A record was saved and the screen moved on.
    Saved,
    Quit,
}

/// A labeling session, ready to take over the terminal.
pub struct Session {
    app: App,
    log: JudgmentLog,
    warnings: Vec<LineError>,
    written: HashSet<String>,
    /// Records whose append failed, oldest first (see [`Outcome::unsaved`]).
    unsaved: Vec<Record>,
}

impl Session {
    /// Loads items and judgments and checks the judgments file is writable. Nothing is
    /// drawn yet, so the caller can print [`Session::warnings`] or an error first.
    pub fn open(options: LabelOptions) -> Result<Session, LabelError> {
        let annotator = options.annotator.trim().to_string();
        if annotator.is_empty() || annotator.chars().any(char::is_control) {
            return Err(LabelError::Option(format!(
                "--annotator {:?}: give a non-empty name",
                options.annotator
            )));
        }
        if options.overlap == Some(0) {
            return Err(LabelError::Option("--overlap must be at least 1".into()));
        }
        let (path, Loaded { items, problems }) = match &options.input {
            Input::Candidates(p) => (p, load_candidates(p)?),
            Input::Prefs(p) => (p, load_prefs(p)?),
        };
        if options.strict && !problems.is_empty() {
            return Err(LabelError::Strict(problems));
        }
        if items.is_empty() {
            return Err(LabelError::NoItems {
                path: path.clone(),
                problems,
            });
        }
        let guidelines = match &options.guidelines {
            Some(p) => {
                Some(
                    std::fs::read_to_string(p).map_err(|source| LabelError::Guidelines {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let (log, read) = JudgmentLog::open(&options.judgments)?;

        let settings = Settings {
            annotator,
            mode: options.mode,
            seed: options.seed,
            overlap: options.overlap,
            show_source: options.show_source,
            guidelines,
        };
        let mut app = App::new(settings, items, read.records, Clock::System);
        let mut notes = Vec::new();
        if let Some(first) = problems.first() {
            notes.push(format!(
                "{} malformed input line(s) skipped, first {first}",
                problems.len()
            ));
        }
        if let Some(first) = read.warnings.first() {
            notes.push(format!(
                "{} judgments line(s) ignored, first {first}",
                read.warnings.len()
            ));
        }
        if !notes.is_empty() {
            app.set_status(Level::Warning, notes.join("; "));
        }
        let mut warnings = problems;
        warnings.extend(read.warnings);
        Ok(Session {
            app,
            log,
            warnings,
            written: HashSet::new(),
            unsaved: Vec::new(),
        })
    }

    /// Malformed input lines and ignored judgments lines, as `FILE:LINE: message`.
    pub fn warnings(&self) -> &[LineError] {
        &self.warnings
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Closes a session that never ran: removes the judgments file if opening created it
    /// and nothing was written to it.
    pub fn discard(self) -> Result<(), LabelError> {
        let path = self.log.path().to_path_buf();
        let empty = std::fs::metadata(&path).is_ok_and(|m| m.len() == 0);
        if self.log.created() && empty {
            drop(self.log);
            std::fs::remove_file(&path).map_err(|source| LabelError::Write { path, source })?;
        }
        Ok(())
    }

    /// Runs the terminal UI until the annotator quits, then settles what could not be saved
    /// (see [`Session::finish`]).
    pub fn run(mut self) -> Result<Outcome, LabelError> {
        let mut terminal = ratatui::try_init().map_err(LabelError::Terminal)?;
        let result = self.event_loop(&mut terminal);
        let restored = ratatui::try_restore().map_err(LabelError::Terminal);
        let outcome = self.finish();
        result?;
        restored?;
        Ok(outcome)
    }

    /// Retries every unsaved record once (the disk may have room again); what still fails
    /// goes to a recovery file beside the judgments file, so no decision the annotator made
    /// is lost without a word.
    fn finish(mut self) -> Outcome {
        let mut judged = self.app.session_count();
        let mut unsaved = Vec::new();
        for record in std::mem::take(&mut self.unsaved) {
            match self.log.append(&record) {
                Ok(()) => judged += matches!(record, Record::Judgment(_)) as usize,
                Err(_) => unsaved.push(record),
            }
        }
        let recovery = (!unsaved.is_empty()).then(|| write_recovery(self.log.path(), &unsaved));
        Outcome {
            judged_this_session: judged,
            progress: self.app.progress(),
            unsaved,
            recovery,
        }
    }

    fn event_loop(&mut self, terminal: &mut DefaultTerminal) -> Result<(), LabelError> {
        let size = terminal.size().map_err(LabelError::Terminal)?;
        update(&mut self.app, Msg::Resize(size.width, size.height));
        let mut saved = false;
        loop {
            terminal
                .draw(|frame| ui::view(frame, &self.app))
                .map_err(LabelError::Terminal)?;
            if std::mem::take(&mut saved) && self.drop_typed_ahead()? > 0 {
                continue;
            }
            if !event::poll(IDLE_POLL).map_err(LabelError::Terminal)? {
                let others = self.read_others();
                if !others.is_empty() {
                    update(&mut self.app, Msg::Records(others));
                }
                continue;
            }
            let msg = match event::read().map_err(LabelError::Terminal)? {
                Event::Key(key) => keys::to_msg(self.app.mode(), self.app.settings.mode, key),
                Event::Resize(w, h) => Some(Msg::Resize(w, h)),
                _ => None,
            };
            match msg.map(|msg| self.dispatch(msg)) {
                Some(Flow::Quit) => return Ok(()),
                Some(Flow::Saved) => saved = true,
                Some(Flow::Continue) | None => {}
            }
        }
    }

    /// Discards keys that arrived before the item now on screen was drawn (a double tap, or
    /// typing ahead during the save): a decision must be about an item the annotator saw.
    fn drop_typed_ahead(&mut self) -> Result<usize, LabelError> {
        let mut dropped = 0;
        while event::poll(Duration::ZERO).map_err(LabelError::Terminal)? {
            match event::read().map_err(LabelError::Terminal)? {
                Event::Key(_) => dropped += 1,
                Event::Resize(w, h) => {
                    update(&mut self.app, Msg::Resize(w, h));
                }
                _ => {}
            }
        }
        if dropped > 0 {
            self.app.set_status(
                Level::Warning,
                format!("ignored {dropped} key(s) pressed before this item was shown"),
            );
        }
        Ok(dropped)
    }

    /// Runs `update` and its effects until nothing is left.
    fn dispatch(&mut self, msg: Msg) -> Flow {
        let mut flow = Flow::Continue;
        let mut queue = VecDeque::from([msg]);
        while let Some(msg) = queue.pop_front() {
            for effect in update(&mut self.app, msg) {
                match effect {
                    Effect::Quit => return Flow::Quit,
                    Effect::Append(record) => match self.log.append(&record) {
                        Ok(()) => {
                            flow = Flow::Saved;
                            // A later save of the item replaces a failed one.
                            self.unsaved.retain(|r| r.item() != record.item());
                            self.written.insert(record.rid().to_string());
                            let others = self.read_others();
                            if !others.is_empty() {
                                queue.push_back(Msg::Records(others));
                            }
                            queue.push_back(Msg::Saved(record));
                        }
                        Err(e) => {
                            self.unsaved.push(*record);
                            queue.push_back(Msg::SaveFailed(with_causes(&e)));
                        }
                    },
                }
            }
        }
        flow
    }

    /// Records other writers appended since the last look (ours are already applied).
    fn read_others(&mut self) -> Vec<crate::record::Record> {
        let me = &self.app.settings.annotator;
        match self.log.read_new() {
            Ok(read) => read
                .records
                .into_iter()
                .filter(|r| !(r.annotator() == me && self.written.contains(r.rid())))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::record::{Decision, read_log};

    /// A session on two pairwise items whose judgments file is `dir/j.jsonl`.
    fn session(dir: &std::path::Path) -> Session {
        let cands = dir.join("cands.jsonl");
        let line = |id: &str| {
            serde_json::json!({"id": id, "prompt": "p", "responses": [{"text": "a"}, {"text": "b"}]})
                .to_string()
        };
        std::fs::write(&cands, format!("{}\n{}\n", line("x"), line("y"))).unwrap();
        Session::open(LabelOptions {
            input: Input::Candidates(cands),
            judgments: dir.join("j.jsonl"),
            annotator: "al".into(),
            mode: JudgeMode::Pairwise,
            guidelines: None,
            overlap: None,
            seed: 0,
            strict: false,
            show_source: false,
        })
        .unwrap()
    }

    /// Makes every append fail as on a full disk; returns the real file.
    fn fill_disk(s: &mut Session) -> File {
        s.log.replace_file(File::create("/dev/full").unwrap())
    }

    #[test]
    fn a_judgment_that_cannot_be_saved_goes_to_a_recovery_file_on_quit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        fill_disk(&mut s);
        s.dispatch(Msg::Decide(Decision::A));
        let status = &s.app().status.as_ref().unwrap().text;
        assert!(status.starts_with("NOT SAVED: "), "{status}");
        assert!(status.contains("No space left on device"), "{status}");
        assert_eq!(s.app().current_item().id, "x", "nothing advanced");

        let outcome = s.finish();
        assert_eq!(outcome.judged_this_session, 0);
        assert_eq!(outcome.unsaved.len(), 1);
        assert_eq!(outcome.unsaved[0].item(), "x");
        let recovery = outcome.recovery.unwrap().unwrap();
        assert_eq!(recovery.parent(), Some(dir.path()));
        assert_eq!(read_log(&recovery).unwrap().records, outcome.unsaved);
        assert!(
            read_log(&dir.path().join("j.jsonl"))
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn a_failed_save_is_retried_on_quit_and_replaced_by_a_later_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let real = fill_disk(&mut s);
        s.dispatch(Msg::Decide(Decision::A));
        s.dispatch(Msg::Decide(Decision::B));
        assert_eq!(s.unsaved.len(), 2);
        s.log.replace_file(real);
        // The same item judged again, now saved: the failed attempts are moot.
        s.dispatch(Msg::Decide(Decision::Tie));
        assert!(s.unsaved.is_empty());
        assert_eq!(s.app().current_item().id, "y");
        let real = fill_disk(&mut s);
        s.dispatch(Msg::Decide(Decision::B));
        assert_eq!(s.unsaved.len(), 1);
        // Room again by the time the annotator quits: the retry saves it.
        s.log.replace_file(real);
        let outcome = s.finish();
        assert!(outcome.unsaved.is_empty() && outcome.recovery.is_none());
        assert_eq!(outcome.judged_this_session, 2);
        let items: Vec<String> = read_log(&dir.path().join("j.jsonl"))
            .unwrap()
            .records
            .iter()
            .map(|r| r.item().to_string())
            .collect();
        assert_eq!(items, ["x", "y"]);
    }

    #[test]
    fn discarding_an_unused_session_leaves_no_judgments_file() {
        let dir = tempfile::tempdir().unwrap();
        session(dir.path()).discard().unwrap();
        assert!(!dir.path().join("j.jsonl").exists());
        std::fs::write(dir.path().join("j.jsonl"), "").unwrap();
        session(dir.path()).discard().unwrap();
        assert!(
            dir.path().join("j.jsonl").exists(),
            "a file it did not create stays"
        );
    }
}
