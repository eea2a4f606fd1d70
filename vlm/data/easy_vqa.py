"""easy-VQA (pip install easy-vqa; Victor Zhou, MIT licence): 64x64 pictures of one shape with yes/no, shape
and colour questions, 13 answers. The package holds the questions and the pictures; this reads one split."""

SPLITS = ("train", "test")


def read_easy_vqa(split: str) -> list[tuple[int, str, str, str]]:
    """(image id, question, answer, picture path) for every question of `split`, in the package's order."""
    if split not in SPLITS:
        raise ValueError(f"easy-VQA's splits are {' and '.join(SPLITS)}, not {split!r}")
    import easy_vqa as data  # here: the package is only needed when easy-VQA is read

    questions, answers, image_ids = data.get_train_questions() if split == "train" else data.get_test_questions()
    paths = data.get_train_image_paths() if split == "train" else data.get_test_image_paths()
    return [(image_id, question, answer, paths[image_id]) for question, answer, image_id in zip(questions, answers, image_ids)]
