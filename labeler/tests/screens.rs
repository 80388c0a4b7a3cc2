//! Drives `update` with messages and compares the rendered `TestBackend` buffers with the
//! screens under `tests/screens/`. After an intended change of the UI, regenerate them with
//! `UPDATE_SCREENS=1 cargo test -p alignkit-labeler --test screens` and review the diff.

use std::path::PathBuf;

use alignkit_datasets::{Message, Role, Turns};
use alignkit_labeler::app::{Field, Level, Pane};
use alignkit_labeler::{
    App, Clock, Decision, Effect, Item, JudgeMode, Mode, Msg, Record, Response, Settings, keys, ui,
    update,
};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const T0: u64 = 1_700_000_000_000;

/// Deterministic filler text of about `chars` characters.
fn text(seed: usize, chars: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "model", "answer", "gradient", "token", "reward", "policy", "is", "a", "clear",
        "concise", "response", "because", "we", "prefer", "helpful",
    ];
    let mut out = String::new();
    let mut i = seed;
    while out.len() < chars {
        i = i.wrapping_mul(2_654_435_761).wrapping_add(12_345) % 1_000_003;
        out.push_str(WORDS[i % WORDS.len()]);
        out.push(if i.is_multiple_of(11) { '\n' } else { ' ' });
    }
    out.truncate(chars);
    out.trim_end().to_string()
}

fn item(id: &str, prompt: Turns, responses: usize, chars: usize) -> Item {
    Item {
        id: id.into(),
        prompt,
        responses: (0..responses)
            .map(|k| Response {
                text: format!("Response {k}. {}", text(k + id.len() * 31, chars)),
                source: Some(format!("model-{k}")),
            })
            .collect(),
    }
}

fn pairwise_items() -> Vec<Item> {
    vec![
        item(
            "q1",
            Turns::Text("Explain what a reward model is, in two sentences.".into()),
            2,
            600,
        ),
        item(
            "q2",
            Turns::Messages(vec![
                Message::new(Role::System, "You are a terse assistant."),
                Message::new(Role::User, "What is DPO?"),
                Message::new(Role::Assistant, "Direct Preference Optimization."),
                Message::new(Role::User, "And how does it differ from PPO?"),
            ]),
            2,
            300,
        ),
        item(
            "q3",
            Turns::Text("Write a haiku about gradients.".into()),
            3,
            200,
        ),
    ]
}

fn rank_items() -> Vec<Item> {
    vec![
        item(
            "r1",
            Turns::Text("Summarise the attached paper.".into()),
            9,
            4096,
        ),
        item(
            "r2",
            Turns::Text("Name three sorting algorithms.".into()),
            3,
            120,
        ),
    ]
}

fn settings(mode: JudgeMode) -> Settings {
    Settings {
        annotator: "alice".into(),
        mode,
        seed: 0,
        overlap: None,
        show_source: false,
        guidelines: Some(
            "Prefer the response that is correct first, then helpful, then concise.".into(),
        ),
    }
}

/// The app plus a fake runner: appended records are "saved" at once.
struct Harness {
    app: App,
    appended: Vec<Record>,
    quit: bool,
}

impl Harness {
    fn new(mode: JudgeMode, items: Vec<Item>, records: Vec<Record>) -> Harness {
        Harness::with(settings(mode), items, records)
    }

    fn with(settings: Settings, items: Vec<Item>, records: Vec<Record>) -> Harness {
        Harness {
            app: App::new(settings, items, records, Clock::Manual(T0)),
            appended: Vec::new(),
            quit: false,
        }
    }

    fn send(&mut self, msg: Msg) {
        let mut queue = vec![msg];
        while let Some(msg) = queue.pop() {
            for effect in update(&mut self.app, msg) {
                match effect {
                    Effect::Append(r) => {
                        self.appended.push((*r).clone());
                        queue.push(Msg::Saved(r));
                    }
                    Effect::Quit => self.quit = true,
                }
            }
        }
    }

    fn press(&mut self, code: KeyCode) {
        self.press_mod(code, KeyModifiers::NONE);
    }

    fn press_mod(&mut self, code: KeyCode, modifiers: KeyModifiers) {
        let key = KeyEvent::new(code, modifiers);
        if let Some(msg) = keys::to_msg(self.app.mode(), self.app.settings.mode, key) {
            self.send(msg);
        }
    }

    fn keys(&mut self, keys: &str) {
        for c in keys.chars() {
            self.press(KeyCode::Char(c));
        }
    }

    fn screen(&mut self, w: u16, h: u16) -> String {
        self.send(Msg::Resize(w, h));
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| ui::view(f, &self.app)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..h {
            let mut line = String::new();
            for x in 0..w {
                line.push_str(buffer[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn last(&self) -> &Record {
        self.appended.last().expect("a record was appended")
    }
}

fn judgment(r: &Record) -> &alignkit_labeler::Judgment {
    match r {
        Record::Judgment(j) => j,
        other => panic!("not a judgment: {other:?}"),
    }
}

/// Compares with `tests/screens/NAME.txt` (or writes it with UPDATE_SCREENS=1).
fn golden(name: &str, screen: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/screens/{name}.txt"));
    if std::env::var_os("UPDATE_SCREENS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, screen).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SCREENS=1)", path.display()));
    assert!(
        expected == screen,
        "screen {name} differs from {}\n--- expected\n{expected}\n--- got\n{screen}",
        path.display()
    );
}

#[test]
fn pairwise_screens_at_80x24_and_160x48() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    golden("pairwise_80x24", &h.screen(80, 24));
    golden("pairwise_160x48", &h.screen(160, 48));

    // A decision: the next item (a multi-turn conversation) and a "saved" status.
    h.keys("a");
    golden("pairwise_saved_80x24", &h.screen(80, 24));
    golden("pairwise_conversation_160x48", &h.screen(160, 48));
}

#[test]
fn ranking_screens_at_80x24_and_160x48() {
    let mut h = Harness::new(JudgeMode::Rank, rank_items(), vec![]);
    // Nine 4 kB responses: a 3×3 grid when wide, one expanded when small.
    h.keys("3=1");
    h.press(KeyCode::Tab);
    h.press(KeyCode::Char('j'));
    golden("rank_160x48", &h.screen(160, 48));
    golden("rank_80x24", &h.screen(80, 24));
}

#[test]
fn help_overlay_guidelines_done_and_tiny_screens() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    h.keys("?");
    golden("help_80x24", &h.screen(80, 24));
    h.keys("x");
    assert_eq!(*h.app.mode(), Mode::Judging, "any key closes help");
    assert!(
        h.appended.is_empty(),
        "the key that closes help decides nothing"
    );

    h.keys("g");
    golden("guidelines_80x24", &h.screen(80, 24));
    golden("guidelines_160x48", &h.screen(160, 48));

    let tiny = h.screen(40, 10);
    golden("tiny_40x10", &tiny);
    assert!(tiny.contains("make the window larger"));
    h.keys("a");
    assert!(
        h.appended.is_empty(),
        "no decision on a screen too small to read"
    );
    // Resizing back redraws the item.
    assert!(h.screen(80, 24).contains("item q1"));

    h.keys("abt");
    assert_eq!(*h.app.mode(), Mode::Done);
    golden("done_80x24", &h.screen(80, 24));
}

#[test]
fn a_decision_appends_one_record_and_the_screen_advances_only_when_it_is_saved() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    h.app.clock = Clock::Manual(T0 + 4_321);
    let effects = update(&mut h.app, Msg::Decide(Decision::B));
    let [Effect::Append(record)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(h.app.current_item().id, "q1", "not saved yet: still on q1");
    let j = judgment(record);
    assert_eq!((j.item.as_str(), j.annotator.as_str()), ("q1", "alice"));
    assert_eq!(j.decision, Decision::B);
    assert_eq!(j.duration_ms, 4_321);
    assert_eq!(j.ts, "2023-11-14T22:13:24.321Z");
    assert_eq!(j.shown.len(), 2);
    assert_eq!(j.responses.len(), 2);

    update(&mut h.app, Msg::SaveFailed("disk full".into()));
    assert_eq!(h.app.current_item().id, "q1");
    assert!(h.screen(80, 24).contains("NOT SAVED: disk full"));

    update(&mut h.app, Msg::Saved(record.clone()));
    assert_eq!(h.app.current_item().id, "q2");
    assert_eq!(h.app.progress().done, 1);
    assert_eq!(h.app.session_count(), 1);
}

#[test]
fn restart_resumes_at_the_first_item_this_annotator_has_not_judged() {
    let mut first = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    first.keys("a");
    let mut bob = Harness::with(
        Settings {
            annotator: "bob".into(),
            ..settings(JudgeMode::Pairwise)
        },
        pairwise_items(),
        vec![],
    );
    bob.keys("bb");
    let mut records = first.appended.clone();
    records.extend(bob.appended.clone());

    let again = Harness::new(JudgeMode::Pairwise, pairwise_items(), records);
    assert_eq!(again.app.current_item().id, "q2");
    assert_eq!(
        again.app.progress().done,
        1,
        "bob's judgments are not alice's"
    );
}

#[test]
fn undo_appends_a_correction_and_returns_to_the_item() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    h.keys("ab");
    let rid = judgment(h.last()).rid.clone();
    h.keys("u");
    let Record::Correction(c) = h.last() else {
        panic!("{:?}", h.last())
    };
    assert_eq!((c.item.as_str(), c.undoes.as_str()), ("q2", rid.as_str()));
    assert_eq!(h.app.current_item().id, "q2");
    assert_eq!(h.app.progress().done, 1);
    assert_eq!(h.app.session_count(), 1);

    // Re-judging after navigating back records what it supersedes.
    h.keys("p");
    assert_eq!(h.app.current_item().id, "q1");
    let screen = h.screen(80, 24);
    assert!(screen.contains("✓ A better"), "{screen}");
    let before = judgment(&h.appended[0]).rid.clone();
    h.keys("t");
    assert_eq!(
        judgment(h.last()).supersedes.as_deref(),
        Some(before.as_str())
    );
    assert_eq!(h.app.current_item().id, "q2", "back to the first open item");
    assert_eq!(h.appended.len(), 4, "nothing was rewritten, only appended");
}

#[test]
fn ranking_picks_ties_moves_and_confirms() {
    let mut h = Harness::new(JudgeMode::Rank, rank_items(), vec![]);
    h.press(KeyCode::Enter);
    assert!(h.appended.is_empty());
    assert!(
        h.screen(80, 24)
            .contains("rank every response first (9 unranked)")
    );

    // 3 best; then 1 and 5 tied; Backspace takes 5 back.
    h.keys("31=5");
    h.press(KeyCode::Backspace);
    h.keys("=5246789");
    // Promote response 2 (Tab moves the focus from 1 to 2): it is alone in its tier, so it
    // joins the tier above as a tie.
    h.press(KeyCode::Tab);
    h.press(KeyCode::Char('K'));
    h.press(KeyCode::Enter);
    let j = judgment(h.last());
    assert_eq!(j.mode, JudgeMode::Rank);
    //            shown:  1  2  3  4  5  6  7  8  9
    let expected = vec![2, 2, 1, 3, 2, 4, 5, 6, 7];
    assert_eq!(j.decision, Decision::Ranking(expected));
    assert_eq!(h.app.current_item().id, "r2");

    // With one response left unranked, Enter ranks it last.
    h.keys("21");
    h.press(KeyCode::Enter);
    assert_eq!(
        judgment(h.last()).decision,
        Decision::Ranking(vec![2, 1, 3])
    );
    assert_eq!(*h.app.mode(), Mode::Done);
}

#[test]
fn notes_rationales_flags_and_jumps() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    h.keys("/q3");
    assert!(h.screen(80, 24).contains("go to id> q3"));
    h.press(KeyCode::Enter);
    assert_eq!(h.app.current_item().id, "q3");
    h.keys("/nope");
    h.press(KeyCode::Enter);
    assert!(h.screen(80, 24).contains("no item with id \"nope\""));

    h.keys("cprompt is ambiguous");
    assert_eq!(
        *h.app.mode(),
        Mode::Edit(Field::Note, "prompt is ambiguous".into())
    );
    h.press(KeyCode::Enter);
    h.keys("wbecause");
    h.press(KeyCode::Esc);
    h.keys("f");
    assert!(h.screen(80, 24).contains("⚑ flagged"));
    h.keys("s");
    let j = judgment(h.last());
    assert_eq!(j.item, "q3");
    assert_eq!(j.decision, Decision::Skip);
    assert_eq!(j.note, "prompt is ambiguous");
    assert_eq!(j.rationale, "", "Esc cancels");
    assert!(j.flagged);
    assert_eq!(
        h.app.current_item().id,
        "q1",
        "wraps around to the first open item"
    );
}

#[test]
fn scrolling_stays_inside_the_text_with_vim_keys_and_arrows() {
    let mut h = Harness::new(JudgeMode::Rank, rank_items(), vec![]);
    h.screen(80, 24);
    h.press(KeyCode::Tab); // focus response 2 (expanded)
    for _ in 0..1000 {
        h.press(KeyCode::Char('j'));
    }
    let bottom = h.app.scroll_of(Pane::Response(1));
    assert!(bottom > 10, "{bottom}");
    h.press(KeyCode::Down);
    assert_eq!(
        h.app.scroll_of(Pane::Response(1)),
        bottom,
        "clamped at the end"
    );
    h.press(KeyCode::Up);
    h.press(KeyCode::Char('k'));
    assert_eq!(h.app.scroll_of(Pane::Response(1)), bottom - 2);
    h.press(KeyCode::Home);
    assert_eq!(h.app.scroll_of(Pane::Response(1)), 0);
    h.press(KeyCode::End);
    assert_eq!(h.app.scroll_of(Pane::Response(1)), bottom);
    // At 160×48 the nine responses sit in a grid of narrower boxes, so the text is longer;
    // back at 80×24 the offset shrinks to fit again.
    h.screen(160, 48);
    h.press(KeyCode::End);
    assert!(h.app.scroll_of(Pane::Response(1)) > bottom);
    h.screen(80, 24);
    assert_eq!(h.app.scroll_of(Pane::Response(1)), bottom);
    h.press_mod(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(h.quit);
}

#[test]
fn overlap_skips_items_that_enough_other_annotators_judged() {
    let mut bob = Harness::with(
        Settings {
            annotator: "bob".into(),
            overlap: Some(1),
            ..settings(JudgeMode::Pairwise)
        },
        pairwise_items(),
        vec![],
    );
    bob.keys("a");
    let bobs_item = judgment(bob.last()).item.clone();
    let alice = Harness::with(
        Settings {
            overlap: Some(1),
            ..settings(JudgeMode::Pairwise)
        },
        pairwise_items(),
        bob.appended.clone(),
    );
    assert_eq!(alice.app.progress().total, 2);
    assert_ne!(alice.app.current_item().id, bobs_item);

    // Records another annotator appends while alice works count too.
    let mut alice = Harness::with(
        Settings {
            overlap: Some(1),
            ..settings(JudgeMode::Pairwise)
        },
        pairwise_items(),
        vec![],
    );
    assert_eq!(alice.app.progress().total, 3);
    alice.send(Msg::Records(bob.appended.clone()));
    assert_eq!(alice.app.progress().total, 2);
}

#[test]
fn startup_warnings_show_in_the_status_line() {
    let mut h = Harness::new(JudgeMode::Pairwise, pairwise_items(), vec![]);
    h.app.set_status(
        Level::Warning,
        "1 malformed input line(s) skipped, first c.jsonl:3: bad",
    );
    assert!(h.screen(80, 24).contains("c.jsonl:3"));
}

#[test]
fn random_keys_and_sizes_never_panic_and_every_record_is_valid() {
    let all = [
        KeyCode::Char('a'),
        KeyCode::Char('b'),
        KeyCode::Char('t'),
        KeyCode::Char('x'),
        KeyCode::Char('s'),
        KeyCode::Char('u'),
        KeyCode::Char('n'),
        KeyCode::Char('p'),
        KeyCode::Char('/'),
        KeyCode::Char('?'),
        KeyCode::Char('g'),
        KeyCode::Char('f'),
        KeyCode::Char('c'),
        KeyCode::Char('w'),
        KeyCode::Char('j'),
        KeyCode::Char('k'),
        KeyCode::Char('K'),
        KeyCode::Char('J'),
        KeyCode::Char('='),
        KeyCode::Char('1'),
        KeyCode::Char('2'),
        KeyCode::Char('3'),
        KeyCode::Char('9'),
        KeyCode::Tab,
        KeyCode::BackTab,
        KeyCode::PageDown,
        KeyCode::End,
        KeyCode::Enter,
        KeyCode::Esc,
        KeyCode::Backspace,
    ];
    for (mode, items) in [
        (JudgeMode::Pairwise, pairwise_items()),
        (JudgeMode::Rank, rank_items()),
    ] {
        let mut h = Harness::new(mode, items, vec![]);
        let mut state: u64 = 0x9e37_79b9;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        let (mut w, mut hgt) = (80, 24);
        for step in 0..3000 {
            if step % 97 == 0 {
                (w, hgt) = (1 + next(200) as u16, 1 + next(60) as u16);
            }
            h.press(all[next(all.len())]);
            if step % 7 == 0 {
                h.screen(w, hgt);
            }
        }
        assert!(!h.appended.is_empty());
        for r in &h.appended {
            if let Record::Judgment(j) = r {
                assert_eq!(j.mode, mode);
                match (&j.decision, mode) {
                    (Decision::Ranking(ranks), JudgeMode::Rank) => {
                        assert_eq!(ranks.len(), j.shown.len());
                        let mut levels = ranks.clone();
                        levels.sort_unstable();
                        levels.dedup();
                        assert_eq!(levels, (1..=levels.len() as u32).collect::<Vec<_>>());
                    }
                    (Decision::Skip, _) => {}
                    (_, JudgeMode::Pairwise) => assert_eq!(j.shown.len(), 2),
                    (d, m) => panic!("{d:?} in {m:?} mode"),
                }
            }
        }
    }
}
