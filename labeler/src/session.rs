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
use crate::error::{LabelError, LineError};
use crate::keys;
use crate::record::{JudgeMode, JudgmentLog};
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
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub judged_this_session: usize,
    pub progress: Progress,
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
                problems: problems.len(),
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
        })
    }

    /// Malformed input lines and ignored judgments lines, as `FILE:LINE: message`.
    pub fn warnings(&self) -> &[LineError] {
        &self.warnings
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Runs the terminal UI until the annotator quits.
    pub fn run(mut self) -> Result<Outcome, LabelError> {
        let mut terminal = ratatui::try_init().map_err(LabelError::Terminal)?;
        let result = self.event_loop(&mut terminal);
        let restored = ratatui::try_restore().map_err(LabelError::Terminal);
        result?;
        restored?;
        Ok(Outcome {
            judged_this_session: self.app.session_count(),
            progress: self.app.progress(),
        })
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
                            self.written.insert(record.rid().to_string());
                            let others = self.read_others();
                            if !others.is_empty() {
                                queue.push_back(Msg::Records(others));
                            }
                            queue.push_back(Msg::Saved(record));
                        }
                        Err(e) => queue.push_back(Msg::SaveFailed(e.to_string())),
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
