//! The VADER compound sentiment score (Hutto & Gilbert 2014, "VADER: A
//! Parsimonious Rule-based Model for Sentiment Analysis of Social Media
//! Text"), from the `vader_sentiment` crate and its lexicon: the `sentiment`
//! reward of online RL, `alignkit eval winrate --judge sentiment`, `eval
//! drift --score sentiment` and `data pairs --judge sentiment`.

/// The VADER compound sentiment score of a text, in [−1, 1].
pub struct Sentiment(vader_sentiment::SentimentIntensityAnalyzer<'static>);

impl Sentiment {
    pub fn new() -> Self {
        Self(vader_sentiment::SentimentIntensityAnalyzer::new())
    }

    pub fn score(&self, text: &str) -> f64 {
        let scores = self.0.polarity_scores(text);
        *scores
            .get("compound")
            .expect("VADER always reports a compound score")
    }
}

impl Default for Sentiment {
    fn default() -> Self {
        Self::new()
    }
}
