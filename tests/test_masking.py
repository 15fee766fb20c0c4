"""Masking of member emails and phones in everything a person reads (metadata, samples, mails)."""

from __future__ import annotations

import pytest

from memberflow.masking import mask_email, mask_match_key, mask_phone, mask_text


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("jens.hansen@example.dk", "j***@example.dk"),
        ("not-an-email", "n***"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_email_keeps_first_letter_and_domain(value, masked):
    assert mask_email(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [("+4512345678", "+45 ****5678"), ("123", "*23"), ("4512345678", "******5678")],
)
def test_mask_phone_keeps_the_last_digits(value, masked):
    assert mask_phone(value) == masked


def test_a_match_key_is_masked_as_what_it_is():
    assert mask_match_key("anna@example.dk") == "a***@example.dk"
    assert mask_match_key("+4598765432") == "+45 ****5432"


def test_free_text_loses_every_whole_email_and_number():
    reason = "member anna.berg@example.dk (+45 12 34 56 78) refused: mobile 4512345678 is taken"
    masked = mask_text(reason)
    assert "anna.berg" not in masked and "12345678" not in masked.replace(" ", "")
    assert "a***@example.dk" in masked and "refused" in masked
