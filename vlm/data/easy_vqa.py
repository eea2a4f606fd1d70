"""easy-VQA (pip install easy-vqa; Victor Zhou, MIT licence): 64x64 pictures of one shape with yes/no, shape
and colour questions, 13 answers. The package holds the questions and the pictures; this reads one split and
tells which yes/no questions name what the picture shows."""

SPLITS = ("train", "test")


def read_easy_vqa(split: str) -> list[tuple[int, str, str, str]]:
    """(image id, question, answer, picture path) for every question of `split`, in the package's order."""
    if split not in SPLITS:
        raise ValueError(f"easy-VQA's splits are {' and '.join(SPLITS)}, not {split!r}")
    import easy_vqa as data  # here: the package is only needed when easy-VQA is read

    questions, answers, image_ids = data.get_train_questions() if split == "train" else data.get_test_questions()
    paths = data.get_train_image_paths() if split == "train" else data.get_test_image_paths()
    return [(image_id, question, answer, paths[image_id]) for question, answer, image_id in zip(questions, answers, image_ids)]


def names_what_is_shown(question: str, answer: str) -> bool:
    """Whether a yes/no question of easy-VQA names what the picture shows: "yes" to "is there a red shape?",
    "no" to "is there not a red shape?" or "is no red shape present?"."""
    negated = any(word in ("not", "no") for word in question.rstrip("?").split())
    return (answer == "yes") != negated


def balance_presence(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(question, answer, picture) `items` with their yes/no questions about shown things repeated (in order,
    cyclically) until they are as many as those about things not shown: easy-VQA asks about a missing thing
    4.5 times as often, so "missing" is right 82% of the time without looking at the picture."""
    yes_no = [item for item in items if item[1] in ("yes", "no")]
    shown = [item for item in yes_no if names_what_is_shown(item[0], item[1])]
    missing = len(yes_no) - 2 * len(shown)  # repeats needed: not shown minus shown
    if not shown or missing <= 0:
        return items
    return items + [shown[i % len(shown)] for i in range(missing)]
