//! The labeler's model and its `update` function (Model / Message / update / view).
//!
//! [`update`] never touches the terminal or the disk: it changes [`App`] and returns
//! [`Effect`]s for the runner. A decision returns `Effect::Append`; the screen moves on only
//! when the runner reports [`Msg::Saved`], i.e. after the record is fsynced.

use std::collections::{HashMap, HashSet};

use crate::candidates::Item;
use crate::clock::{Clock, rfc3339};
use crate::layout;
use crate::order::{item_order, shown_order};
use crate::record::{Correction, Decision, JudgeMode, Judgment, Ledger, Record};

/// What the session was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub annotator: String,
    pub mode: JudgeMode,
    pub seed: u64,
    /// Each item is judged by at most this many annotators (sharing one judgments file).
    pub overlap: Option<usize>,
    /// Show each response's source model (judging is blind by default).
    pub show_source: bool,
    pub guidelines: Option<String>,
}

/// Which keys mean what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Judging,
    /// The help overlay; any key returns to the mode it holds.
    Help(Box<Mode>),
    /// Typing a note or a rationale for the current item.
    Edit(Field, String),
    /// Typing an item id after `/`.
    Jump(String),
    /// Every item available to this annotator is judged.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Note,
    Rationale,
}

/// A scrollable pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Prompt,
    /// The response at this shown position.
    Response(usize),
    Guidelines,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A pairwise decision, or `Skip` in either mode.
    Decide(Decision),
    /// Ranking: the response at this shown position is next best.
    Pick(usize),
    /// Ranking: the next pick ties with the previous one.
    TieNext,
    /// Ranking: take back the last pick.
    Unpick,
    /// Ranking: move the focused response one step up (better) or down.
    Promote,
    Demote,
    /// Ranking: confirm.
    Confirm,
    Undo,
    Next,
    Prev,
    StartJump,
    Quit,
    Help,
    Guidelines,
    Flag,
    EditNote,
    EditRationale,
    FocusNext,
    FocusPrev,
    /// Scroll the focused pane by lines (negative is up).
    Scroll(isize),
    /// Scroll the focused pane by pages.
    Page(isize),
    Top,
    Bottom,
    /// Text entry (note, rationale, jump).
    Input(char),
    Erase,
    Submit,
    Cancel,
    Resize(u16, u16),
    /// Records other annotators appended to the shared file.
    Records(Vec<Record>),
    /// The runner appended and fsynced this record.
    Saved(Box<Record>),
    /// The runner could not save; nothing advances.
    SaveFailed(String),
}

/// Work for the runner.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append, flush and fsync this record, then send `Msg::Saved`.
    Append(Box<Record>),
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub level: Level,
    pub text: String,
}

/// What is being typed for the current item, lost only if the process dies before the
/// decision key.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub note: String,
    pub rationale: String,
    pub flagged: bool,
    /// Ranking tiers, best first; each holds shown positions that tie.
    pub tiers: Vec<Vec<usize>>,
    pub tie_next: bool,
    pub started_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Items this annotator has judged (skips included).
    pub done: usize,
    /// Items available to this annotator.
    pub total: usize,
}

pub struct App {
    pub settings: Settings,
    pub clock: Clock,
    pub(crate) items: Vec<Item>,
    /// Item indices in the order this annotator meets them.
    pub(crate) queue: Vec<usize>,
    /// Position in `queue` of the item on screen.
    pub(crate) pos: usize,
    /// Shown order of the current item's responses.
    pub(crate) shown: Vec<usize>,
    pub(crate) ledger: Ledger,
    pub(crate) mode: Mode,
    pub(crate) draft: Draft,
    pub(crate) focus: Pane,
    /// The response expanded when there is room for only one.
    pub(crate) expanded: usize,
    pub(crate) prompt_scroll: usize,
    pub(crate) response_scroll: Vec<usize>,
    pub(crate) guidelines_scroll: usize,
    pub(crate) guidelines_open: bool,
    pub(crate) size: (u16, u16),
    pub(crate) status: Option<Status>,
    pub(crate) progress: Progress,
    /// Items judged by this annotator.
    mine: HashSet<String>,
    /// Per item, how many other annotators gave a non-skip judgment.
    others: HashMap<String, usize>,
    session_start_ms: u64,
    session_rids: HashSet<String>,
    rid_prefix: String,
    rid_counter: u64,
}

impl App {
    /// A session over `items` (non-empty) with the judgments already in the file.
    pub fn new(settings: Settings, items: Vec<Item>, records: Vec<Record>, clock: Clock) -> App {
        assert!(!items.is_empty(), "App::new needs at least one item");
        let queue = item_order(
            settings.seed,
            &settings.annotator,
            items.len(),
            settings.overlap.is_some(),
        );
        let now = clock.now_ms();
        let mut app = App {
            settings,
            clock,
            items,
            queue,
            pos: 0,
            shown: Vec::new(),
            ledger: Ledger::from_records(records),
            mode: Mode::Judging,
            draft: Draft::default(),
            focus: Pane::Response(0),
            expanded: 0,
            prompt_scroll: 0,
            response_scroll: Vec::new(),
            guidelines_scroll: 0,
            guidelines_open: false,
            size: (80, 24),
            status: None,
            progress: Progress::default(),
            mine: HashSet::new(),
            others: HashMap::new(),
            session_start_ms: now,
            session_rids: HashSet::new(),
            rid_prefix: format!("{now:x}-{:x}", std::process::id()),
            rid_counter: 0,
        };
        app.refresh_progress();
        match app.next_open(0) {
            Some(pos) => app.load(pos),
            None => {
                app.load(0);
                app.mode = Mode::Done;
            }
        }
        app
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Judgments saved in this session (undone ones not counted).
    pub fn session_count(&self) -> usize {
        self.session_rids.len()
    }

    /// Judgments per hour in this session, once a minute has passed.
    pub fn session_rate(&self) -> Option<f64> {
        let elapsed = self.clock.now_ms().saturating_sub(self.session_start_ms);
        (elapsed >= 60_000).then(|| self.session_count() as f64 * 3_600_000.0 / elapsed as f64)
    }

    pub fn set_status(&mut self, level: Level, text: impl Into<String>) {
        self.status = Some(Status {
            level,
            text: text.into(),
        });
    }

    pub fn current_item(&self) -> &Item {
        &self.items[self.queue[self.pos]]
    }

    pub(crate) fn current_judgment(&self) -> Option<&Judgment> {
        self.ledger
            .current(&self.settings.annotator, &self.current_item().id)
    }

    pub fn is_judged(&self, item: &str) -> bool {
        self.mine.contains(item)
    }

    /// Whether this annotator may judge the item: they already did, or fewer than
    /// `overlap` others have.
    fn available(&self, item: &str) -> bool {
        self.mine.contains(item)
            || self
                .settings
                .overlap
                .is_none_or(|k| self.others.get(item).copied().unwrap_or(0) < k)
    }

    fn refresh_progress(&mut self) {
        self.mine.clear();
        self.others.clear();
        for j in self.ledger.effective() {
            if j.annotator == self.settings.annotator {
                self.mine.insert(j.item.clone());
            } else if j.decision != Decision::Skip {
                *self.others.entry(j.item.clone()).or_default() += 1;
            }
        }
        let total = self.items.iter().filter(|i| self.available(&i.id)).count();
        let done = self
            .items
            .iter()
            .filter(|i| self.mine.contains(&i.id))
            .count();
        self.progress = Progress { done, total };
    }

    /// The first queue position at or after `from` (wrapping) with an open item.
    fn next_open(&self, from: usize) -> Option<usize> {
        let n = self.queue.len();
        (0..n).map(|k| (from + k) % n).find(|&p| {
            let id = &self.items[self.queue[p]].id;
            !self.mine.contains(id) && self.available(id)
        })
    }

    /// Shows the item at queue position `pos`, with a fresh draft (or the saved judgment's
    /// note, rationale, flag and ranking when it was judged before).
    fn load(&mut self, pos: usize) {
        self.pos = pos;
        let item = &self.items[self.queue[pos]];
        let s = &self.settings;
        self.shown = shown_order(s.seed, &item.id, &s.annotator, item.responses.len(), s.mode);
        self.draft = Draft {
            started_ms: self.clock.now_ms(),
            ..Draft::default()
        };
        if let Some(j) = self.current_judgment() {
            let mut draft = Draft {
                note: j.note.clone(),
                rationale: j.rationale.clone(),
                flagged: j.flagged,
                started_ms: self.draft.started_ms,
                ..Draft::default()
            };
            if let (Decision::Ranking(ranks), true) = (&j.decision, j.shown == self.shown) {
                draft.tiers = tiers_from_ranks(ranks);
            }
            self.draft = draft;
        }
        self.focus = Pane::Response(0);
        self.expanded = 0;
        self.prompt_scroll = 0;
        self.response_scroll = vec![0; self.shown.len()];
        if self.mode == Mode::Done {
            self.mode = Mode::Judging;
        }
    }

    fn next_rid(&mut self) -> String {
        self.rid_counter += 1;
        format!("{}-{}", self.rid_prefix, self.rid_counter)
    }

    fn commit(&mut self, decision: Decision) -> Vec<Effect> {
        let now = self.clock.now_ms();
        let rid = self.next_rid();
        let item = self.current_item();
        let j = Judgment {
            rid,
            item: item.id.clone(),
            annotator: self.settings.annotator.clone(),
            ts: rfc3339(now),
            mode: self.settings.mode,
            seed: self.settings.seed,
            shown: self.shown.clone(),
            decision,
            note: self.draft.note.clone(),
            rationale: self.draft.rationale.clone(),
            flagged: self.draft.flagged,
            duration_ms: now.saturating_sub(self.draft.started_ms),
            supersedes: self.current_judgment().map(|j| j.rid.clone()),
            prompt: item.prompt.clone(),
            responses: item.responses.clone(),
        };
        vec![Effect::Append(Box::new(Record::Judgment(j)))]
    }

    fn saved(&mut self, record: Record) {
        let mine = record.annotator() == self.settings.annotator;
        match &record {
            Record::Judgment(j) if mine => {
                self.session_rids.insert(j.rid.clone());
                let text = format!("saved {}: {}", j.item, describe(&j.decision));
                self.ledger.apply(record);
                self.refresh_progress();
                self.set_status(Level::Info, text);
                match self.next_open(self.pos) {
                    Some(pos) => self.load(pos),
                    None => self.mode = Mode::Done,
                }
            }
            Record::Correction(c) if mine => {
                let item = c.item.clone();
                self.session_rids.remove(&c.undoes);
                self.ledger.apply(record);
                self.refresh_progress();
                if let Some(pos) = self.queue_pos(&item) {
                    self.load(pos);
                }
                let now = match self.current_judgment() {
                    Some(j) => format!("back to the earlier judgment: {}", describe(&j.decision)),
                    None => "judge it again".to_string(),
                };
                self.set_status(Level::Info, format!("undid {item}; {now}"));
            }
            _ => {
                self.ledger.apply(record);
                self.refresh_progress();
            }
        }
    }

    fn queue_pos(&self, item: &str) -> Option<usize> {
        self.queue.iter().position(|&i| self.items[i].id == item)
    }

    fn step(&mut self, forward: bool) {
        if self.mode == Mode::Done {
            self.mode = Mode::Judging;
            return;
        }
        let n = self.queue.len();
        let mut p = self.pos;
        loop {
            p = if forward { p + 1 } else { p.wrapping_sub(1) };
            if p >= n {
                let end = if forward { "last" } else { "first" };
                self.set_status(Level::Info, format!("this is the {end} item"));
                return;
            }
            if self.available(&self.items[self.queue[p]].id) {
                self.load(p);
                return;
            }
        }
    }

    fn panes(&self) -> Vec<Pane> {
        let mut panes = vec![Pane::Prompt];
        panes.extend((0..self.shown.len()).map(Pane::Response));
        if self.guidelines_open {
            panes.push(Pane::Guidelines);
        }
        panes
    }

    fn move_focus(&mut self, by: isize) {
        let panes = self.panes();
        let at = panes.iter().position(|&p| p == self.focus).unwrap_or(0) as isize;
        let n = panes.len() as isize;
        self.focus = panes[(at + by).rem_euclid(n) as usize];
        if let Pane::Response(k) = self.focus {
            self.expanded = k;
        }
    }

    pub fn scroll_of(&self, pane: Pane) -> usize {
        match pane {
            Pane::Prompt => self.prompt_scroll,
            Pane::Response(k) => self.response_scroll.get(k).copied().unwrap_or(0),
            Pane::Guidelines => self.guidelines_scroll,
        }
    }

    fn scroll_mut(&mut self, pane: Pane) -> &mut usize {
        match pane {
            Pane::Prompt => &mut self.prompt_scroll,
            Pane::Response(k) => &mut self.response_scroll[k],
            Pane::Guidelines => &mut self.guidelines_scroll,
        }
    }

    /// Scrolls the focused pane, kept within its text at the current terminal size.
    fn scroll(&mut self, to: impl FnOnce(usize, usize, usize) -> usize) {
        let area = layout::full(self.size);
        let Some((max, page)) = layout::scroll_range(self, area, self.focus) else {
            return;
        };
        let pane = self.focus;
        let s = self.scroll_mut(pane);
        *s = to(*s, max, page).min(max);
    }

    fn clamp_scrolls(&mut self) {
        let area = layout::full(self.size);
        for pane in self.panes() {
            if let Some((max, _)) = layout::scroll_range(self, area, pane) {
                let s = self.scroll_mut(pane);
                *s = (*s).min(max);
            }
        }
    }

    fn ranking_mut(&mut self) -> Option<&mut Draft> {
        (self.settings.mode == JudgeMode::Rank && self.mode == Mode::Judging)
            .then_some(&mut self.draft)
    }

    fn too_small(&self) -> bool {
        layout::too_small(layout::full(self.size))
    }
}

/// Applies one message. See the module docs for the contract.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Resize(w, h) => {
            app.size = (w, h);
            app.clamp_scrolls();
            Vec::new()
        }
        Msg::Records(records) => {
            for r in records {
                app.ledger.apply(r);
            }
            app.refresh_progress();
            Vec::new()
        }
        Msg::Saved(record) => {
            app.saved(*record);
            Vec::new()
        }
        Msg::SaveFailed(why) => {
            app.set_status(
                Level::Error,
                format!("NOT SAVED: {why} (press the key again to retry)"),
            );
            Vec::new()
        }
        Msg::Quit => vec![Effect::Quit],
        key => {
            app.status = None;
            match app.mode.clone() {
                Mode::Help(back) => {
                    app.mode = *back;
                    Vec::new()
                }
                Mode::Edit(field, text) => edit(app, key, text, |app, text| {
                    match field {
                        Field::Note => app.draft.note = text,
                        Field::Rationale => app.draft.rationale = text,
                    }
                    app.set_status(Level::Info, "kept; it is saved with the next decision");
                }),
                Mode::Jump(text) => edit(app, key, text, |app, id| match app.queue_pos(&id) {
                    Some(pos) => app.load(pos),
                    None => app.set_status(Level::Error, format!("no item with id {id:?}")),
                }),
                Mode::Judging | Mode::Done => command(app, key),
            }
        }
    }
}

/// A key in a text field: typing, erasing, submitting (`done`) or cancelling.
fn edit(
    app: &mut App,
    key: Msg,
    mut text: String,
    done: impl FnOnce(&mut App, String),
) -> Vec<Effect> {
    match key {
        Msg::Input(c) => {
            text.push(c);
            set_text(&mut app.mode, text);
        }
        Msg::Erase => {
            text.pop();
            set_text(&mut app.mode, text);
        }
        Msg::Submit => {
            app.mode = Mode::Judging;
            done(app, text.trim().to_string());
        }
        Msg::Cancel => app.mode = Mode::Judging,
        _ => {}
    }
    Vec::new()
}

fn set_text(mode: &mut Mode, text: String) {
    match mode {
        Mode::Edit(_, t) | Mode::Jump(t) => *t = text,
        _ => {}
    }
}

fn command(app: &mut App, key: Msg) -> Vec<Effect> {
    let done = app.mode == Mode::Done;
    let rank = app.settings.mode == JudgeMode::Rank;
    match key {
        Msg::Help => app.mode = Mode::Help(Box::new(app.mode.clone())),
        Msg::Undo => {
            let me = app.settings.annotator.clone();
            let Some(last) = app.ledger.last_by(&me) else {
                app.set_status(Level::Info, "nothing to undo");
                return Vec::new();
            };
            let (item, undoes) = (last.item.clone(), last.rid.clone());
            let now = app.clock.now_ms();
            let c = Correction {
                rid: app.next_rid(),
                item,
                annotator: me,
                ts: rfc3339(now),
                undoes,
            };
            return vec![Effect::Append(Box::new(Record::Correction(c)))];
        }
        Msg::Next => app.step(true),
        Msg::Prev => app.step(false),
        Msg::StartJump => app.mode = Mode::Jump(String::new()),
        _ if done => {}
        _ if app.too_small() => {
            app.set_status(Level::Warning, "make the window larger first");
        }
        Msg::Decide(d) if !rank || d == Decision::Skip => return app.commit(d),
        Msg::Confirm if rank => {
            let n = app.shown.len();
            let ranked: usize = app.draft.tiers.iter().map(Vec::len).sum();
            if ranked + 1 < n {
                app.set_status(
                    Level::Warning,
                    format!("rank every response first ({} unranked)", n - ranked),
                );
                return Vec::new();
            }
            let mut tiers = app.draft.tiers.clone();
            if ranked + 1 == n {
                let last = (0..n).find(|k| !tiers.iter().flatten().any(|x| x == k));
                tiers.extend(last.map(|k| vec![k]));
            }
            return app.commit(Decision::Ranking(ranks_from_tiers(&tiers, n)));
        }
        Msg::Pick(k) if k < app.shown.len() => {
            if let Some(d) = app.ranking_mut() {
                remove_from_tiers(&mut d.tiers, k);
                match (d.tie_next, d.tiers.last_mut()) {
                    (true, Some(last)) => last.push(k),
                    _ => d.tiers.push(vec![k]),
                }
                d.tie_next = false;
            }
        }
        Msg::TieNext => {
            if let Some(d) = app.ranking_mut() {
                d.tie_next = !d.tiers.is_empty();
            }
        }
        Msg::Unpick => {
            if let Some(d) = app.ranking_mut() {
                if std::mem::take(&mut d.tie_next) {
                    return Vec::new();
                }
                if let Some(last) = d.tiers.last_mut() {
                    last.pop();
                    if last.is_empty() {
                        d.tiers.pop();
                    }
                }
            }
        }
        Msg::Promote | Msg::Demote => {
            let up = key == Msg::Promote;
            if let (Pane::Response(k), Some(d)) = (app.focus, app.ranking_mut()) {
                move_in_tiers(&mut d.tiers, k, up);
            }
        }
        Msg::Guidelines => {
            if app.settings.guidelines.is_some() {
                app.guidelines_open = !app.guidelines_open;
                if !app.guidelines_open && app.focus == Pane::Guidelines {
                    app.focus = Pane::Response(app.expanded);
                }
            } else {
                app.set_status(Level::Info, "no guidelines (start with --guidelines FILE)");
            }
        }
        Msg::Flag => app.draft.flagged = !app.draft.flagged,
        Msg::EditNote => app.mode = Mode::Edit(Field::Note, app.draft.note.clone()),
        Msg::EditRationale => {
            app.mode = Mode::Edit(Field::Rationale, app.draft.rationale.clone());
        }
        Msg::FocusNext => app.move_focus(1),
        Msg::FocusPrev => app.move_focus(-1),
        Msg::Scroll(by) => app.scroll(|s, _, _| s.saturating_add_signed(by)),
        Msg::Page(by) => app.scroll(|s, _, page| s.saturating_add_signed(by * page as isize)),
        Msg::Top => app.scroll(|_, _, _| 0),
        Msg::Bottom => app.scroll(|_, max, _| max),
        _ => {}
    }
    Vec::new()
}

/// "A better", "ranking 2 > 1 = 3", ...
pub fn describe(d: &Decision) -> String {
    match d {
        Decision::A => "A better".into(),
        Decision::B => "B better".into(),
        Decision::Tie => "tie".into(),
        Decision::BothBad => "both bad".into(),
        Decision::Skip => "skipped".into(),
        Decision::Ranking(ranks) => format!("ranked {}", describe_tiers(&tiers_from_ranks(ranks))),
    }
}

/// Tiers of shown positions as the labels the annotator sees: `2 > 1 = 3`.
pub fn describe_tiers(tiers: &[Vec<usize>]) -> String {
    tiers
        .iter()
        .map(|t| {
            t.iter()
                .map(|k| (k + 1).to_string())
                .collect::<Vec<_>>()
                .join(" = ")
        })
        .collect::<Vec<_>>()
        .join(" > ")
}

fn ranks_from_tiers(tiers: &[Vec<usize>], n: usize) -> Vec<u32> {
    let mut ranks = vec![0; n];
    for (r, tier) in tiers.iter().enumerate() {
        for &k in tier {
            ranks[k] = r as u32 + 1;
        }
    }
    ranks
}

pub(crate) fn tiers_from_ranks(ranks: &[u32]) -> Vec<Vec<usize>> {
    let mut levels: Vec<u32> = ranks.to_vec();
    levels.sort_unstable();
    levels.dedup();
    levels
        .iter()
        .map(|&r| (0..ranks.len()).filter(|&k| ranks[k] == r).collect())
        .collect()
}

fn remove_from_tiers(tiers: &mut Vec<Vec<usize>>, k: usize) {
    for t in tiers.iter_mut() {
        t.retain(|&x| x != k);
    }
    tiers.retain(|t| !t.is_empty());
}

/// One step up (or down): out of a tie first, then past the neighbouring tier, joining it
/// as a tie on the way. From `[a][b]`, promoting b gives `[a b]`, then `[b][a]`.
fn move_in_tiers(tiers: &mut Vec<Vec<usize>>, k: usize, up: bool) {
    let Some(t) = tiers.iter().position(|tier| tier.contains(&k)) else {
        return;
    };
    if tiers[t].len() > 1 {
        tiers[t].retain(|&x| x != k);
        tiers.insert(if up { t } else { t + 1 }, vec![k]);
    } else if up && t > 0 {
        tiers.remove(t);
        tiers[t - 1].push(k);
    } else if !up && t + 1 < tiers.len() {
        tiers.remove(t);
        tiers[t].push(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_and_ranks_convert_both_ways() {
        let tiers = vec![vec![2], vec![0, 3], vec![1]];
        let ranks = ranks_from_tiers(&tiers, 4);
        assert_eq!(ranks, [2, 3, 1, 2]);
        assert_eq!(tiers_from_ranks(&ranks), tiers);
        assert_eq!(describe_tiers(&tiers), "3 > 1 = 4 > 2");
    }

    #[test]
    fn moving_a_response_passes_through_a_tie() {
        let mut tiers = vec![vec![0], vec![1]];
        move_in_tiers(&mut tiers, 1, true);
        assert_eq!(tiers, [vec![0, 1]]);
        move_in_tiers(&mut tiers, 1, true);
        assert_eq!(tiers, [vec![1], vec![0]]);
        move_in_tiers(&mut tiers, 1, true);
        assert_eq!(tiers, [vec![1], vec![0]], "already best");
        move_in_tiers(&mut tiers, 1, false);
        assert_eq!(tiers, [vec![0, 1]]);
    }
}
