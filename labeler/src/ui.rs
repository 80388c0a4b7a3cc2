//! Drawing: a pure function of [`App`] onto a ratatui frame.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Clear, Paragraph};

use crate::app::{App, Field, Level, Mode, Pane, describe, describe_tiers};
use crate::layout::{self, MIN_HEIGHT, MIN_WIDTH, Slot, inner, pane_text};
use crate::record::JudgeMode;

pub fn view(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if layout::too_small(area) {
        too_small(frame, area);
        return;
    }
    let screen = layout::screen(app, area);
    header(frame, app, screen.header);
    if *app.mode() == Mode::Done {
        done(frame, app, screen.body);
    } else {
        prompt(frame, app, &screen);
        for k in 0..app.shown.len() {
            response(frame, app, k, screen.responses[k]);
        }
        if let Some(r) = screen.guidelines {
            guidelines(frame, app, r);
        }
    }
    status(frame, app, screen.status);
    keys(frame, app, screen.keys);
    if let Mode::Help(_) = app.mode() {
        help(frame, app, area);
    }
}

fn too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("make the window larger".bold()),
        Line::from(format!(
            "need {MIN_WIDTH}×{MIN_HEIGHT}, have {}×{}",
            area.width, area.height
        )),
        Line::from("q quits"),
    ];
    let [middle] = Layout::vertical([Constraint::Length(3)])
        .flex(Flex::Center)
        .areas(area);
    frame.render_widget(Paragraph::new(text).alignment(Alignment::Center), middle);
}

fn header(frame: &mut Frame, app: &App, area: Rect) {
    let p = app.progress();
    let mode = match app.settings.mode {
        JudgeMode::Pairwise => "pairwise",
        JudgeMode::Rank => "rank",
    };
    let rate = app
        .session_rate()
        .map_or("–".to_string(), |r| format!("{r:.0}"));
    let sep = Span::raw(" │ ").dark_gray();
    let mut spans = Vec::new();
    if area.width >= 100 {
        spans.push(Span::raw(" alignkit label ").reversed().bold());
    }
    spans.extend([
        Span::raw(" "),
        Span::raw(app.settings.annotator.clone()).bold(),
        sep.clone(),
        Span::raw(mode),
        sep.clone(),
    ]);
    if *app.mode() != Mode::Done {
        spans.push(Span::raw(format!(
            "item {} ({}/{})",
            app.current_item().id,
            app.pos + 1,
            app.queue.len()
        )));
        spans.push(sep.clone());
    }
    spans.extend([
        Span::raw(format!("done {}/{}", p.done, p.total)).green(),
        sep.clone(),
        Span::raw(format!("session {} · {rate}/h", app.session_count())),
        sep,
        Span::raw("? help").dark_gray(),
    ]);
    frame.render_widget(Line::from(spans), area);
}

fn focused_block(title: Line<'static>, focused: bool) -> Block<'static> {
    let block = Block::default().borders(Borders::ALL).title(title);
    if focused {
        block
            .border_type(BorderType::Thick)
            .border_style(Style::new().fg(Color::Cyan))
    } else {
        block.border_style(Style::new().fg(Color::DarkGray))
    }
}

/// Draws a pane's visible lines, with "lines a–b of n" on the bottom border when it scrolls.
fn scrolled(frame: &mut Frame, app: &App, pane: Pane, block: Block<'static>, area: Rect) {
    let body = inner(area);
    let lines = pane_text(app, pane, body.width);
    let h = usize::from(body.height);
    let top = app.scroll_of(pane).min(lines.len().saturating_sub(h));
    let block = if lines.len() > h {
        let end = (top + h).min(lines.len());
        block.title_bottom(
            Line::from(format!(" lines {}–{end} of {} ", top + 1, lines.len())).right_aligned(),
        )
    } else {
        block
    };
    let visible: Vec<Line> = lines.into_iter().skip(top).take(h).collect();
    frame.render_widget(Paragraph::new(visible).block(block), area);
}

fn prompt(frame: &mut Frame, app: &App, screen: &layout::Screen) {
    let mut title = vec![
        Span::raw(" Prompt ").bold(),
        Span::raw(format!("· {} ", app.current_item().id)),
    ];
    if let Some(j) = app.current_judgment() {
        title.push(
            Span::raw(format!(
                "· ✓ {} (judging again replaces it) ",
                describe(&j.decision)
            ))
            .green(),
        );
    }
    if app.draft.flagged {
        title.push(Span::raw("· ⚑ flagged ").red().bold());
    }
    let block = focused_block(Line::from(title), app.focus == Pane::Prompt);
    scrolled(frame, app, Pane::Prompt, block, screen.prompt);
}

/// "A", "B" in pairwise mode; "1".."9" when ranking.
fn label(app: &App, k: usize) -> String {
    match app.settings.mode {
        JudgeMode::Pairwise => ["A", "B"][k.min(1)].to_string(),
        JudgeMode::Rank => (k + 1).to_string(),
    }
}

fn rank_of(app: &App, k: usize) -> Option<usize> {
    app.draft
        .tiers
        .iter()
        .position(|t| t.contains(&k))
        .map(|r| r + 1)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn response_title(app: &App, k: usize) -> Vec<Span<'static>> {
    let r = &app.current_item().responses[app.shown[k]];
    let mut spans = vec![Span::raw(format!(" {} ", label(app, k))).bold().reversed()];
    if let Some(rank) = rank_of(app, k) {
        spans.push(Span::raw(format!(" #{rank}")).yellow().bold());
    }
    spans.push(Span::raw(format!(
        " {} chars · {} words ",
        thousands(r.text.chars().count()),
        thousands(r.text.split_whitespace().count())
    )));
    if let (true, Some(src)) = (app.settings.show_source, &r.source) {
        spans.push(Span::raw(format!("· {src} ")).magenta());
    }
    spans
}

fn response(frame: &mut Frame, app: &App, k: usize, slot: Slot) {
    match slot {
        Slot::Full(area) => {
            let block = focused_block(
                Line::from(response_title(app, k)),
                app.focus == Pane::Response(k),
            );
            scrolled(frame, app, Pane::Response(k), block, area);
        }
        Slot::Collapsed(area) => {
            let text = &app.current_item().responses[app.shown[k]].text;
            let preview: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut spans = vec![Span::raw("▸")];
            spans.extend(response_title(app, k));
            spans.push(Span::raw("│ ").dark_gray());
            spans.push(Span::raw(preview).dark_gray());
            frame.render_widget(Line::from(spans), area);
        }
    }
}

fn guidelines(frame: &mut Frame, app: &App, area: Rect) {
    let block = focused_block(
        Line::from(" Guidelines (g hides) ".bold()),
        app.focus == Pane::Guidelines,
    );
    scrolled(frame, app, Pane::Guidelines, block, area);
}

fn done(frame: &mut Frame, app: &App, area: Rect) {
    let p = app.progress();
    let text = vec![
        Line::from(
            format!(
                "All {} items are judged by {}.",
                p.total, app.settings.annotator
            )
            .bold(),
        ),
        Line::from(format!(
            "{} judgments in this session.",
            app.session_count()
        )),
        Line::from(""),
        Line::from("n/p review  ·  / jump to an id  ·  u undo the last  ·  q quit"),
    ];
    let [middle] = Layout::vertical([Constraint::Length(4)])
        .flex(Flex::Center)
        .areas(area);
    frame.render_widget(Paragraph::new(text).alignment(Alignment::Center), middle);
}

/// The line above the key hints: text being typed, a status message, or the draft's state.
fn status(frame: &mut Frame, app: &App, area: Rect) {
    let typing = |prompt: &str, text: &str| {
        let room = usize::from(area.width).saturating_sub(prompt.chars().count() + 2);
        let skip = text.chars().count().saturating_sub(room);
        let tail: String = text.chars().skip(skip).collect();
        Line::from(vec![
            Span::raw(prompt.to_string()).bold().yellow(),
            Span::raw(tail),
            Span::raw("█"),
        ])
    };
    let line = match app.mode() {
        Mode::Edit(Field::Note, t) => typing("note> ", t),
        Mode::Edit(Field::Rationale, t) => typing("rationale> ", t),
        Mode::Jump(t) => typing("go to id> ", t),
        _ => match &app.status {
            Some(s) => {
                let style = match s.level {
                    Level::Info => Style::new().fg(Color::Green),
                    Level::Warning => Style::new().fg(Color::Yellow),
                    Level::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                };
                Line::styled(s.text.clone(), style)
            }
            None => draft_line(app),
        },
    };
    frame.render_widget(line, area);
}

fn draft_line(app: &App) -> Line<'static> {
    let mut spans = Vec::new();
    if app.settings.mode == JudgeMode::Rank && *app.mode() != Mode::Done {
        let n = app.shown.len();
        let ranked: usize = app.draft.tiers.iter().map(Vec::len).sum();
        let mut order = describe_tiers(&app.draft.tiers);
        if app.draft.tie_next {
            order.push_str(" = …");
        }
        let hint = match n - ranked {
            0 | 1 => "Enter confirms".to_string(),
            left => format!("{left} to rank"),
        };
        let order = if order.is_empty() {
            "press the number of the best".into()
        } else {
            order
        };
        spans.push(Span::raw(format!("ranking: {order}  ({hint})")).yellow());
    }
    for (set, what) in [
        (!app.draft.note.is_empty(), "✎ note"),
        (!app.draft.rationale.is_empty(), "✎ rationale"),
        (app.draft.flagged, "⚑ flagged"),
    ] {
        if set {
            spans.push(Span::raw(format!("  {what}")).cyan());
        }
    }
    Line::from(spans)
}

fn keys(frame: &mut Frame, app: &App, area: Rect) {
    let hints: &[(&str, &str)] = match (app.mode(), app.settings.mode) {
        (Mode::Edit(..) | Mode::Jump(_), _) => &[("Enter", "keep"), ("Esc", "cancel")],
        (Mode::Help(_), _) => &[("any key", "close help")],
        (Mode::Done, _) => &[
            ("n/p", "review"),
            ("/", "jump"),
            ("u", "undo"),
            ("q", "quit"),
        ],
        (_, JudgeMode::Pairwise) => &[
            ("a", "A better"),
            ("b", "B better"),
            ("t", "tie"),
            ("x", "both bad"),
            ("s", "skip"),
            ("u", "undo"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (_, JudgeMode::Rank) => &[
            ("1-9", "pick"),
            ("=", "tie"),
            ("⌫", "unpick"),
            ("J/K", "move"),
            ("⏎", "confirm"),
            ("s", "skip"),
            ("u", "undo"),
            ("q", "quit"),
        ],
    };
    let mut spans = Vec::new();
    for (key, what) in hints {
        spans.push(Span::raw(format!(" {key} ")).reversed());
        spans.push(Span::raw(format!("{what} ")));
    }
    frame.render_widget(Line::from(spans), area);
}

const HELP: &[(&str, &str)] = &[
    ("a / 1", "pairwise: A is better"),
    ("b / 2", "pairwise: B is better"),
    ("t / =", "pairwise: tie"),
    ("x", "pairwise: both are bad"),
    ("1-9", "ranking: this response is next best"),
    ("=", "ranking: the next pick ties with the last"),
    ("Backspace", "ranking: take back the last pick"),
    ("K / J", "ranking: move the focused response up / down"),
    ("Enter", "ranking: confirm"),
    ("s", "skip this item"),
    ("u", "undo the last judgment (a correction is appended)"),
    ("n / p", "next / previous item"),
    ("/", "jump to an item id"),
    ("f", "flag the prompt as bad (export leaves it out)"),
    ("c / w", "write a note / a rationale"),
    ("g", "show or hide the guidelines"),
    ("Tab h l ← →", "focus another pane"),
    ("j k ↓ ↑", "scroll; PgUp PgDn Space, Home End"),
    ("q / Ctrl-C", "quit (every decision is already saved)"),
];

fn help(frame: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::raw(format!(" {k:<12}")).bold().cyan(),
                Span::raw(*what),
            ])
        })
        .collect();
    let w = area.width.min(70);
    let h = area.height.min(lines.len() as u16 + 2);
    let [row] = Layout::vertical([Constraint::Length(h)])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::horizontal([Constraint::Length(w)])
        .flex(Flex::Center)
        .areas(row);
    let title = format!(
        " Keys · annotator {} · any key closes ",
        app.settings.annotator
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_type(BorderType::Double)
                .title(title.bold()),
        ),
        popup,
    );
}
