"""Promo-code patterns (`kassa.core_ext.promo`): parsing, generation, limits, exhaustion, distribution."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from kassa.core_ext import promo
from kassa.core_ext.promo import (
    CAPACITY_SHARE_MAX_BPS,
    DEFAULT_CHARSET,
    DRAWS_PER_CODE_MAX,
    PROMO_CODE_BYTES_MAX,
    PROMO_CODES_PER_REQUEST_MAX,
    PatternError,
    allowed_count,
    check_code,
    generate,
    parse_pattern,
)


def pattern_regex(text: str, charset: str) -> re.Pattern[str]:
    """A regex for the pattern's codes, built independently of the module."""
    char_class = "[" + "".join(re.escape(char) for char in charset) + "]"
    return re.compile("".join(char_class if char == "#" else re.escape(char) for char in text))


def nothing_taken(code: str) -> bool:
    return False


# --- constants -----------------------------------------------------------------------------------


def test_constants():
    assert PROMO_CODES_PER_REQUEST_MAX == 100_000
    assert PROMO_CODE_BYTES_MAX == 64
    assert CAPACITY_SHARE_MAX_BPS == 5_000
    assert DEFAULT_CHARSET == "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    assert len(DEFAULT_CHARSET) == len(set(DEFAULT_CHARSET)) == 32
    assert not set("0O1I") & set(DEFAULT_CHARSET)
    assert issubclass(PatternError, ValueError)


# --- parsing -------------------------------------------------------------------------------------


def test_parse_defaults_and_capacity():
    pattern = parse_pattern("SPRING-########", "")
    assert pattern.charset == DEFAULT_CHARSET
    assert pattern.text == "SPRING-########"
    assert pattern.placeholders == 8
    assert pattern.slots == tuple(range(7, 15))
    assert pattern.capacity == 32**8
    assert parse_pattern("A-#", "AB").capacity == 2
    assert parse_pattern("x.#_#-#", "abc").capacity == 27
    assert parse_pattern("#" * 20, "").capacity == 32**20
    assert parse_pattern("#" * PROMO_CODE_BYTES_MAX, "").placeholders == 64  # exactly at the limit
    assert parse_pattern("A-#", "AB") == parse_pattern("A-#", "AB")
    assert parse_pattern("A-#", "AB") != parse_pattern("A-#", "BA")


@pytest.mark.parametrize(
    ("pattern", "charset", "field", "fragment"),
    [
        ("", "", "pattern", "empty"),
        ("SPRING", "", "pattern", "no '#'"),
        ("SPRING-", "AB", "pattern", "no '#'"),
        ("#" * (PROMO_CODE_BYTES_MAX + 1), "", "pattern", "65 bytes"),
        ("A" * 60 + "#" * 5, "", "pattern", "at most 64"),
        ("SPRING ##", "", "pattern", "' ' at position 6"),
        ("SPRING/##", "", "pattern", "'/'"),
        ("ЯRING-##", "", "pattern", "'Я'"),
        ("SPRING-##\n", "", "pattern", "'\\n'"),
        ("A\\#", "", "pattern", "'\\\\'"),
        ("A#", "AA", "charset", "more than once"),
        ("A#", "ABCA", "charset", "'A' at position 3"),
        ("A#", "A", "charset", "at least 2"),
        ("A#", "AB-", "charset", "'-'"),
        ("A#", "AB#", "charset", "'#'"),
        ("A#", "AB C", "charset", "' '"),
        ("A#", "ABÄ", "charset", "'Ä'"),
        (None, "", "pattern", "string"),
        ("A#", None, "charset", "string"),
    ],
)
def test_invalid_patterns_and_charsets_are_refused(pattern, charset, field, fragment):
    with pytest.raises(PatternError) as caught:
        parse_pattern(pattern, charset)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


def test_literals_and_case_are_kept_exactly():
    pattern = parse_pattern("aB3-_.#", "xyzXYZ")
    codes = generate(pattern, 3, nothing_taken, random.Random(7))
    assert all(code.startswith("aB3-_.") for code in codes)
    assert pattern.matches("aB3-_.x") and pattern.matches("aB3-_.X")
    assert not pattern.matches("AB3-_.x")  # case-sensitive literal
    assert not pattern.matches("aB3-_.a")  # not in the charset
    assert not pattern.matches("aB3-_.xx")


# --- the mapping from indices to codes -----------------------------------------------------------


def test_index_to_code_is_a_bijection_in_lexicographic_order():
    pattern = parse_pattern("#-##", "ABC")
    codes = [pattern.code_at(index) for index in range(pattern.capacity)]
    expected = [f"{a}-{b}{c}" for a, b, c in itertools.product("ABC", repeat=3)]
    assert codes == expected
    with pytest.raises(IndexError):
        pattern.code_at(pattern.capacity)
    with pytest.raises(IndexError):
        pattern.code_at(-1)


def test_huge_capacity_maps_and_generates():
    pattern = parse_pattern("#" * 20, "")
    assert pattern.code_at(0) == "A" * 20
    assert pattern.code_at(pattern.capacity - 1) == "9" * 20
    assert pattern.code_at(31) == "A" * 19 + "9"
    assert pattern.code_at(32) == "A" * 18 + "BA"
    regex = pattern_regex(pattern.text, DEFAULT_CHARSET)
    codes = generate(pattern, 1000, nothing_taken)
    assert len(set(codes)) == 1000
    assert all(regex.fullmatch(code) for code in codes)


# --- generation ----------------------------------------------------------------------------------


def test_100k_codes_unique_matching_and_clear_of_earlier_codes():
    pattern = parse_pattern("SPRING-########", "")
    regex = pattern_regex("SPRING-########", DEFAULT_CHARSET)
    earlier = set(generate(pattern, 1_000, nothing_taken))
    assert len(earlier) == 1_000
    asked: list[str] = []

    def taken(code: str) -> bool:
        asked.append(code)
        return code in earlier

    codes = generate(pattern, PROMO_CODES_PER_REQUEST_MAX, taken)
    assert len(codes) == PROMO_CODES_PER_REQUEST_MAX
    assert len(set(codes)) == PROMO_CODES_PER_REQUEST_MAX
    assert all(regex.fullmatch(code) for code in codes)
    assert not earlier & set(codes)
    assert set(codes) <= set(asked)  # every code handed out was checked against the store


def test_taken_codes_are_skipped_when_they_are_often_drawn():
    # a space of 10,000 codes, 2,000 of them taken: many draws hit a taken code
    pattern = parse_pattern("X-####", "0123456789")
    rng = random.Random(11)
    earlier = set(rng.sample([pattern.code_at(i) for i in range(pattern.capacity)], 2_000))
    hits = 0

    def taken(code: str) -> bool:
        nonlocal hits
        hits += code in earlier
        return code in earlier

    count = allowed_count(pattern, taken_count=len(earlier))
    assert count == 4_000
    codes = generate(pattern, count, taken, rng, taken_count=len(earlier))
    assert len(codes) == len(set(codes)) == count
    assert not earlier & set(codes)
    assert hits > 100  # the filter was actually exercised
    with pytest.raises(PatternError, match=r"^count: .*2,000 of them taken; at most 4,000 may be asked"):
        generate(pattern, count + 1, taken, rng, taken_count=len(earlier))


def test_deterministic_with_an_injected_rng():
    pattern = parse_pattern("SPRING-######", "")
    first = generate(pattern, 500, nothing_taken, random.Random(2024))
    second = generate(pattern, 500, nothing_taken, random.Random(2024))
    other = generate(pattern, 500, nothing_taken, random.Random(2025))
    assert first == second
    assert first != other


def test_default_rng_is_not_deterministic():
    pattern = parse_pattern("SPRING-########", "")
    assert generate(pattern, 50, nothing_taken) != generate(pattern, 50, nothing_taken)


def test_every_position_uses_every_character():
    # 3 placeholders over 4 characters; literals between them
    charset = "ABCD"
    pattern = parse_pattern("#.#-#", charset)
    assert allowed_count(pattern) == 32
    rng = random.Random(5)
    per_position = [Counter() for _ in pattern.slots]
    draws = 0
    for _ in range(400):
        for code in generate(pattern, 32, nothing_taken, rng):
            assert code[1] == "." and code[3] == "-"
            for counter, position in zip(per_position, pattern.slots):
                counter[code[position]] += 1
            draws += 1
    expected = draws / len(charset)
    for position, counter in zip(pattern.slots, per_position):
        assert set(counter) == set(charset), f"position {position}: {counter}"
        for char in charset:
            # 12,800 draws per position: each character near 3,200 (binomial sd about 49)
            assert abs(counter[char] - expected) < 0.1 * expected, f"position {position}: {counter}"


def test_all_codes_of_a_small_pattern_turn_up():
    # repeated requests of the maximal share cover the whole space
    pattern = parse_pattern("##", "abcdef")
    rng = random.Random(3)
    seen: set[str] = set()
    for _ in range(200):
        seen.update(generate(pattern, allowed_count(pattern), nothing_taken, rng))
    assert seen == {a + b for a, b in itertools.product("abcdef", repeat=2)}


# --- count limits --------------------------------------------------------------------------------


def test_impossible_count_is_refused_naming_count_and_capacity():
    pattern = parse_pattern("A-#", "AB")
    with pytest.raises(PatternError) as caught:
        generate(pattern, 3, nothing_taken)
    assert caught.value.field == "count"
    message = str(caught.value)
    assert message.startswith("count: ")
    assert "yields at most 2 codes" in message
    assert "at most 1 may be asked at once" in message


def test_message_names_capacity_with_thousands_separators():
    pattern = parse_pattern("SPRING-##", "")
    with pytest.raises(PatternError) as caught:
        generate(pattern, 513, nothing_taken)
    assert str(caught.value).startswith(
        "count: 'SPRING-##' with 32 characters yields at most 1,024 codes; at most 512 may be asked at once"
    )


@pytest.mark.parametrize(
    ("text", "charset", "allowed"),
    [
        ("A-#", "AB", 1),
        ("#", "ABC", 1),  # 3 codes: half is 1.5, so 1
        ("SPRING-##", "", 512),
        ("X-####", "0123456789", 5_000),
        ("####", "", PROMO_CODES_PER_REQUEST_MAX),  # 1,048,576 codes: the per-request limit binds
    ],
)
def test_count_boundary(text, charset, allowed):
    pattern = parse_pattern(text, charset)
    assert allowed_count(pattern) == allowed
    assert allowed <= pattern.capacity * CAPACITY_SHARE_MAX_BPS / 10_000
    codes = generate(pattern, allowed, nothing_taken, random.Random(1))
    assert len(set(codes)) == allowed
    with pytest.raises(PatternError, match=r"^count: "):
        generate(pattern, allowed + 1, nothing_taken, random.Random(1))


@pytest.mark.parametrize("count", [0, -1, PROMO_CODES_PER_REQUEST_MAX + 1, 10**30, True, 1.0, "5", None])
def test_bad_counts_are_refused(count):
    pattern = parse_pattern("SPRING-##########", "")
    with pytest.raises(PatternError) as caught:
        generate(pattern, count, nothing_taken)
    assert caught.value.field == "count"


def test_per_request_limit_message():
    pattern = parse_pattern("SPRING-##########", "")
    with pytest.raises(PatternError, match=r"^count: at most 100,000 codes may be asked at once, got 100,001"):
        generate(pattern, PROMO_CODES_PER_REQUEST_MAX + 1, nothing_taken)


# --- exhaustion ----------------------------------------------------------------------------------


def test_exhausted_space_is_an_error_not_an_endless_loop():
    # 1,024 codes; all but 5 exist already, and the caller did not say so
    pattern = parse_pattern("SPRING-##", "")
    free = {pattern.code_at(i) for i in (0, 100, 200, 300, 400)}
    calls = 0

    def taken(code: str) -> bool:
        nonlocal calls
        calls += 1
        return code not in free

    with pytest.raises(PatternError) as caught:
        generate(pattern, 50, taken, random.Random(9))
    assert caught.value.field == "count"
    assert "exhausted" in str(caught.value)
    assert calls <= 50 * DRAWS_PER_CODE_MAX


def test_everything_taken_is_an_error_after_bounded_draws():
    pattern = parse_pattern("SPRING-########", "")
    calls = 0

    def taken(code: str) -> bool:
        nonlocal calls
        calls += 1
        return True

    with pytest.raises(PatternError, match=r"^count: .*exhausted"):
        generate(pattern, 10, taken)
    assert calls == 10 * DRAWS_PER_CODE_MAX


def test_a_few_free_codes_are_still_found():
    # 1,024 codes, 900 taken (and the caller did not say so): a draw finds a free code about one
    # time in eight, well within DRAWS_PER_CODE_MAX, so 10 of the 124 left are found
    pattern = parse_pattern("SPRING-##", "")
    all_codes = [pattern.code_at(i) for i in range(pattern.capacity)]
    earlier = set(random.Random(4).sample(all_codes, 900))
    codes = generate(pattern, 10, earlier.__contains__, random.Random(8))
    assert len(set(codes)) == 10
    assert not earlier & set(codes)


def test_a_pattern_mostly_taken_gives_half_of_what_is_left_without_failing_draws():
    # 1,024 codes, 900 of them taken, and the caller says so: at most 62 of the 124 left, sampled
    # from the free codes listed, as random draws would hit a taken code seven times in eight
    pattern = parse_pattern("SPRING-##", "")
    all_codes = [pattern.code_at(i) for i in range(pattern.capacity)]
    earlier = set(random.Random(4).sample(all_codes, 900))
    assert allowed_count(pattern, taken_count=900) == 62
    for seed in range(20):
        codes = generate(pattern, 62, earlier.__contains__, random.Random(seed), taken_count=900)
        assert len(set(codes)) == 62
        assert not earlier & set(codes)


def test_a_taken_count_below_the_truth_is_refused_naming_count_not_looped_over():
    pattern = parse_pattern("A-###", "AB")  # 8 codes; the caller says 5 exist, all 8 do
    with pytest.raises(PatternError, match=r"^count: 'A-###' with 2 characters: only 0 of its codes are free"):
        generate(pattern, 1, lambda code: True, random.Random(1), taken_count=5)


def test_taken_count_beyond_capacity_leaves_no_room():
    pattern = parse_pattern("A-#", "AB")
    with pytest.raises(PatternError, match=r"^count: .*at most 0 may be asked"):
        generate(pattern, 1, nothing_taken, taken_count=5)
    with pytest.raises(ValueError, match=r"^taken_count"):
        generate(pattern, 1, nothing_taken, taken_count=-1)


# --- imported codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["A", "SPRING-2024", "spring-2024", "x" * PROMO_CODE_BYTES_MAX, "Ж" * 32, "€!#%&*", "🎁" * 16],
)
def test_valid_imported_codes(code):
    assert check_code(code, "codes[0]") is None


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("", "empty"),
        ("x" * (PROMO_CODE_BYTES_MAX + 1), "65 bytes"),
        ("Ж" * 33, "66 bytes"),
        ("🎁" * 17, "68 bytes"),
        ("SPRING 24", "whitespace ' '"),
        ("SPRING\t24", "whitespace"),
        ("SPRING24\n", "whitespace"),
        ("SPRING\u00a024", "whitespace"),
        ("SPRING\u200b24", "unprintable"),
        ("SPRING\x0024", "unprintable"),
        ("SPRING\x7f24", "unprintable"),
        ("SPRING\ud80024", "UTF-8"),
        (b"SPRING", "string"),
        (None, "string"),
    ],
)
def test_invalid_imported_codes_are_refused_naming_the_field(code, fragment):
    with pytest.raises(PatternError) as caught:
        check_code(code, "codes[3]")
    assert caught.value.field == "codes[3]"
    assert str(caught.value).startswith("codes[3]: ")
    assert fragment in str(caught.value)


def test_module_is_pure_python():
    source = Path(promo.__file__).read_text(encoding="utf-8")
    for forbidden in ("lmdb", "grpc", "kassa.core_ext.ledger", "kassa.core_ext.rules"):
        assert f"import {forbidden}" not in source
