"""VQAv2 accuracy: one hand-computed example per normalisation rule, the leave-one-out formula, the reader."""

import json

import pytest
from PIL import Image

from vlm.eval.datasets import load_vqa
from vlm.eval.vqa_metrics import normalize_answer, process_punctuation, vqa_accuracy


def _ten(*groups: tuple[str, int]) -> list[str]:
    answers = [answer for answer, count in groups for _ in range(count)]
    assert len(answers) == 10
    return answers


@pytest.mark.parametrize("raw, normalized", [
    ("yes!", "yes"),  # a mark not touching a space becomes a space, then splitting drops it
    ("black/white", "black white"),
    ("red, white", "red white"),  # ", " touches a space: the comma is deleted
    ("t - shirt", "t shirt"),
    ("1,000", "1000"),  # a digit,digit comma deletes every mark instead of spacing it
    ("1,000 (approx)", "1000 approx"),
    ("yes.", "yes"),  # periods go ...
    ("3.5", "3.5"),  # ... unless a digit follows
    ("mr. t", "mr t"),
    ("a dog", "dog"),  # articles
    ("The red one", "red 1"),  # lowercase, article, number word
    ("two", "2"),  # number words
    ("none", "0"),
    ("Ten", "10"),
    ("dont", "don't"),  # contractions written without the apostrophe get it back
    ("isnt it", "isn't it"),
    ("Im", "im"),  # the official table's capitalised keys never match the lowercased text
    ("  answer is: Two!\n", "answer is: 2"),  # ':' is not in the official punctuation list
])
def test_normalisation_rules(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_punctuation_step_alone():
    assert process_punctuation("a-b c") == "a b c"
    assert process_punctuation("a - b") == "a  b"
    # the number comma deletes the commas; '.' is not a listed mark, only the period step
    # touches it, and it keeps the one before a digit
    assert process_punctuation("3.5. 2,5") == "3.5 25"


@pytest.mark.parametrize("matches, accuracy", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy(matches, accuracy):
    # k humans agree with the prediction. Leaving out one of them leaves k-1, leaving out another
    # leaves k, so the mean over the ten subsets is (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10.
    answers = _ten(("cat", matches), ("dog", 10 - matches))
    assert vqa_accuracy("cat", answers) == pytest.approx(accuracy)


def test_prediction_is_normalised_before_matching():
    answers = _ten(("2", 3), ("3", 7))
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_accuracy("the two", answers) == pytest.approx(0.9)
    assert vqa_accuracy("2\n", answers) == pytest.approx(0.9)


def test_human_answers_get_only_the_punctuation_step_and_only_when_they_differ():
    # Disagreeing humans: their punctuation is normalised, so "yes." counts as "yes".
    assert vqa_accuracy("yes", _ten(("yes.", 4), ("no", 6))) == 1.0
    # Their number words are not: the prediction "two" becomes "2" and no longer matches "two".
    assert vqa_accuracy("two", _ten(("two", 3), ("three", 7))) == 0.0
    # Ten identical answers are compared verbatim, as in the official script.
    assert vqa_accuracy("yes.", ["yes."] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0


def test_accuracy_needs_answers():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


# ---------------------------------------------------------------------------------------
# Reader

def _vqa_files(tmp_path, *, annotated=(1, 2, 3)):
    for image_id, folder in [(10, "val2014"), (11, "")]:
        path = tmp_path / "images" / folder / f"COCO_val2014_{image_id:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 1, "image_id": 10, "question": "What color is it?"},
        {"question_id": 2, "image_id": 10, "question": "How many?"},
        {"question_id": 3, "image_id": 11, "question": "Is it a cat?"}]}
    answers = {1: _ten(("red", 6), ("blue", 4)), 2: _ten(("2", 5), ("3", 5)), 3: _ten(("yes", 10))}
    annotations = {"annotations": [
        {"question_id": q, "image_id": 10 if q < 3 else 11, "answer_type": "other" if q == 1 else "number",
         "question_type": "what", "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers[q])]}
        for q in annotated]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return tmp_path / "q.json", tmp_path / "a.json", tmp_path / "images"


def test_vqa_reader_joins_questions_and_annotations(tmp_path):
    examples = load_vqa(*_vqa_files(tmp_path))
    assert [e.question_id for e in examples] == [1, 2, 3]
    first = examples[0]
    assert (first.question, first.answer, first.answer_type, len(first.answers)) == ("What color is it?", "red",
                                                                                      "other", 10)
    assert first.image_path == tmp_path / "images" / "val2014" / "COCO_val2014_000000000010.jpg"
    assert examples[2].image_path == tmp_path / "images" / "COCO_val2014_000000000011.jpg"
    assert examples[1].answer == "2"  # a tie goes to the answer given first


def test_vqa_reader_errors_name_the_problem(tmp_path):
    questions, annotations, images = _vqa_files(tmp_path, annotated=(1, 3))
    with pytest.raises(ValueError, match=r"question 2 has no annotation in .*a\.json"):
        load_vqa(questions, annotations, images)
    questions, annotations, images = _vqa_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="no image file for image 10"):
        load_vqa(questions, annotations, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no 'questions' field"):
        load_vqa(annotations, annotations, images)
