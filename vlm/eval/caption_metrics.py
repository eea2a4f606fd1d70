"""COCO caption metrics without Java: PTB tokenisation, BLEU-1..4, ROUGE-L and CIDEr-D.

Every number here is the one the COCO caption evaluation code (`pycocoevalcap`, the
`coco-caption` repository) computes on the same tokens:

- `ptb_tokenize` mimics its Java `PTBTokenizer` (Stanford CoreNLP 3.4.1, `-preserveLines
  -lowerCase`) followed by its punctuation filter.
- `bleu` is its `Bleu(4)`: clipped n-gram counts, "closest" reference length, and its
  smoothing constants (1e-15, 1e-9).
- `rouge_l` is its `Rouge`: LCS F-measure with beta 1.2, best precision and recall over refs.
- `cider_d` is its `Cider`, which is CIDEr-D: tf-idf n-grams (n = 1..4) with document
  frequencies taken from the references being evaluated, candidate counts clipped by the
  reference counts, a Gaussian length penalty with sigma 6, averaged over references and
  scaled by 10.

Scores are on pycocoevalcap's scale (CIDEr-D ~ 0..10, BLEU in 0..1); papers print them x100.
"""

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------
# Tokenisation

# pycocoevalcap drops these tokens after the Java tokenizer has lowercased everything, so
# the uppercase bracket names never match and "-lrb-", "-rrb-" etc. stay in the text.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# Words whose trailing period PTB keeps (read off the 3.4.1 jar): any case, capitalised only
# (they are also common words), and only before a number ("No. 5").
_ABBREVIATIONS = frozenset("""
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
    ala ariz calif colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev okla penn
    tenn va vt wis wisc wyo inc co cos corp pty ptys ltd plc rt bancorp bhd assn univ intl sys dept
    mfg mtg ph tel est ext sq ft jr sr bros blvd rd esq etc al seq bldg mr mrs ms dr drs prof profs
    sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt cpl pvt capt st ste ave
    pres lieut hon brig cmdr comdr pfc spc supt supts det mt adj adv asst assoc ens insp mlle mme
    msgr sfc vs v alex wm jos cie cf treas invt elec natl""".split())
_CAPITALISED_ABBREVIATIONS = frozenset("az ark del ill la mass miss ore pa tex wash".split())
_NUMBER_ABBREVIATIONS = frozenset("no nos prop ca fig figs art pp op".split())

# A lone initial ("vitamin C.") loses its period when one of these words follows.
_SENTENCE_STARTERS = """About According Additionally After An A As At But Earlier He Her Here However
    If In It Last Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Then There
    These They This We When While What Yet You""".split()
_STARTS_SENTENCE = re.compile(r"\s+(?:%s)(?:\s|$)" % "|".join(
    word[0] + "(?i:" + re.escape(word[1:]) + ")" for word in _SENTENCE_STARTERS))

# Unicode quotes, dashes, ellipses and currencies become the ASCII forms PTB normalises them to.
_TO_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"',
                           "\u00bb": '"', "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ",
                           "\u2026": " ... ", "\u00a3": "#", "\u20ac": "$", "\u00a4": "$",
                           "\u00a2": " cents "})
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_ALNUM = r"[^\W_]"
_LETTER = r"[^\W\d_]"
_UNIT = rf"(?:\d+(?:[.,:]\d+)+|{_ALNUM}+)"  # a number with separators, or a run of letters/digits
_SPLIT_AFTER_3 = "|".join(f"{w[:3]}(?={w[3:]}(?!{_ALNUM}))" for w in ("cannot", "gonna", "gotta",
                                                                      "lemme", "gimme", "wanna"))
# One token at a time; alternatives are tried in order, which reproduces which PTB rule wins.
_TOKEN = re.compile(rf"""
 (?P<url>(?:https?|ftp)://[^\s"<>|(){{}}\[\]]*[^\s"'<>|.!?(){{}},;:&\[\]-])
|(?P<email>[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9])
|(?P<handle>@[A-Za-z_][A-Za-z0-9_]*|\#{_LETTER}(?:\w*{_ALNUM})?)
|(?P<fraction>(?<!{_ALNUM})\d{{1,4}}\ \d{{1,4}}/\d{{1,4}}(?![\w/]))       # 3 1/2
|(?P<split>(?i:'t(?=(?:is|was)(?!{_ALNUM}))|(?<!{_ALNUM})(?:{_SPLIT_AFTER_3})))  # 'tis, gonna
|(?P<apostrophe_word>(?i:'(?:em|till?|cause|n')|'[2-9]0s\b|y'(?={_LETTER}))
    |'\d\d(?!\S)                                                           # '99
    |{_LETTER}+[aeiouyAEIOUY]'(?!(?i:s|m|d|re|ve|ll)(?!{_LETTER}))[aeiouA-Z]{_LETTER}*  # ma'am
    |[A-HJ-XZn]'{_LETTER}{{2,}})                                           # O'Neil
|(?P<before_nt>[A-Za-z]*[A-MO-Za-mo-z](?=(?i:n't)))                        # do|n't, ca|n't
|(?P<nt>(?i:n't))
|(?P<clitic>(?i:'(?:s|m|d|re|ve|ll))(?!{_ALNUM}))                          # 's 're 've 'll 'd 'm
|(?P<amp_word>[A-Z]+(?:&[A-Z]+)+)                                          # AT&T
|(?P<currency>[A-Z]*\$)
|(?P<number>(?<!{_ALNUM})(?:[-+][.,:]?|[.,:])\d+(?:[.,:]\d+)*)             # -5 .5 +1,000
|(?P<word>(?:[dDoOlL]'(?={_ALNUM}))?{_UNIT}(?:[-/]{_UNIT}|\.{_LETTER}{_ALNUM}*)*)  # x-ray u.s
|(?P<amp>&amp;)
|(?P<bracket>[()\[\]{{}}])
|(?P<sgml></?[A-Za-z][^>\s]*>)
|(?P<dashes>-+)
|(?P<dots>\.{{3,}})
|(?P<run>''|``|[?!]+|\#+|@+|_+|\*+|<<|>>)
|(?P<other>\S)
""", re.VERBOSE)


def _keeps_period(word: str, rest: str) -> bool:
    """Whether PTB keeps the period after `word` as part of it; `rest` is the text after the period."""
    if rest[:1] in (",", ";", ":"):
        return True
    if re.fullmatch(rf"{_LETTER}(?:\.{_LETTER})*", word):  # an initial or acronym: c. u.s.
        # The caption's end counts as a sentence start: COCO captions start with "A", "The" ...
        return len(word) > 1 or not (rest.strip() == "" or _STARTS_SENTENCE.match(rest))
    lower = word.lower()
    if lower in _ABBREVIATIONS or (lower in _CAPITALISED_ABBREVIATIONS and word[0].isupper()):
        return True
    return lower in _NUMBER_ABBREVIATIONS and re.match(r"\s*\d", rest) is not None


def ptb_tokenize(caption: str) -> str:
    """Tokenise a caption the way pycocoevalcap's PTBTokenizer does, without Java.

    Splits off punctuation, clitics ("dog 's", "is n't") and assimilations ("gon na"),
    lowercases, drops pycocoevalcap's punctuation list, and joins the tokens with spaces.
    """
    text = caption.replace("\n", " ").translate(_TO_ASCII)
    tokens, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        match = _TOKEN.match(text, i)
        kind, token, i = match.lastgroup, match.group(), match.end()
        if kind == "word" and text[i:i + 1] == "." and _keeps_period(token, text[i + 1:]):
            token, i = token + ".", i + 1
        elif kind == "fraction":
            token = token.replace(" ", "\u00a0")  # PTB keeps "3 1/2" as one token
        elif kind == "amp":
            token = "&"
        elif kind == "bracket":
            token = _BRACKETS[token]
        elif kind == "dashes" and 2 <= len(token) <= 4:
            token = "--"
        elif kind == "dots":
            token = "..."
        elif token == '"':
            token = "''"
        tokens.append(token.lower())
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


# ---------------------------------------------------------------------------------------
# Metrics on tokenised captions: references[key] is a list of strings, candidates[key] one string.

def _check(references: Mapping, candidates: Mapping) -> list:
    if references.keys() != candidates.keys():
        missing = set(references) ^ set(candidates)
        raise ValueError(f"references and candidates must cover the same images; "
                         f"{len(missing)} differ, e.g. {sorted(map(str, missing))[:5]}")
    empty = [key for key, refs in references.items() if len(refs) == 0]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference captions, e.g. {empty[:5]}")
    return list(references)


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
         *, n: int = 4) -> tuple[list[float], dict[Hashable, list[float]]]:
    """Corpus BLEU-1..n and per-image BLEU-1..n, as pycocoevalcap's Bleu(n) ("closest" ref length)."""
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's guards against 0/0; they decide near-zero scores
    keys = _check(references, candidates)
    total_test = total_ref = 0
    total_guess, total_correct = [0] * n, [0] * n
    per_image = {}
    for key in keys:
        words = candidates[key].split()
        refs = [ref.split() for ref in references[key]]
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= _ngrams(ref, n)  # | keeps the maximum count of each n-gram
        test_len = len(words)
        ref_len = min((abs(len(ref) - test_len), len(ref)) for ref in refs)[1]
        guess = [max(0, test_len - k) for k in range(n)]
        correct = [0] * n
        for gram, count in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_ref_counts[gram], count)
        per_image[key] = _bleu_scores(correct, guess, test_len, ref_len, tiny, small)
        total_test, total_ref = total_test + test_len, total_ref + ref_len
        total_guess = [a + b for a, b in zip(total_guess, guess)]
        total_correct = [a + b for a, b in zip(total_correct, correct)]
    return _bleu_scores(total_correct, total_guess, total_test, total_ref, tiny, small), per_image


def _bleu_scores(correct, guess, test_len, ref_len, tiny, small) -> list[float]:
    scores, product = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess)):
        product *= (c + tiny) / (g + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:  # brevity penalty
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            previous_diagonal, row[j] = row[j], (previous_diagonal + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
            *, beta: float = 1.2) -> tuple[float, dict[Hashable, float]]:
    """Mean and per-image ROUGE-L, as pycocoevalcap's Rouge."""
    per_image = {}
    for key in _check(references, candidates):
        words = candidates[key].split()
        precision = recall = 0.0
        for ref in references[key]:
            ref_words = ref.split()
            lcs = _lcs_length(ref_words, words)
            precision = max(precision, lcs / len(words) if words else 0.0)
            recall = max(recall, lcs / len(ref_words) if ref_words else 0.0)
        per_image[key] = ((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
                          if precision and recall else 0.0)
    return sum(per_image.values()) / len(per_image), per_image


def cider_d(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
            *, n: int = 4, sigma: float = 6.0) -> tuple[float, dict[Hashable, float]]:
    """Mean and per-image CIDEr-D, as pycocoevalcap's Cider.

    Document frequencies come from the references of the images scored here, so a per-image
    score depends on the whole set, exactly as in the reference code.
    """
    keys = _check(references, candidates)
    ref_counts = {key: [_ngrams(ref.split(), n) for ref in references[key]] for key in keys}
    document_frequency = Counter(gram for key in keys for gram in set().union(*ref_counts[key]))
    log_num_images = math.log(len(keys))

    def tfidf(counts: Counter):
        vectors = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vectors[len(gram) - 1][gram] = tf * (log_num_images - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
        # The reference code measures length as the number of bigrams (words - 1 unless empty).
        return vectors, norms, sum(tf for gram, tf in counts.items() if len(gram) == 2)

    per_image = {}
    for key in keys:
        vec, norm, length = tfidf(_ngrams(candidates[key].split(), n))
        total = 0.0
        for counts in ref_counts[key]:
            ref_vec, ref_norm, ref_length = tfidf(counts)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                # clipping: a candidate n-gram earns at most its weight in the reference
                dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and ref_norm[k] != 0:
                    dot /= norm[k] * ref_norm[k]
                total += dot * penalty
        per_image[key] = total / n / len(ref_counts[key]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image


@dataclass
class CaptionScores:
    """Corpus scores and per-image scores, keyed by metric name ("BLEU-1".."BLEU-4", "ROUGE-L", "CIDEr-D")."""
    corpus: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]


def score_captions(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
                   *, tokenize: bool = True) -> CaptionScores:
    """BLEU-1..4, ROUGE-L and CIDEr-D of one candidate per image against its references.

    With tokenize=True the raw captions go through `ptb_tokenize` first, as COCOEvalCap does.
    """
    if tokenize:
        references = {key: [ptb_tokenize(ref) for ref in refs] for key, refs in references.items()}
        candidates = {key: ptb_tokenize(caption) for key, caption in candidates.items()}
    bleu_corpus, bleu_images = bleu(references, candidates)
    rouge_corpus, rouge_images = rouge_l(references, candidates)
    cider_corpus, cider_images = cider_d(references, candidates)
    corpus = {f"BLEU-{k + 1}": score for k, score in enumerate(bleu_corpus)}
    corpus |= {"ROUGE-L": rouge_corpus, "CIDEr-D": cider_corpus}
    per_image = {key: {f"BLEU-{k + 1}": score for k, score in enumerate(bleu_images[key])}
                 | {"ROUGE-L": rouge_images[key], "CIDEr-D": cider_images[key]} for key in bleu_images}
    return CaptionScores(corpus=corpus, per_image=per_image)
