"""Text similarity between generations and the teacher's answers, on a 0..1 scale.

- chrF is corpus-level, as sacreBLEU's ``corpus_score`` with its defaults: the character
  n-gram counts of every (generation, reference) pair are summed first and one F-score is
  computed from the sums. It is not the mean of per-pair scores (``chrf_sentence_mean``
  computes that one, for comparison). The runtime reports ``chrf_corpus`` as ``chrf``.
- ROUGE-L is the mean over pairs of the per-pair ROUGE-L F1 on normalised words (see
  ``words``).
"""

import unicodedata
from collections import Counter

CHRF_ORDER = 6
CHRF_BETA = 2.0


def _char_ngrams(text, n):
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf_statistics(hypothesis, reference, order=CHRF_ORDER):
    """Per order n = 1..order: [hypothesis n-grams, reference n-grams, matched n-grams], with
    all whitespace removed and case kept (sacreBLEU's chrF defaults)."""
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    stats = []
    for n in range(1, order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        stats.append([sum(h.values()), sum(r.values()), sum((h & r).values())])
    return stats


def chrf_score(stats, beta=CHRF_BETA):
    """chrF from summed statistics: precision and recall are averaged over the orders for which
    both sides have n-grams, then combined as F-beta (beta 2: recall weighs more). 0 when no
    order has n-grams on both sides."""
    precision = recall = 0.0
    orders = 0
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            precision += n_match / n_hyp
            recall += n_match / n_ref
            orders += 1
    if orders == 0:
        return 0.0
    precision, recall = precision / orders, recall / orders
    if precision + recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def chrf_corpus(hypotheses, references):
    """Corpus chrF of paired lists (sacreBLEU's corpus chrF, divided by 100)."""
    if len(hypotheses) != len(references):
        raise ValueError("chrf_corpus: hypotheses and references differ in length")
    total = [[0, 0, 0] for _ in range(CHRF_ORDER)]
    for h, r in zip(hypotheses, references):
        for acc, s in zip(total, chrf_statistics(h, r)):
            for k in range(3):
                acc[k] += s[k]
    return chrf_score(total)


def chrf_sentence(hypothesis, reference):
    """chrF of one pair (sacreBLEU's sentence chrF, divided by 100)."""
    return chrf_score(chrf_statistics(hypothesis, reference))


def chrf_sentence_mean(hypotheses, references):
    """The mean of per-pair chrF: each pair weighs the same whatever its length. Not what the
    runtime reports; kept to make the difference from ``chrf_corpus`` explicit."""
    if len(hypotheses) != len(references):
        raise ValueError("chrf_sentence_mean: hypotheses and references differ in length")
    if not hypotheses:
        return 0.0
    return sum(chrf_sentence(h, r) for h, r in zip(hypotheses, references)) / len(hypotheses)


def _own_word(ch):
    """Han ideographs and kana: scripts written without spaces, one word per character."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0x3400 <= o <= 0x4DBF
            or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F)


def words(text):
    """ROUGE-L's tokens: the text NFKC-normalised and case-folded, split into maximal runs of
    letters, combining marks and digits (any script); everything else (punctuation, symbols,
    whitespace, underscores) only separates words. Han ideographs and kana are one word each."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    out, cur = [], []
    for ch in text:
        if _own_word(ch):
            if cur:
                out.append("".join(cur))
                cur = []
            out.append(ch)
        elif unicodedata.category(ch)[0] in "LMN":
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def rouge_l(hypothesis, reference):
    """ROUGE-L F1 (beta 1) of one pair: the longest common subsequence of ``words``. 1.0 when
    both sides have no words, 0.0 when only one side has none."""
    h, r = words(hypothesis), words(reference)
    if not h and not r:
        return 1.0
    if not h or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for a in h:
        cur = [0]
        for j, b in enumerate(r, 1):
            cur.append(prev[j - 1] + 1 if a == b else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)
