"""Parity fixture for alignkit-eval's VADER sentiment score, from vaderSentiment 3.3.2.

Writes eval/tests/fixtures/vader.jsonl: one JSON object per line,
  {"text": ..., "compound": ..., "compound_unrounded": ..., "neg": ..., "neu": ..., "pos": ...}
where compound/neg/neu/pos are `SentimentIntensityAnalyzer().polarity_scores(text)` as the
package returns them (compound rounded to 4 decimals, the others to 3) and
compound_unrounded is the same compound before `round` (the module's `round` replaced by
the identity for a second call). eval/tests/vader_parity.rs checks `Sentiment::score`
against both.

The texts cover the rules of the algorithm one by one (negation, boosters and dampeners,
"but", ALL CAPS emphasis, emoji, punctuation emphasis, special-case idioms, "no", "least",
"without doubt", "never so/this"), quirks of the reference (single-character tokens,
tokens whose stripped form has two characters or fewer, the `list.index` lookup of the
"but" rule on equal valences, emoticons with upper-case letters), edge cases (empty,
whitespace, Unicode whitespace, numbers, URLs) and the openings of
examples/sentiment/test.jsonl.

  pip install vaderSentiment==3.3.2
  python scripts/fixtures_vader.py          (from the repo root)

CI never runs this; the fixture is committed.
"""
import json
import os
from importlib.metadata import version

import vaderSentiment.vaderSentiment as vader_module

REFERENCE_VERSION = "3.3.2"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "eval", "tests", "fixtures", "vader.jsonl")
OPENINGS = os.path.join(ROOT, "examples", "sentiment", "test.jsonl")

TEXTS = [
    # The example (issue 33): the crate scored 0.508, the reference 0.458.
    "This hybrid effort has just been able to deliver on two German films reimagined for "
    "Hollywood. The most promising aspects are …",
    # The reference's own demo sentences.
    "VADER is smart, handsome, and funny.",
    "VADER is smart, handsome, and funny!",
    "VADER is very smart, handsome, and funny.",
    "VADER is VERY SMART, handsome, and FUNNY.",
    "VADER is VERY SMART, handsome, and FUNNY!!!",
    "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
    "VADER is not smart, handsome, nor funny.",
    "The book was good.",
    "At least it isn't a horrible book.",
    "The book was only kind of good.",
    "The plot was good, but the characters are uncompelling and the dialog is not great.",
    "Today SUX!",
    "Today only kinda sux! But I'll get by, lol",
    "Make sure you :) or :D today!",
    "Catch utf-8 emoji such as 💘 and 💋 and 😁",
    "Not bad at all",
    "Sentiment analysis has never been good.",
    "Sentiment analysis has never been this good!",
    "Most automated sentiment analysis tools are shit.",
    "With VADER, sentiment analysis is the shit!",
    "Other sentiment analysis tools can be quite bad.",
    "On the other hand, VADER is quite bad ass",
    "VADER is such a badass!",
    "Without a doubt, excellent idea.",
    "Roger Dodger is one of the most compelling variations on this theme.",
    "Roger Dodger is at least compelling as a variation on the theme.",
    "Roger Dodger is one of the least compelling variations on this theme.",
    "Not such a badass after all.",
    "Without a doubt, an excellent idea.",
    "It was one of the worst movies I've seen, despite good reviews. Unbelievably bad acting!! "
    "Poor direction. VERY poor production. The movie was bad. Very bad movie. VERY BAD movie!",
    # Single words and the empty cases.
    "",
    " ",
    "   \t\n  ",
    "good",
    "bad",
    "GOOD",
    "Good",
    "happy birthday",
    "tear gas",
    "   good   ",
    "\u00a0good\u00a0movie\u00a0",
    "great\u3000film\u2003truly awful",
    "nice\x1cmovie\x1fbad",
    "good\r\nbad\r\n",
    # Negation, with and without apostrophes.
    "not good",
    "not bad",
    "This is not good at all.",
    "It isn't good.",
    "It isnt good.",
    "It is not very good.",
    "I don't like it.",
    "I dont like it.",
    "I do not love this movie.",
    "I never liked it.",
    "I have never been so happy.",
    "I have never been this happy.",
    "never so good",
    "never this bad",
    "It was never really that funny.",
    "I can't say it was great.",
    "I cant say it was great.",
    "I cannot recommend it enough, it was wonderful.",
    "Nobody was happy, nothing was good, nowhere was safe.",
    "The film wasn't terrible but wasn't great either.",
    "The acting wasnt bad, the story wasnt good.",
    "It ain't pretty.",
    "He won't win, she wouldn't smile, they shouldn't cry.",
    "Hardly a success, rarely funny, seldom boring.",
    "Despite the praise, it failed.",
    "Neither good nor bad.",
    "uh-uh, not happy",
    "Nope, not happy.",
    "Nothing about it felt right.",
    "I would not say it was not good.",
    "She ISN'T happy about it.",
    "NOT good",
    "Not GOOD at all",
    "didn't love, didn't hate",
    # "without" and "without doubt".
    "without love",
    "It was done without care or kindness.",
    "Without doubt the best film of the year.",
    "without a doubt, good",
    "without doubt good",
    "without any doubt it is great",
    "Without question, a triumph.",
    # Boosters and dampeners.
    "very good",
    "very bad",
    "extremely good",
    "extremely bad",
    "really really good",
    "It was very very very good.",
    "The movie was incredibly, unbelievably, amazingly good.",
    "The plot is kind of good.",
    "kind of bad",
    "kinda good",
    "sort of good",
    "sort of bad",
    "sorta funny",
    "It was somewhat boring and slightly silly.",
    "barely good, hardly bad",
    "It is almost perfect.",
    "A marginally better sequel.",
    "just enough good moments",
    "The ending is just enough good to recommend.",
    "a little sad",
    "less funny than the first",
    "more fun than expected",
    "most beautiful film",
    "so good",
    "so so bad",
    "totally awesome",
    "utterly horrible",
    "VERY good",
    "The movie was VERY good.",
    "The movie was EXTREMELY bad and very dull.",
    "kind good",
    "the kind of movie that makes you happy",
    "It's kind-of nice and kindof sad and sort-of fun and sortof dull.",
    "a fucking masterpiece",
    "hella good tacos",
    "uber cool",
    "quite good but very very bad",
    # "but" clauses, including equal valences that trip the reference's list.index lookup.
    "good but bad",
    "bad but good",
    "The film was good, but the ending was bad.",
    "The film was bad, but the ending was good.",
    "I loved it but my friend hated it.",
    "Great acting, BUT terrible script.",
    "good good but good good",
    "good but good but good",
    "bad bad but great great",
    "happy, sad, but happy again, and sad again",
    "It was nice, but not nice enough, but still nice.",
    "but",
    "good but",
    "but good",
    "But I really wanted to like it.",
    "Everything was fine but, oddly, I was bored.",
    "good and good and fine but good good fine fine",
    "The cast is clever, but the story is alright.",
    "An awful start, but the ending is merely anxious.",
    "I love the cast, but the plot is only amusing.",
    # ALL CAPS emphasis mixed with lower case.
    "This is GREAT",
    "THIS IS GREAT",
    "This is GREAT!!!",
    "I HATE this movie",
    "I HATE THIS MOVIE",
    "What a TERRIBLE film.",
    "The plot was GOOD but the acting was BAD.",
    "A 10/10 MOVIE, just LOVE it",
    "It was SO good",
    "It was SO GOOD",
    "I think it is OK",
    "ok!",
    "OK!",
    "I AM happy",
    "A HAPPY day",
    "I",
    "I love it",
    "I LOVE it",
    "!!! good",
    "GOOD!!!",
    "COOL 123",
    "ÉNORME SUCCÈS, great film",
    "ǅemal is happy",
    "ΑΠΊΣΤΕΥΤΟ good",
    # Emoji and emoticons.
    "I love it 😍",
    "I love it😍",
    "😍😍😍",
    "😂 that was hilarious",
    "This is bad 😡",
    "😭",
    "Happy 😀 birthday 🎂 to you 🎉",
    "The ending 💔 broke me",
    "👍",
    "👎 not for me",
    "Ok 👌",
    "Flags 🇺🇸 and families 👨‍👩‍👧 and skin 👍🏽",
    "☺️ a smile",
    "☺ a smile",
    "❤️",
    "❤ it",
    "🔥🔥🔥 amazing",
    "💩 movie",
    ":)",
    ":(",
    ":-)",
    ":D",
    ":d",
    "XD",
    "xd",
    ":P",
    "<3",
    "I <3 this film :)",
    "Meh :/",
    "=)",
    ";)",
    "O_o",
    "(:",
    ":'(",
    "lol",
    "LOL that was fun",
    "lmao",
    "omg this is awesome",
    "wtf",
    # Punctuation emphasis.
    "good!",
    "good!!",
    "good!!!",
    "good!!!!",
    "good!!!!!!!!",
    "bad!!!",
    "good?",
    "good??",
    "good???",
    "good????",
    "good???????",
    "bad??",
    "good!?",
    "good?!?!",
    "bad!?!?!?",
    "Really?!",
    "Hello!!!",
    "What???",
    "!!!",
    "???",
    "...",
    "good...",
    "good, bad; fine: great.",
    '"good"',
    "(bad)",
    "[great]",
    "good-ish",
    # Special-case idioms and sentiment-laden idioms (the latter are not scored by 3.3.2).
    "That movie was the bomb.",
    "the bomb",
    "It's the shit",
    "That was the shit, really the shit",
    "He is a bad ass",
    "badass",
    "yeah right",
    "Yeah right, as if that was good.",
    "That was the kiss of death for the franchise.",
    "The dessert was to die for.",
    "A real beating heart of a film.",
    "Meet me at the bus stop.",
    "The bus stop was nice.",
    "She has the upper hand.",
    "It cuts the mustard.",
    "living hand to mouth",
    "I am under the weather",
    "Break a leg!",
    "The company is in the red.",
    "They are cooking with gas now.",
    "you are on the ball today",
    "stop blowing smoke",
    # "no" handling.
    "no",
    "No.",
    "no good",
    "no bad",
    "There is no way this is good.",
    "no problem",
    "No problems at all, great service",
    "no love or hate",
    "no love nor hope",
    "No, it was great.",
    "no no no",
    "I said no to the good offer",
    "no fun",
    "NO fun",
    "There was no joy, no love and no hope.",
    # "least".
    "least good",
    "the least good film",
    "at least good",
    "at the very least good",
    "very least good",
    "It is the least funny movie I have seen.",
    "least",
    "At least it was short, at least the music was nice.",
    # Numbers and URLs.
    "10/10",
    "5 stars",
    "I give it 2 out of 10.",
    "3.5/5 would watch again",
    "Rated 100% fresh!",
    "1 2 3 4 5",
    "http://example.com/great-movie",
    "See https://www.example.org/reviews?id=42&happy=1 for the good review",
    "www.bad.com",
    "mail me at happy@example.com",
    "#blessed #happy",
    "@critic loved it",
    # Unicode, accents, other scripts, curly quotes.
    "C’est magnifique, great film",
    "The naïve hero is lovely",
    "Ich bin überrascht, wie gut das ist",
    "Это отличный фильм",
    "这部电影很好 good",
    "これは素晴らしい映画です",
    "The film’s “best” moments aren’t good",
    "It doesn’t work, it isn’t funny",
    "café good",
    "İstanbul is lovely",
    "ΣΟΦΟΣ good",
    "ﬁne film",
    # Multi-sentence and long, review-like texts.
    "I went in with low expectations. I came out thrilled. The cast is wonderful.",
    "The first act is slow. The second act is worse. The third act is a disaster.",
    "Great. Just great. Another sequel nobody asked for.",
    "I wanted to love this film. I really did. But the pacing is glacial, the dialogue is "
    "wooden, and the twist is obvious from the first ten minutes.",
    "From its opening shot to its final frame, this is a gorgeous, heartfelt and deeply "
    "moving film. The performances are uniformly excellent, the score is haunting, and the "
    "direction is confident without ever being showy. It is, quite simply, one of the best "
    "films of the decade.",
    "This is a boring, lifeless, predictable mess. The jokes fall flat, the action is "
    "incoherent, and the lead actor seems to be sleepwalking through every scene. Avoid it.",
    "The movie has its moments: a few funny lines, a charming supporting cast, and one "
    "genuinely thrilling chase. But it never quite comes together, and by the end I felt "
    "more tired than entertained. Not bad, not good, just fine.",
    "Honestly? I don't know what everyone is complaining about. Sure, it's not perfect, and "
    "the CGI is kind of dodgy in places, but the story is sweet, the kids in the theater "
    "were laughing the whole time, and I left with a smile on my face :)",
    "WOW. Just WOW. I have never seen anything so beautiful in my life!!! The colors, the "
    "music, the ACTING... everything is perfect. 10/10 would watch again 😍😍",
    "What a waste of time and money. The director clearly had no idea what he was doing, "
    "the script is a mess and the ending made no sense at all. Terrible, terrible, terrible.",
    "The cinematography is stunning, but the screenplay is weak; the actors do what they can "
    "with thin material, yet the film is never boring, and its final image is unforgettable.",
    "It's fine. It's okay. It's a movie. Some people will like it, some won't. I didn't hate "
    "it, but I didn't love it either. Kind of forgettable, honestly.",
    "An absolute triumph! A masterpiece of suspense, humor and heart that will leave you "
    "breathless, delighted and deeply grateful that movies like this still get made.",
    "Painfully unfunny, offensively dumb and utterly without charm, this comedy is the kiss "
    "of death for everyone involved. Yeah right, 'the feel-good movie of the year.'",
    "The villain is scary, the hero is brave, the love story is sweet, the jokes are funny, "
    "the fights are exciting, but the runtime is too long and the ending is rushed.",
    "this movie was not good not bad not great not terrible not funny not sad not anything",
    "love love love love love love love love love love love love love love love love love",
    "hate hate hate hate hate hate hate hate hate hate hate hate hate hate hate hate hate",
    "the the the the a a a an an of of of to to good",
]


def openings():
    with open(OPENINGS, encoding="utf-8") as f:
        return [json.loads(line)["opening"] for line in f if line.strip()]


def main():
    got = version("vaderSentiment")
    if got != REFERENCE_VERSION:
        raise SystemExit(f"vaderSentiment {got} is installed; this fixture needs {REFERENCE_VERSION}")
    analyzer = vader_module.SentimentIntensityAnalyzer()
    texts = TEXTS + openings()
    assert len(texts) == len(set(texts)), "duplicate fixture text"
    rows = []
    for text in texts:
        scores = analyzer.polarity_scores(text)
        # score_valence rounds with the builtin `round`; a module-level `round` shadows it.
        vader_module.round = lambda x, ndigits=None: x
        try:
            unrounded = analyzer.polarity_scores(text)["compound"]
        finally:
            del vader_module.round
        assert round(unrounded, 4) == scores["compound"], text
        rows.append({"text": text, "compound": scores["compound"], "compound_unrounded": unrounded,
                     "neg": scores["neg"], "neu": scores["neu"], "pos": scores["pos"]})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} texts to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
