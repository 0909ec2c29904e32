"""The lesson table: every page of the course, in order, with its title, icon, section and blurb.

The one place the course is written down. The entry point builds the navigation from it, the
Welcome page its path, each page its title (:func:`title`) and the link to the next lesson
(:func:`next_step`). Adding a lesson is one row here and one page file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Lesson:
    path: str  # the page file, relative to the repository root
    title: str
    icon: str
    section: str  # the navigation group
    blurb: str = ""  # one line on the Welcome page; empty = not listed there
    url: str | None = None  # the URL path when it differs from the file name


WELCOME = "dashboard/welcome.py"

LESSONS = [
    Lesson(WELCOME, "Welcome", ":material/waving_hand:", "Start"),
    Lesson("dashboard/load_model.py", "1 · Load a model", ":material/download:", "The six steps",
           "Look inside a real model: layers, parameters, tokens, chat template, a first answer."),
    Lesson("dashboard/prepare_data.py", "2 · Prepare data", ":material/table_view:", "The six steps",
           "Read a data set, check it, and see exactly which tokens the model is trained on."),
    Lesson("dashboard/set_up_training.py", "3 · Set up training", ":material/tune:", "The six steps",
           "Every hyperparameter explained, the learning-rate schedule, the memory it will need."),
    Lesson("dashboard/fine_tune.py", "4 · Fine-tune", ":material/model_training:", "The six steps",
           "Start training and watch the loss fall, live."),
    # 4b: beside the six steps, not between them: Fine-tune still leads on to Generate (see NEXT)
    Lesson("dashboard/experiments.py", "4b · Experiments", ":material/science:", "The six steps",
           "Vary one setting: three learning rates side by side, their curves overlaid, a verdict in words."),
    Lesson("dashboard/generate.py", "5 · Generate", ":material/chat:", "The six steps",
           "Talk to the tuned model; compare it with the 'before' answer; try sampling strategies."),
    Lesson("dashboard/evaluate.py", "6 · Evaluate", ":material/fact_check:", "The six steps",
           "Measure base vs tuned on held-out examples."),
    Lesson("dashboard/export.py", "Use your model elsewhere", ":material/ios_share:", "The six steps"),
    Lesson("dashboard/memory.py", "7 · Memory", ":material/memory:", "Go deeper",
           "Where memory goes in training, and what LoRA, checkpointing and precision save."),
    # plugin_shelf.py, not plugins.py: a page run on its own would shadow the `plugins` package
    Lesson("dashboard/plugin_shelf.py", "8 · Plugins", ":material/extension:", "Go deeper",
           "Data formats, samplers and evaluators are plugins; add your own.", url="plugins"),
    Lesson("dashboard/questions.py", "Questions & glossary", ":material/quiz:", "Go deeper",
           "Can I run this on my laptop? How long, how much data, what if memory runs out? With measured answers."),
]

# The lesson each page leads to, when it is not simply the next row (Export is reached from Evaluate's page).
NEXT = {"dashboard/evaluate.py": "dashboard/memory.py", "dashboard/fine_tune.py": "dashboard/generate.py"}
NEXT_BLURB = {"dashboard/evaluate.py": "where training memory goes"}


def lesson(page_file: str) -> Lesson:
    """The row of a page, from its ``__file__`` or its path."""
    name = PurePosixPath(str(page_file).replace("\\", "/")).name
    for row in LESSONS:
        if PurePosixPath(row.path).name == name:
            return row
    raise KeyError(f"{page_file} is not in the lesson table (dashboard/course.py)")


def following(page_file: str) -> Lesson | None:
    """The lesson a page's "Next" link goes to: the next numbered lesson, or None at the end."""
    row = lesson(page_file)
    if row.path in NEXT:
        return lesson(NEXT[row.path])
    numbered = [r for r in LESSONS if r.title[:1].isdigit()]
    if row not in numbered:
        return None
    i = numbered.index(row)
    return numbered[i + 1] if i + 1 < len(numbered) else None


def next_label(page_file: str) -> str | None:
    """``"Next: 5 · Generate"`` (with a few words where the table has them), or None."""
    nxt = following(page_file)
    if nxt is None:
        return None
    extra = NEXT_BLURB.get(lesson(page_file).path)
    return f"Next: {nxt.title}" + (f" — {extra}" if extra else "")
