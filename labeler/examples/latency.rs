//! Keypress-to-redraw latency with 9 responses of 4 kB each (the budget: 16 ms).
//!
//! Times `keys::to_msg` + `update` + a full `Terminal::draw` (layout, wrap, diff, and for the
//! crossterm backend the escape sequences, written to a sink) for a mix of keys: scroll,
//! focus, rank picks and resizes.
//!
//! `cargo run --release -p alignkit-labeler --example latency`

use std::io;
use std::time::{Duration, Instant};

use alignkit_datasets::Turns;
use alignkit_labeler::{App, Clock, Item, JudgeMode, Msg, Response, Settings, keys, ui, update};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

fn response(k: usize) -> Response {
    let mut text = String::new();
    let mut i = k as u64 + 1;
    while text.len() < 4096 {
        i = i
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let word = [
            "alignment",
            "reward",
            "a",
            "policy",
            "the",
            "gradient",
            "of",
            "tokens",
        ][(i >> 33) as usize % 8];
        text.push_str(word);
        text.push(if (i >> 20).is_multiple_of(13) {
            '\n'
        } else {
            ' '
        });
    }
    text.truncate(4096);
    Response { text, source: None }
}

fn app() -> App {
    let items = (0..3)
        .map(|n| Item {
            id: format!("item-{n}"),
            prompt: Turns::Text("Summarise the paper below in one paragraph. ".repeat(8)),
            responses: (0..9).map(response).collect(),
        })
        .collect();
    let settings = Settings {
        annotator: "bench".into(),
        mode: JudgeMode::Rank,
        seed: 0,
        overlap: None,
        show_source: false,
        guidelines: None,
    };
    App::new(settings, items, Vec::new(), Clock::Manual(0))
}

fn keys_cycle(i: usize) -> KeyCode {
    const CYCLE: [KeyCode; 8] = [
        KeyCode::Char('j'),
        KeyCode::Char('j'),
        KeyCode::Tab,
        KeyCode::PageDown,
        KeyCode::Char('k'),
        KeyCode::Char('3'),
        KeyCode::Backspace,
        KeyCode::Char('l'),
    ];
    CYCLE[i % CYCLE.len()]
}

/// Returns (key press times, resize times).
fn measure<B: Backend>(
    mut terminal: Terminal<B>,
    (w, h): (u16, u16),
    presses: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut app = app();
    update(&mut app, Msg::Resize(w, h));
    terminal.draw(|f| ui::view(f, &app)).unwrap();
    let (mut keys_t, mut resizes_t) = (Vec::with_capacity(presses), Vec::new());
    for i in 0..presses {
        let start = Instant::now();
        let resize = i % 50 == 49;
        if resize {
            // A resize forces a full redraw.
            let (w2, h2) = if i % 100 == 49 {
                (w - 7, h - 3)
            } else {
                (w, h)
            };
            terminal.resize(Rect::new(0, 0, w2, h2)).unwrap();
            update(&mut app, Msg::Resize(w2, h2));
        } else {
            let key = KeyEvent::new(keys_cycle(i), KeyModifiers::NONE);
            if let Some(msg) = keys::to_msg(app.mode(), app.settings.mode, key) {
                update(&mut app, msg);
            }
        }
        terminal.draw(|f| ui::view(f, &app)).unwrap();
        let t = start.elapsed();
        if resize {
            resizes_t.push(t)
        } else {
            keys_t.push(t)
        }
    }
    (keys_t, resizes_t)
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{name:<44} median {:6.3} ms   p99 {:6.3} ms   max {:6.3} ms   (n = {})",
        q(0.5),
        q(0.99),
        q(1.0),
        times.len()
    );
}

fn main() {
    let presses = 1000;
    for size in [(80, 24), (160, 48)] {
        let t = Terminal::new(TestBackend::new(size.0, size.1)).unwrap();
        let (k, r) = measure(t, size, presses);
        report(&format!("TestBackend {}x{} key", size.0, size.1), k);
        report(&format!("TestBackend {}x{} resize", size.0, size.1), r);
        let t = Terminal::with_options(
            CrosstermBackend::new(io::sink()),
            TerminalOptions {
                viewport: Viewport::Fixed(Rect::new(0, 0, size.0, size.1)),
            },
        )
        .unwrap();
        let (k, r) = measure(t, size, presses);
        report(
            &format!("CrosstermBackend(sink) {}x{} key", size.0, size.1),
            k,
        );
        report(
            &format!("CrosstermBackend(sink) {}x{} resize", size.0, size.1),
            r,
        );
    }
}
