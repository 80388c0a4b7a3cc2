//! Key events to messages. Which key means what depends on the mode only; every decision is
//! a single key, and vim keys and arrows both scroll.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::app::{Mode, Msg};
use crate::record::{Decision, JudgeMode};

pub fn to_msg(mode: &Mode, judge: JudgeMode, key: KeyEvent) -> Option<Msg> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Msg::Quit);
    }
    match mode {
        Mode::Help(_) => Some(Msg::Help),
        Mode::Edit(..) | Mode::Jump(_) => match key.code {
            KeyCode::Enter => Some(Msg::Submit),
            KeyCode::Esc => Some(Msg::Cancel),
            KeyCode::Backspace => Some(Msg::Erase),
            KeyCode::Char(c) if !ctrl => Some(Msg::Input(c)),
            _ => None,
        },
        Mode::Judging | Mode::Done => {
            if ctrl {
                return match key.code {
                    KeyCode::Char('d') => Some(Msg::Page(1)),
                    KeyCode::Char('u') => Some(Msg::Page(-1)),
                    _ => None,
                };
            }
            decision(judge, key.code).or_else(|| common(key))
        }
    }
}

fn decision(judge: JudgeMode, code: KeyCode) -> Option<Msg> {
    Some(match (judge, code) {
        (JudgeMode::Pairwise, KeyCode::Char('a' | '1')) => Msg::Decide(Decision::A),
        (JudgeMode::Pairwise, KeyCode::Char('b' | '2')) => Msg::Decide(Decision::B),
        (JudgeMode::Pairwise, KeyCode::Char('t' | '=')) => Msg::Decide(Decision::Tie),
        (JudgeMode::Pairwise, KeyCode::Char('x')) => Msg::Decide(Decision::BothBad),
        (JudgeMode::Rank, KeyCode::Char(c @ '1'..='9')) => Msg::Pick(c as usize - '1' as usize),
        (JudgeMode::Rank, KeyCode::Char('=' | 't')) => Msg::TieNext,
        (JudgeMode::Rank, KeyCode::Backspace) => Msg::Unpick,
        (JudgeMode::Rank, KeyCode::Enter) => Msg::Confirm,
        (JudgeMode::Rank, KeyCode::Char('K')) => Msg::Promote,
        (JudgeMode::Rank, KeyCode::Char('J')) => Msg::Demote,
        (_, KeyCode::Char('s')) => Msg::Decide(Decision::Skip),
        _ => return None,
    })
}

fn common(key: KeyEvent) -> Option<Msg> {
    let shift = key.modifiers.contains(KeyModifiers::SHIFT);
    Some(match key.code {
        KeyCode::Up if shift => Msg::Promote,
        KeyCode::Down if shift => Msg::Demote,
        KeyCode::Char('q') => Msg::Quit,
        KeyCode::Char('?') => Msg::Help,
        KeyCode::Char('u') => Msg::Undo,
        KeyCode::Char('n') => Msg::Next,
        KeyCode::Char('p') => Msg::Prev,
        KeyCode::Char('/') => Msg::StartJump,
        KeyCode::Char('f') => Msg::Flag,
        KeyCode::Char('c') => Msg::EditNote,
        KeyCode::Char('w') => Msg::EditRationale,
        KeyCode::Char('g') => Msg::Guidelines,
        KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => Msg::FocusNext,
        KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => Msg::FocusPrev,
        KeyCode::Down | KeyCode::Char('j') => Msg::Scroll(1),
        KeyCode::Up | KeyCode::Char('k') => Msg::Scroll(-1),
        KeyCode::PageDown | KeyCode::Char(' ') => Msg::Page(1),
        KeyCode::PageUp => Msg::Page(-1),
        KeyCode::Home => Msg::Top,
        KeyCode::End | KeyCode::Char('G') => Msg::Bottom,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn the_same_key_means_different_things_per_mode() {
        let j = Mode::Judging;
        assert_eq!(
            to_msg(&j, JudgeMode::Pairwise, key(KeyCode::Char('1'))),
            Some(Msg::Decide(Decision::A))
        );
        assert_eq!(
            to_msg(&j, JudgeMode::Rank, key(KeyCode::Char('1'))),
            Some(Msg::Pick(0))
        );
        let typing = Mode::Edit(crate::app::Field::Note, String::new());
        assert_eq!(
            to_msg(&typing, JudgeMode::Pairwise, key(KeyCode::Char('q'))),
            Some(Msg::Input('q'))
        );
        let help = Mode::Help(Box::new(Mode::Judging));
        assert_eq!(
            to_msg(&help, JudgeMode::Pairwise, key(KeyCode::Char('a'))),
            Some(Msg::Help)
        );
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(to_msg(&typing, JudgeMode::Rank, ctrl_c), Some(Msg::Quit));
    }

    #[test]
    fn vim_keys_and_arrows_both_scroll() {
        for (a, b) in [
            (KeyCode::Char('j'), KeyCode::Down),
            (KeyCode::Char('k'), KeyCode::Up),
        ] {
            assert_eq!(
                to_msg(&Mode::Judging, JudgeMode::Pairwise, key(a)),
                to_msg(&Mode::Judging, JudgeMode::Pairwise, key(b))
            );
        }
    }
}
