//! Where each pane goes, and the wrapped text it holds. Shared by `ui` (drawing) and `app`
//! (keeping scroll offsets inside the text), so both agree at every terminal size.

use alignkit_datasets::{Role, Turns};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;

use crate::app::{App, Pane};
use crate::wrap::wrap;

/// Below this the screen says "make the window larger".
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 18;
/// Narrowest response box shown side by side; narrower terminals stack them.
const MIN_COLUMN: u16 = 36;
/// Lowest response box in a grid; lower than that, one response is expanded at a time.
const MIN_BOX_HEIGHT: u16 = 6;
/// Terminals at least this wide show the guidelines beside the item, not above it.
const WIDE: u16 = 120;

pub fn full((w, h): (u16, u16)) -> Rect {
    Rect::new(0, 0, w, h)
}

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

/// A response's place: a full box, or one line when only the focused one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Full(Rect),
    Collapsed(Rect),
}

#[derive(Debug, Clone)]
pub struct Screen {
    pub header: Rect,
    pub body: Rect,
    pub status: Rect,
    pub keys: Rect,
    pub prompt: Rect,
    pub guidelines: Option<Rect>,
    /// One per shown position.
    pub responses: Vec<Slot>,
}

pub fn screen(app: &App, area: Rect) -> Screen {
    let [header, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);

    let (main, guidelines) = match (&app.settings.guidelines, app.guidelines_open) {
        (Some(_), true) if body.width >= WIDE => {
            let [main, side] =
                Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)])
                    .areas(body);
            (main, Some(side))
        }
        (Some(text), true) => {
            let lines = wrap(text, inner(body).width.into()).len() as u16;
            let h = (lines + 2).clamp(3, body.height * 2 / 5);
            let [top, main] =
                Layout::vertical([Constraint::Length(h), Constraint::Min(0)]).areas(body);
            (main, Some(top))
        }
        _ => (body, None),
    };

    let n = app.shown.len();
    let prompt_lines = prompt_text(&app.current_item().prompt, inner(main).width).len() as u16;
    // The responses need at least a line per collapsed response and a few for the open one.
    let responses_need = n.saturating_sub(1) as u16 + 4;
    let prompt_h = (prompt_lines + 2)
        .min(main.height * 2 / 5)
        .min(main.height.saturating_sub(responses_need))
        .max(3)
        .min(main.height);
    let [prompt, rest] =
        Layout::vertical([Constraint::Length(prompt_h), Constraint::Min(0)]).areas(main);

    Screen {
        header,
        body,
        status,
        keys,
        prompt,
        guidelines,
        responses: response_slots(rest, n, app.expanded),
    }
}

/// Side by side when wide, stacked when narrow, and one expanded response with the others
/// as one-line summaries when even stacking leaves boxes too low to read.
fn response_slots(area: Rect, n: usize, expanded: usize) -> Vec<Slot> {
    if n == 0 {
        return Vec::new();
    }
    let fit = usize::from((area.width / MIN_COLUMN).max(1));
    let rows = n.div_ceil(fit.min(n));
    let cols = n.div_ceil(rows);
    if area.height / rows as u16 >= MIN_BOX_HEIGHT {
        let row_areas = Layout::vertical(vec![Constraint::Ratio(1, rows as u32); rows]).split(area);
        let mut slots = Vec::with_capacity(n);
        for row in row_areas.iter() {
            let cells =
                Layout::horizontal(vec![Constraint::Ratio(1, cols as u32); cols]).split(*row);
            slots.extend(cells.iter().map(|c| Slot::Full(*c)));
        }
        slots.truncate(n);
        return slots;
    }
    let open_h = area
        .height
        .saturating_sub(n as u16 - 1)
        .max(3.min(area.height));
    let mut y = area.y;
    let bottom = area.y + area.height;
    (0..n)
        .map(|k| {
            let h = if k == expanded { open_h } else { 1 };
            let h = h.min(bottom.saturating_sub(y));
            let r = Rect::new(area.x, y, area.width, h);
            y += h;
            if k == expanded {
                Slot::Full(r)
            } else {
                Slot::Collapsed(r)
            }
        })
        .collect()
}

/// The area inside a border.
pub fn inner(r: Rect) -> Rect {
    Rect::new(
        r.x.saturating_add(1),
        r.y.saturating_add(1),
        r.width.saturating_sub(2),
        r.height.saturating_sub(2),
    )
}

/// The prompt as lines: plain text, or one labelled block per turn.
pub fn prompt_text(prompt: &Turns, width: u16) -> Vec<Line<'static>> {
    match prompt {
        Turns::Text(t) => wrap(t, width.into()).into_iter().map(Line::raw).collect(),
        Turns::Messages(messages) => {
            let mut lines = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                if i > 0 {
                    lines.push(Line::raw(""));
                }
                let color = match m.role {
                    Role::System => Color::Magenta,
                    Role::User => Color::Cyan,
                    Role::Assistant => Color::Green,
                    Role::Tool => Color::Yellow,
                };
                lines.push(Line::styled(
                    format!("▌{}", m.role.as_str()),
                    Style::new().fg(color).add_modifier(Modifier::BOLD),
                ));
                lines.extend(wrap(&m.content, width.into()).into_iter().map(Line::raw));
            }
            lines
        }
    }
}

/// The wrapped text of a pane at `width`.
pub fn pane_text(app: &App, pane: Pane, width: u16) -> Vec<Line<'static>> {
    match pane {
        Pane::Prompt => prompt_text(&app.current_item().prompt, width),
        Pane::Response(k) => {
            let text = &app.current_item().responses[app.shown[k]].text;
            wrap(text, width.into())
                .into_iter()
                .map(Line::raw)
                .collect()
        }
        Pane::Guidelines => wrap(
            app.settings.guidelines.as_deref().unwrap_or(""),
            width.into(),
        )
        .into_iter()
        .map(Line::raw)
        .collect(),
    }
}

/// The pane's box, when it is shown in full.
pub fn pane_rect(screen: &Screen, pane: Pane) -> Option<Rect> {
    match pane {
        Pane::Prompt => Some(screen.prompt),
        Pane::Response(k) => match screen.responses.get(k) {
            Some(Slot::Full(r)) => Some(*r),
            _ => None,
        },
        Pane::Guidelines => screen.guidelines,
    }
}

/// `(largest scroll offset, page height)` of a pane, or `None` when it is not shown in full.
pub fn scroll_range(app: &App, area: Rect, pane: Pane) -> Option<(usize, usize)> {
    if too_small(area) {
        return None;
    }
    let screen = screen(app, area);
    let r = inner(pane_rect(&screen, pane)?);
    let lines = pane_text(app, pane, r.width).len();
    let page = usize::from(r.height.max(1));
    Some((lines.saturating_sub(usize::from(r.height)), page))
}
