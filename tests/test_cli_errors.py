"""The command's error lines: library fields named as the options the user typed."""

from __future__ import annotations

import argparse
import re

import pytest

from ecrstream.cli.errors import EXIT_FAILURE, EXIT_USAGE, OPTION_OF_FIELD, Context, explain
from ecrstream.errors import EcrConnectionError, ImageSelectionError, InvalidArgumentError

UPLOAD = Context("upload-layer", repository="my/app", region="eu-west-1")
PUSH = Context("push", repository="my/app", region="eu-west-1")


@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("part_size", "--part-size"),
        ("image_tag", "--tag"),
        ("image_ref", "--image-ref"),
        ("repository_name", "--repository"),
        ("registry_id", "--registry-id"),
        ("expected_digest", "--expected-digest"),
        ("path", "FILE"),
        ("source", "SOURCE"),
    ],
)
def test_an_invalid_argument_is_named_by_its_option(field: str, option: str) -> None:
    error = InvalidArgumentError(field, "must be something else (got 'x')")

    message, code = explain(error, PUSH)

    assert code == EXIT_USAGE
    assert message == f"{option}: must be something else (got 'x') (see 'ecrstream push --help')"


def test_a_plain_value_error_starting_with_a_field_is_named_the_same() -> None:
    """The library's checks that still raise a plain ValueError ("part_size: ...")."""
    message, code = explain(ValueError("image_tag: must be 1 to 300 of letters"), PUSH)

    assert code == EXIT_USAGE
    assert message.startswith("--tag: must be 1 to 300 of letters")


def test_a_field_without_an_option_keeps_its_name() -> None:
    message, code = explain(InvalidArgumentError("on_progress", "must be callable"), UPLOAD)

    assert code == EXIT_USAGE
    assert message.startswith("on_progress: must be callable")


def test_a_bad_resume_checkpoint_says_how_to_start_over() -> None:
    message, _ = explain(InvalidArgumentError("resume", "the checkpoint is for another"), UPLOAD)

    assert message.startswith("--resume: the checkpoint is for another; run the command")


def test_every_option_of_the_table_is_one_the_commands_take() -> None:
    from ecrstream.cli.parser import build_parser

    commands = [
        command
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for command in action.choices.values()
    ]
    assert len(commands) == 5  # upload-layer, push, copy, demo, local-ecr
    help_texts = " ".join(command.format_help() for command in commands)
    for option in set(OPTION_OF_FIELD.values()):
        assert option in help_texts, option


@pytest.mark.parametrize("image_ref", [None, "nope"])
def test_choosing_an_image_names_the_option(image_ref: str | None) -> None:
    error = ImageSelectionError(
        "index.json holds 2 images; choose one with image_ref (names: ['a', 'b'])",
        source="/images/app.tar",
        image_ref=image_ref,
        names=("a", "b"),
    )

    message, code = explain(error, PUSH)

    assert code == EXIT_USAGE
    assert "--image-ref" in message
    assert re.search(r"(?<!-)image_ref", message) is None
    assert "/images/app.tar" in message
    assert "(names: a, b)" in message


def test_an_untrusted_certificate_names_the_fixes() -> None:
    error = EcrConnectionError(
        "SSL validation failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
        operation="InitiateLayerUpload",
    )

    message, code = explain(error, UPLOAD)

    assert code == EXIT_FAILURE
    for fix in ("--ca-bundle", "AWS_CA_BUNDLE", "--no-verify-ssl"):
        assert fix in message


def test_redact_hides_a_presigned_urls_signature_token_and_credential() -> None:
    from ecrstream.cli.errors import redact

    text = redact(
        "GET https://b.s3.amazonaws.com/x?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=ASIA%2F2026&X-Amz-Security-Token=tok&X-Amz-Signature=sig failed"
    )

    assert "=tok" not in text
    assert "=sig" not in text
    assert "ASIA%2F" not in text
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in text  # not a secret: left as it was
    assert text.endswith("X-Amz-Signature=*** failed")
