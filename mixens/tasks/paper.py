"""The paper's zero-shot evaluation protocol: prompts, gold answers and answer extraction.

Fu et al. (2026) evaluate every model and ensemble zero-shot: the prompt asks for step-by-step
reasoning with the final answer in \\boxed{}, the model decodes greedily, and the answer is pulled
out of the generation and compared with the gold answer by exact match. The task YAMLs next to this
file point at these functions with `!function paper.<name>`.

lm-eval imports this file by its path (module name = the path), not as `mixens.tasks.paper`, so it
must stay self-contained: no relative imports.
"""

from __future__ import annotations

import re

from lm_eval.api.filter import Filter

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

# What a BIG-Bench Hard answer looks like, per subtask (read off each subtask's targets):
#   option         "(A)".."(R)"; the letters offered are the "(X) ..." lines of the input
#   true_false     True / False
#   yes_no         Yes / No (sports_understanding's targets are lower case; the metric ignores case)
#   valid_invalid  valid / invalid
#   number         an integer, possibly negative
#   free_form      a string compared whole: sorted words, closing brackets
BBH_ANSWER_TYPES = {
    "boolean_expressions": "true_false",
    "causal_judgement": "yes_no",
    "date_understanding": "option",
    "disambiguation_qa": "option",
    "dyck_languages": "free_form",
    "formal_fallacies": "valid_invalid",
    "geometric_shapes": "option",
    "hyperbaton": "option",
    "logical_deduction_five_objects": "option",
    "logical_deduction_seven_objects": "option",
    "logical_deduction_three_objects": "option",
    "movie_recommendation": "option",
    "multistep_arithmetic_two": "number",
    "navigate": "yes_no",
    "object_counting": "number",
    "penguins_in_a_table": "option",
    "reasoning_about_colored_objects": "option",
    "ruin_names": "option",
    "salient_translation_error_detection": "option",
    "snarks": "option",
    "sports_understanding": "yes_no",
    "temporal_sequences": "option",
    "tracking_shuffled_objects_five_objects": "option",
    "tracking_shuffled_objects_seven_objects": "option",
    "tracking_shuffled_objects_three_objects": "option",
    "web_of_lies": "yes_no",
    "word_sorting": "free_form",
}

# ----------------------------------------------------------------------------- prompts

# One frame for every task, so the stop string "Question:" ends a base model that starts a new one.
PROMPT_FRAME = "{instruction}\n\nQuestion: {question}\nAnswer: Let's think step by step."

GSM8K_INSTRUCTION = (
    "Solve the following math problem. Reason step by step, and put the final answer (a number only) within \\boxed{}."
)
CHOICE_INSTRUCTION = (
    "Answer the following multiple-choice question{about}. Reason step by step, "
    "and put the label of the correct option ({labels}) within \\boxed{{}}."
)
BBH_INSTRUCTION = "Answer the following question. Reason step by step, and put the final answer within \\boxed{}."


def _frame(instruction: str, question: str) -> str:
    return PROMPT_FRAME.format(instruction=instruction, question=question.strip())


def _choice_prompt(question: str, labels: list[str], texts: list[str], about: str = "") -> str:
    spoken = ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else "".join(labels)
    instruction = CHOICE_INSTRUCTION.format(about=about, labels=spoken)
    options = "\n".join(f"{label}. {text}" for label, text in zip(labels, texts))
    return _frame(instruction, f"{question.strip()}\n{options}")


def gsm8k_doc_to_text(doc: dict) -> str:
    return _frame(GSM8K_INSTRUCTION, doc["question"])


def gsm8k_doc_to_target(doc: dict) -> str:
    # The gold number follows "#### " at the end of the worked solution.
    return normalize_number(doc["answer"].split("####")[-1])


def mmlu_doc_to_text(doc: dict) -> str:
    labels, texts = choice_options(doc)
    subject = doc.get("subject", "")
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    return _choice_prompt(doc["question"], labels, texts, about)


def mmlu_doc_to_target(doc: dict) -> str:
    return LETTERS[int(doc["answer"])]


def arc_doc_to_text(doc: dict) -> str:
    labels, texts = choice_options(doc)
    return _choice_prompt(doc["question"], labels, texts)


def arc_doc_to_target(doc: dict) -> str:
    # answerKey is a letter or, for some questions, a digit; the prompt shows the same labels.
    return str(doc["answerKey"]).strip()


def bbh_doc_to_text(doc: dict) -> str:
    return _frame(BBH_INSTRUCTION, doc["input"])


def bbh_doc_to_target(doc: dict) -> str:
    return doc["target"].strip()


def choice_options(doc: dict) -> tuple[list[str], list[str]]:
    """Labels and texts of a document's options, for the three schemas the tasks use."""
    choices = doc.get("choices")
    if isinstance(choices, dict):  # ARC: {"text": [...], "label": [...]}, labels A-E or 1-5
        return [str(label).strip() for label in choices["label"]], list(choices["text"])
    if isinstance(choices, (list, tuple)):  # MMLU: option texts, lettered in order
        return list(LETTERS[: len(choices)]), list(choices)
    if "input" in doc:  # BBH: "(A) text" lines inside the input
        found = re.findall(r"^\(([A-Z])\)\s*(.*?)\s*$", doc["input"], flags=re.MULTILINE)
        if found:
            return [label for label, _ in found], [text for _, text in found]
    return list(LETTERS[:5]), []


# ----------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A minus sign right after a digit or ")" is subtraction ("10-3"), not a sign.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\d(?:[\d,]*\d)?(?:\.\d+)?")
_CLEAN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last closed \\boxed{...}, nested braces included; None when there is none."""
    found = None
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "\\":  # \{ and \} are literal braces (dyck answers), not grouping
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # an unclosed box (generation cut off) does not count
            found = text[match.end() : i - 1]
    return found


def _unlatex(text: str) -> str:
    text = _LATEX_WRAPPER.sub(r"\1", text)
    return text.replace("\\$", "$").replace("\\%", "%").replace("\\{", "{").replace("\\}", "}")


def normalize_number(text: str) -> str:
    """'1,234' -> '1234', '$18.' -> '18', '18.00' -> '18': one spelling per value."""
    text = text.strip().replace(",", "").replace("\u2212", "-")
    text = text.strip().strip("$").rstrip(".").strip().strip("$").strip()
    if re.fullmatch(r"-?\d+\.\d*", text):
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def extract_number(text: str) -> str:
    """The last \\boxed{} content as a number, else the last number in the text; '' if none."""
    boxed = last_boxed(text)
    if boxed is not None:
        whole = normalize_number(_unlatex(boxed))
        if _CLEAN_NUMBER.fullmatch(whole):
            return whole
        numbers = _NUMBER.findall(_unlatex(boxed))  # "18 \text{ dollars}", "3 + 4 = 7"
        return normalize_number(numbers[-1]) if numbers else whole
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else ""


def _label_pattern(labels: list[str]) -> str:
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


def extract_choice(text: str, labels: list[str], texts: list[str] = ()) -> str:
    """The option label a generation settles on; '' if none of the labels can be found.

    In order: the label inside the last \\boxed{} ("C", "(C)", "C. text", or the option's own
    text), then the last "(X)", then the last label standing alone as a word.
    """
    if not labels:
        return ""
    alternatives = _label_pattern(labels)
    boxed = last_boxed(text)
    if boxed is not None:
        content = _unlatex(boxed).strip().strip("*`'\" ")
        content = re.sub(r"^(?:option|answer|choice)\s*:?\s*", "", content, flags=re.IGNORECASE)
        lead = re.match(rf"\(?\s*({alternatives})\s*\)?(?![A-Za-z0-9])", content)
        if lead:
            return lead.group(1)
        wanted = " ".join(content.lower().rstrip(".").split())
        for label, option in zip(labels, texts):
            if wanted and wanted == " ".join(str(option).lower().rstrip(".").split()):
                return label
    parenthesised = re.findall(rf"\(\s*({alternatives})\s*\)", text)
    if parenthesised:
        return parenthesised[-1]
    alone = re.findall(rf"(?<![A-Za-z0-9_])({alternatives})(?![A-Za-z0-9_])", text)
    return alone[-1] if alone else ""


_WORD_ANSWERS = {
    "true_false": ("True", "False"),
    "yes_no": ("Yes", "No"),
    "valid_invalid": ("valid", "invalid"),
}


def extract_word(text: str, words: tuple[str, ...]) -> str:
    """The last of `words` (any case) in the last \\boxed{}, else in the text; in canonical case."""
    canonical = {word.lower(): word for word in words}
    pattern = re.compile(rf"\b({'|'.join(words)})\b", flags=re.IGNORECASE)
    boxed = last_boxed(text)
    for source in ([boxed] if boxed else []) + [text]:
        hits = pattern.findall(source)
        if hits:
            return canonical[hits[-1].lower()]
    return ""


def normalize_free_form(text: str) -> str:
    text = _unlatex(text).replace(",", " ")
    text = " ".join(text.split())
    return text.strip("*`'\" ").rstrip(".").strip()


def extract_free_form(text: str) -> str:
    """The last \\boxed{} content, else what follows the last "answer is", else the last line."""
    boxed = last_boxed(text)
    if boxed is None:
        after = re.findall(r"answer is\s*:?\s*(.+)", text, flags=re.IGNORECASE)
        lines = [line for line in text.splitlines() if line.strip()]
        boxed = after[-1] if after else (lines[-1] if lines else "")
    return normalize_free_form(boxed)


ANSWER_TYPES = ("number", "choice", "option", *_WORD_ANSWERS, "free_form")


def extract_answer(text: str, answer_type: str, doc: dict | None = None) -> str:
    """The answer string that exact_match compares with the gold answer.

    choice gives a bare label ("C", "3": MMLU, ARC); option gives it in parentheses ("(C)": BBH).
    """
    if answer_type == "number":
        return extract_number(text)
    if answer_type in ("choice", "option"):
        labels, texts = choice_options(doc or {})
        label = extract_choice(text, labels, texts)
        return f"({label})" if label and answer_type == "option" else label
    if answer_type in _WORD_ANSWERS:
        return extract_word(text, _WORD_ANSWERS[answer_type])
    if answer_type == "free_form":
        return extract_free_form(text)
    raise ValueError(f"unknown answer type {answer_type!r}; known: {ANSWER_TYPES}")


class AnswerFilter(Filter):
    """lm-eval filter step: every generation becomes its extracted answer.

    YAML: `function: !function paper.AnswerFilter` with either `answer_type: <type>` or, for BBH,
    `subtask: <name>` (the type then comes from BBH_ANSWER_TYPES).
    """

    def __init__(self, answer_type: str | None = None, subtask: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if subtask is not None:
            answer_type = BBH_ANSWER_TYPES[subtask]
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"unknown answer type {answer_type!r}; known: {ANSWER_TYPES}")
        self.answer_type = answer_type

    def apply(self, resps, docs):
        return [[extract_answer(text, self.answer_type, doc) for text in texts] for texts, doc in zip(resps, docs)]
