import pytest

from understudy_trainer import metrics


def test_chrf_statistics_count_character_ngrams_without_whitespace():
    assert metrics.chrf_statistics("a b", "abd", order=3) == [[2, 3, 2], [1, 2, 1], [0, 1, 0]]


@pytest.mark.parametrize("hyp,ref,want", [
    ("ab", "ab", 1.0),
    ("a b", "ab", 1.0),  # whitespace is removed
    ("A", "a", 0.0),  # case is kept
    # n=1: 2 of 3 match, n=2: 1 of 2, n=3: 0 of 1 -> P = R = (2/3 + 1/2 + 0) / 3
    ("abc", "abd", 7 / 18),
    # n=1 only (no bigram in the hypothesis): P = 1, R = 1/2 -> F2 = 5 * 1/2 / (4 + 1/2)
    ("a", "ab", 5 / 9),
    ("", "ab", 0.0),
    ("", "", 0.0),  # no n-gram on either side: sacreBLEU scores 0
])
def test_chrf_sentence_hand_computed(hyp, ref, want):
    assert metrics.chrf_sentence(hyp, ref) == pytest.approx(want)


def test_chrf_is_corpus_level_not_a_mean_of_sentences():
    hyps, refs = ["a", "xyz"], ["ab", "xyz"]
    # Sentences: 5/9 and 1, mean 7/9. Corpus: summed counts n=1 [4 hyp, 5 ref, 4 match],
    # n=2 [2, 3, 2], n=3 [1, 1, 1] -> P = 1, R = (4/5 + 2/3 + 1) / 3 = 37/45,
    # F2 = 5 R / (4 + R) = 185/217.
    assert metrics.chrf_sentence_mean(hyps, refs) == pytest.approx(7 / 9)
    assert metrics.chrf_corpus(hyps, refs) == pytest.approx(185 / 217)
    # A pair whose sides share nothing still counts: its n-grams enter the sums.
    assert metrics.chrf_corpus(["ab", "a"], ["ab", "b"]) == pytest.approx(5 / 6)
    assert metrics.chrf_sentence_mean(["ab", "a"], ["ab", "b"]) == pytest.approx(0.5)


def test_chrf_matches_sacrebleu_published_scores():
    # The scores sacreBLEU's CHRF() prints for the examples of the Hugging Face chrF metric card.
    assert metrics.chrf_corpus(
        ["The relationship between Obama and Netanyahu is not exactly friendly."],
        ["The ties between Obama and Netanyahu are not particularly friendly."],
    ) == pytest.approx(0.61576379378113785)
    assert metrics.chrf_corpus(
        ["The relationship between cats and dogs is not exactly friendly.",
         "a good bookshop is just a genteel black hole that knows how to read."],
        ["The relationship between dogs and cats is not exactly friendly.",
         "A good bookshop is just a genteel Black Hole that knows how to read."],
    ) == pytest.approx(0.8464214891738334)


def test_chrf_corpus_rejects_unpaired_lists():
    with pytest.raises(ValueError):
        metrics.chrf_corpus(["a"], [])
    assert metrics.chrf_corpus([], []) == 0.0


@pytest.mark.parametrize("text,want", [
    ("Hello, World!", ["hello", "world"]),
    ("don't stop-now", ["don", "t", "stop", "now"]),
    ("snake_case—dash", ["snake", "case", "dash"]),
    ("café", ["café"]),
    ("cafe\u0301", ["café"]),  # decomposed accent: NFKC composes it
    ("ÇA VA?", ["ça", "va"]),
    ("STRASSE straße", ["strasse", "strasse"]),  # case folding, not only lower-casing
    ("ＡＢＣ１２３", ["abc123"]),  # full-width forms
    ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),  # combining vowel signs stay inside the word
    ("我爱你。", ["我", "爱", "你"]),  # Han: one word per character
    ("3.14 + 2", ["3", "14", "2"]),
    ("... !!", []),
])
def test_words_normalise(text, want):
    assert metrics.words(text) == want


@pytest.mark.parametrize("hyp,ref,want", [
    ("Hello, world.", "hello world", 1.0),  # punctuation and case do not count
    ("the cat sat on the mat", "the cat on a mat", 16 / 22),  # LCS 4: P 4/6, R 4/5
    ("我爱你", "我爱他", 2 / 3),
    ("नमस्ते", "नमस्ते!", 1.0),
    ("...", "", 1.0),  # no words on either side
    ("", "word", 0.0),
    ("word", "?", 0.0),
])
def test_rouge_l_on_normalised_words(hyp, ref, want):
    assert metrics.rouge_l(hyp, ref) == pytest.approx(want)
