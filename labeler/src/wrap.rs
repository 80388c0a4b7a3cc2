//! Word wrap to a column width, so the UI knows how many lines a pane holds (for scrolling)
//! and draws only the visible ones.

use unicode_width::UnicodeWidthChar;

/// Wraps `text` to lines of at most `width` columns. Paragraph breaks (`\n`) are kept,
/// leading indentation is kept (code), words longer than a line are split. Tabs become four
/// spaces and other control characters are dropped: model output must not drive the terminal.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        wrap_paragraph(paragraph, width, &mut lines);
    }
    lines
}

fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

fn wrap_paragraph(paragraph: &str, width: usize, lines: &mut Vec<String>) {
    let mut out = Filler {
        width,
        lines,
        line: String::new(),
        line_w: 0,
    };
    let mut token = String::new();
    let mut token_w = 0;
    let mut token_is_space = true;
    for c in paragraph.chars() {
        let (c, repeat) = match c {
            '\t' => (' ', 4),
            c if c.is_control() => continue,
            c => (c, 1),
        };
        let is_space = c == ' ';
        if is_space != token_is_space {
            out.push_token(&token, token_w, token_is_space);
            token.clear();
            token_w = 0;
            token_is_space = is_space;
        }
        for _ in 0..repeat {
            token.push(c);
            token_w += char_width(c);
        }
    }
    out.push_token(&token, token_w, token_is_space);
    let last = out.line.trim_end().to_string();
    out.lines.push(last);
}

/// Greedy line filling.
struct Filler<'a> {
    width: usize,
    lines: &'a mut Vec<String>,
    line: String,
    line_w: usize,
}

impl Filler<'_> {
    fn break_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        // A line holding only indentation is dropped rather than shown empty.
        if !line.trim().is_empty() {
            self.lines.push(line.trim_end().to_string());
        }
        self.line_w = 0;
    }

    fn push_token(&mut self, token: &str, token_w: usize, is_space: bool) {
        if token.is_empty() {
            return;
        }
        if self.line_w + token_w <= self.width {
            self.line.push_str(token);
            self.line_w += token_w;
        } else if is_space {
            // A break at a run of spaces swallows the run.
            self.break_line();
        } else {
            self.break_line();
            for c in token.chars() {
                let w = char_width(c);
                if self.line_w + w > self.width && self.line_w > 0 {
                    self.break_line();
                }
                self.line.push(c);
                self.line_w += w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_word_boundaries_and_keeps_paragraphs_and_indentation() {
        let text = "the quick brown fox jumps\n\n    code\tx y";
        assert_eq!(
            wrap(text, 10),
            ["the quick", "brown fox", "jumps", "", "    code", "x y"]
        );
    }

    #[test]
    fn long_words_are_split_and_wide_characters_counted() {
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("日本語です", 4), ["日本", "語で", "す"]);
        assert_eq!(wrap("a \x1b[31mred", 20), ["a [31mred"]);
    }

    #[test]
    fn no_line_is_wider_than_the_width() {
        let text = "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(40);
        for w in 1..30 {
            for line in wrap(&text, w) {
                let lw: usize = line.chars().map(char_width).sum();
                assert!(lw <= w, "{line:?} at {w}");
            }
        }
    }
}
