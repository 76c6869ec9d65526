"""benchmarks/mutations.py proves that each test catches its bug by injecting the bug and running the test. A
mutation goes stale when a refactor rewrites the code it replaces or renames the test it names: mutations.py
then stops at it (exit 2) and the proof is gone for every mutation after it. This checks, without running any
mutation, that each one still applies."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mutations():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mutations as module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module.MUTATIONS


def test_every_mutation_replaces_text_that_occurs_once_and_names_tests_that_exist():
    """Bug caught: a mutation whose text to replace no longer occurs exactly once in its file (the code was
    rewritten: two mutations of the VAE's likelihood blocks named `budget // BLOCK_ROWS` long after
    `calls_per_row` replaced it), or whose named test no longer exists (renamed or deleted), or two mutations
    with one name (`--only` would pick both)."""
    stale = []
    names = [mutation.name for mutation in mutations()]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})
    for mutation in mutations():
        count = (ROOT / mutation.path).read_text().count(mutation.old)
        if count != 1:
            stale.append(f"{mutation.name}: its text occurs {count} times in {mutation.path}")
        tests = list(mutation.tests)
        if "-k" in tests:  # pytest arguments: files, then -k and an expression (not checked)
            tests = tests[:tests.index("-k")]
        for test in tests:
            path, _, node = test.partition("::")
            function = re.sub(r"\[.*\]$", "", node.split("::")[-1])
            if not (ROOT / path).is_file() or (function and f"def {function}(" not in (ROOT / path).read_text()):
                stale.append(f"{mutation.name}: no test {test}")
    assert not stale, stale
