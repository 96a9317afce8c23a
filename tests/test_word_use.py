"""The word-use check: whole-word swaps, zero for a swap that changes nothing, a visible change for one that does,
the same numbers from a flow-matching model's path, and ``ddpo diagnose words`` end to end."""

import json

import pytest
import torch

from ddpo_env.backends import load_backend
from ddpo_env.diagnose import main as diagnose
from ddpo_env.schedule import make_schedule
from ddpo_env.word_use import swap_word, word_use


def test_swap_word_replaces_whole_words_only():
    assert swap_word("a red circle left of a square", "left", "right") == "a red circle right of a square"
    assert swap_word("a leftover circle", "left", "right") is None  # not the word
    assert swap_word("red and red", "red", "blue") == "blue and blue"
    assert swap_word("a circle", "left", "right") is None


@pytest.mark.parametrize("model", ["tiny", "tiny-sd3"])
def test_a_swap_that_changes_nothing_measures_zero_and_one_that_changes_the_prompt_does_not(model):
    backend = load_backend(model)
    schedule = make_schedule(backend.scheduler_config, 2, None)
    prompts = ["a cat on a mat", "a dog", "a cat"]
    same = word_use(backend, schedule, prompts, "cat", "cat", samples=2, draws=2)
    assert [p for p, _ in same.prompts] == ["a cat on a mat", "a cat"]  # only the prompts holding the word
    assert same.prediction_change == 0.0 and same.error_increase == 0.0
    changed = word_use(backend, schedule, prompts, "cat", "dog", samples=2, draws=2)
    assert changed.prompts[0] == ("a cat on a mat", "a dog on a mat")
    assert changed.prediction_change > 1e-4 and torch.isfinite(torch.tensor(changed.error_increase))
    again = word_use(backend, schedule, prompts, "cat", "dog", samples=2, draws=2)
    assert again.row() == changed.row()  # seeded: the same numbers every run
    with pytest.raises(ValueError, match="no prompt holds the word 'zebra'"):
        word_use(backend, schedule, prompts, "zebra", "horse")


def test_ddpo_diagnose_words_prints_a_row_per_swap_and_writes_json(tmp_path, capsys):
    out = tmp_path / "words.json"
    diagnose(["words", "--model", "tiny", "--swap", "cat=dog", "--swap", "cat=cat", "--prompts", "a cat,a dog",
              "--samples", "1", "--draws", "1", "--num-steps", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| cat → dog | 1 |" in printed and "| cat → cat | 1 | 0.00 % | +0.00 % |" in printed
    report = json.loads(out.read_text())
    assert [s["swap"] for s in report["swaps"]] == ["cat → dog", "cat → cat"]
    assert report["swaps"][0]["per_prompt"][0] == {"prompt": "a cat", "swapped": "a dog",
                                                   "prediction_change": report["swaps"][0]["prediction_change"],
                                                   "error_increase": report["swaps"][0]["error_increase"]}
    with pytest.raises(SystemExit):
        diagnose(["words", "--model", "tiny", "--swap", "cat"])
    assert "--swap takes A=B" in capsys.readouterr().err
