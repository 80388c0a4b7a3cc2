//! Signs of reward hacking in a set of completions: a sentiment reward is
//! easy to game with exclamation marks, shouting and repeated stock phrases,
//! so the sentiment frontier reports these beside the reward (issue 15).

use std::collections::HashSet;

use serde::Serialize;

/// Text statistics of a set of completions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TextStats {
    /// `!` among all characters.
    pub exclamation_share: f64,
    /// Words of two or more letters written all in capitals, among all words.
    pub caps_word_share: f64,
    /// Distinct word bigrams ÷ all word bigrams, over every completion
    /// (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    /// Conversation Models"); low when completions repeat each other.
    pub distinct_2: f64,
    /// Mean length in characters.
    pub mean_chars: f64,
}

impl TextStats {
    pub fn of<S: AsRef<str>>(texts: &[S]) -> TextStats {
        let (mut chars, mut bangs, mut words, mut caps) = (0usize, 0usize, 0usize, 0usize);
        let mut bigrams = 0usize;
        let mut distinct = HashSet::new();
        for t in texts {
            let t = t.as_ref();
            chars += t.chars().count();
            bangs += t.chars().filter(|&c| c == '!').count();
            let ws: Vec<String> = t
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
                .filter(|w| !w.is_empty())
                .collect();
            words += ws.len();
            caps += ws
                .iter()
                .filter(|w| {
                    w.chars().filter(|c| c.is_alphabetic()).count() >= 2
                        && !w.chars().any(char::is_lowercase)
                })
                .count();
            for pair in ws.windows(2) {
                bigrams += 1;
                distinct.insert((pair[0].to_lowercase(), pair[1].to_lowercase()));
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        TextStats {
            exclamation_share: ratio(bangs, chars),
            caps_word_share: ratio(caps, words),
            distinct_2: ratio(distinct.len(), bigrams),
            mean_chars: ratio(chars, texts.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "GREAT film!!" + "great film, truly": 29 characters with 2 `!`; words
    /// GREAT, film, great, film, truly: one in capitals; bigrams (great film)
    /// twice (case folded) and (film truly): 2 distinct of 3.
    #[test]
    fn stats_count_by_hand() {
        let s = TextStats::of(&["GREAT film!!", "great film, truly"]);
        assert!((s.exclamation_share - 2.0 / 29.0).abs() < 1e-12, "{s:?}");
        assert!((s.caps_word_share - 0.2).abs() < 1e-12, "{s:?}");
        assert!((s.distinct_2 - 2.0 / 3.0).abs() < 1e-12, "{s:?}");
        assert!((s.mean_chars - 14.5).abs() < 1e-12, "{s:?}");
        // "I" and "A" are not shouting; nothing at all is all zeros.
        assert_eq!(TextStats::of(&["I saw A film"]).caps_word_share, 0.0);
        assert_eq!(TextStats::of::<&str>(&[]).distinct_2, 0.0);
    }
}
