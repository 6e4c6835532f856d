"""Secrets without Ray or a database: where values come from, validation, markers, masking, signing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from actors.secrets import SecretResolver, masked_strings, redact, resolve_secret
from actors.webhooks import sign, signature_headers, webhook_id
from dsl.errors import ConfigurationError, InputValidationError, PackValidationError, SecretNotFoundError
from dsl.secrets import SecretRef, SecretText, SecretValue, secret_names, split_secret_inputs
from dsl.templates import compile_template
from dsl.validation import validate_document, validate_inputs

pytestmark = pytest.mark.timeout(30)


# --- where values come from ---------------------------------------------------------------------


def test_environment_wins_over_the_file_and_the_file_is_read(tmp_path: Path) -> None:
    yaml_file = tmp_path / "secrets.yaml"
    yaml_file.write_text("API_KEY: from-file-1234\nPORT: 8443\n")
    json_file = tmp_path / "secrets.json"
    json_file.write_text(json.dumps({"API_KEY": "from-json-5678"}))

    assert resolve_secret("API_KEY", environ={}, secrets_file=yaml_file) == "from-file-1234"
    assert resolve_secret("PORT", environ={}, secrets_file=yaml_file) == "8443"
    assert resolve_secret("API_KEY", environ={"CORTX_SECRETS_FILE": str(json_file)}) == "from-json-5678"
    env = {"CORTX_SECRET_API_KEY": "from-env-9999", "CORTX_SECRETS_FILE": str(yaml_file)}
    assert resolve_secret("API_KEY", environ=env) == "from-env-9999"


def test_a_missing_secret_names_itself_and_where_it_was_looked_for(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("OTHER: value-that-must-not-show\n")
    with pytest.raises(SecretNotFoundError) as caught:
        resolve_secret("HOOK_TOKEN", environ={}, secrets_file=path)
    message = str(caught.value)
    assert "'HOOK_TOKEN'" in message and "CORTX_SECRET_HOOK_TOKEN" in message and str(path) in message
    assert "value-that-must-not-show" not in message
    with pytest.raises(SecretNotFoundError, match="no CORTX_SECRETS_FILE is set"):
        resolve_secret("HOOK_TOKEN", environ={})


@pytest.mark.parametrize(
    ("text", "rule"),
    [("API_KEY: [unclosed-sekrit-value\n", "not valid YAML"), ("- a-list-sekrit\n", "mapping"), ("K: {x: sekrit}\n", "text")],
)
def test_a_broken_secrets_file_is_a_clear_error_that_quotes_no_value(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        resolve_secret("API_KEY", environ={}, secrets_file=path)
    assert "CORTX_SECRETS_FILE" in str(caught.value) and rule in str(caught.value)
    assert "sekrit" not in str(caught.value)


# --- validation ---------------------------------------------------------------------------------


def _pack(step: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "s", "name": "s", "version": "1", "steps": [step], **extra}


def _call(**fields: Any) -> dict[str, Any]:
    return {"id": "call", "type": "service_call", "service": "hooks", "endpoint": "/v1", **fields}


def _issues(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(PackValidationError) as caught:
        validate_document(document, "pack.yaml")
    return sorted((issue.code, issue.pointer) for issue in caught.value.issues)


def test_valid_secret_references_pass_and_are_listed() -> None:
    document = _pack(
        _call(
            endpoint="/v1/hooks/${ secrets.HOOK_TOKEN }",
            headers={"Authorization": "Bearer ${ secrets.PAYMENT_API_KEY }"},
            inputs={"key": "${ secrets['OTHER_KEY'] }"},
        )
    )
    loaded = validate_document(document, "pack.yaml")
    assert secret_names(loaded.pack) == ["HOOK_TOKEN", "OTHER_KEY", "PAYMENT_API_KEY"]


def test_secret_misuse_is_reported_with_pointers() -> None:
    document = _pack(
        _call(
            endpoint="/v1/${ secrets.bad-name }",
            headers={"X-Key": "${ lower(secrets.API_KEY) }"},
            outputs={"leak": "${ secrets.API_KEY }"},
        ),
        outputs={"key": "${ secrets.API_KEY }"},
    )
    assert _issues(document) == [
        ("invalid_secret_name", "/steps/0/endpoint"),
        ("secret_expression", "/steps/0/headers/X-Key"),
        ("secret_not_allowed_here", "/outputs/key"),
        ("secret_not_allowed_here", "/steps/0/outputs/leak"),
    ]


def test_an_http_step_takes_secrets_in_headers_and_body_but_not_in_its_url() -> None:
    step = {"id": "h", "type": "http", "method": "POST", "url": "https://api.example.com/v1",
            "headers": {"Authorization": "Bearer ${ secrets.API_KEY }"}, "body": {"k": "${ secrets.API_KEY }"}}
    assert secret_names(validate_document(_pack(step), "pack.yaml").pack) == ["API_KEY"]
    step = {**step, "url": "https://api.example.com/v1/${ secrets.API_KEY }"}
    assert _issues(_pack(step)) == [("secret_not_allowed_here", "/steps/0/url")]


def test_a_secret_input_follows_the_same_rules() -> None:
    document = _pack(
        _call(inputs={"card": "${ inputs.card_token }", "masked": "**${ inputs['card_token'] }", "n": "${ inputs.n + 1 }",
                      "bad": "${ upper(inputs.card_token) }"},
              set_context={"card": "${ inputs.card_token }"}),
        inputs={"card_token": {"type": "string", "secret": True}, "n": {"type": "number"}},
    )
    assert _issues(document) == [("secret_expression", "/steps/0/inputs/bad"), ("secret_not_allowed_here", "/steps/0/set_context/card")]


@pytest.mark.parametrize(
    ("inputs", "pointer"),
    [
        ({"card": {"type": "object", "properties": {"token": {"type": "string", "secret": True}}}}, "/inputs/card/properties/token/secret"),
        ({"type": "object", "properties": {"card": {"type": "string", "secret": "yes"}}}, "/inputs/properties/card/secret"),
    ],
)
def test_a_secret_flag_that_would_protect_nothing_is_refused(inputs: dict[str, Any], pointer: str) -> None:
    assert _issues(_pack(_call(), inputs=inputs)) == [("invalid_secret_flag", pointer)]


def test_an_input_named_secret_is_just_an_input() -> None:
    for inputs in ({"secret": {"type": "string"}}, {"type": "object", "properties": {"secret": {"type": "string"}}}):
        validate_document(_pack(_call(), inputs=inputs), "pack.yaml")


def test_secrets_in_a_condition_are_refused() -> None:
    document = _pack({"id": "c", "type": "condition", "condition": "secrets.API_KEY == 'x'", "then": [_call()]})
    assert _issues(document) == [("secret_not_allowed_here", "/steps/0/condition")]


def test_a_secret_input_that_breaks_the_schema_is_not_quoted() -> None:
    loaded = validate_document(_pack(_call(), inputs={"card_token": {"type": "string", "secret": True}}), "pack.yaml")
    with pytest.raises(InputValidationError) as caught:
        validate_inputs(loaded.pack, {"card_token": 4111111111111111})
    assert "4111111111111111" not in str(caught.value) and "/card_token" in str(caught.value)


# --- markers ------------------------------------------------------------------------------------


def test_templates_keep_secrets_as_markers_and_the_resolver_writes_them_in(tmp_path: Path) -> None:
    scope = {"secrets": {"K": SecretRef("K")}, "inputs": {"card": SecretValue("card", "ctok-4242"), "n": 7}}
    rendered = compile_template(
        {"auth": "Bearer ${ secrets.K }", "whole": "${ secrets.K }", "card": "${ inputs.card }", "n": "${ inputs.n }"}
    ).render(scope)
    assert rendered["auth"] == SecretText(("Bearer ", SecretRef("K")))
    assert rendered["whole"] == SecretRef("K") and rendered["n"] == 7
    assert "ctok-4242" not in repr(rendered) and "ctok-4242" not in str(rendered["card"])
    assert pickle.loads(pickle.dumps(rendered["card"])).reveal() == "ctok-4242"

    resolver = SecretResolver(environ={"CORTX_SECRET_K": "s3cr3t/value"})
    assert resolver.reveal(rendered) == {"auth": "Bearer s3cr3t/value", "whole": "s3cr3t/value", "card": "ctok-4242", "n": 7}
    url = compile_template("http://h/v1/${ secrets.K }?c=${ inputs.card }").render(scope)
    assert resolver.text_of(url, url=True) == "http://h/v1/s3cr3t%2Fvalue?c=ctok-4242"
    with pytest.raises(ConfigurationError, match="may not be"):
        SecretResolver(environ={"CORTX_SECRET_K": ".."}).text_of(url, url=True)


def test_placeholders_round_trip_through_text_code() -> None:
    text = SecretText(("/v1/", SecretRef("A"), "/x/", SecretValue("b", "v")))
    plain, found = text.with_placeholders()
    assert SecretText.from_placeholders("http://base" + plain, found) == SecretText(
        ("http://base/v1/", SecretRef("A"), "/x/", SecretValue("b", "v"))
    )


def test_redact_masks_values_and_their_url_form_everywhere() -> None:
    masked = masked_strings(["tok/abc 1", 12345678, "abc"])  # "abc" is too short to mask
    value = {"message": "HTTP 500 from POST http://h/tok%2Fabc%201", "body": ["tok/abc 1", 12345678, "12345678"]}
    # a secret number echoed as a number is masked too
    assert redact(value, masked) == {"message": "HTTP 500 from POST http://h/***", "body": ["***", "***", "***"]}


def test_split_secret_inputs_keeps_a_mask_in_the_stored_inputs() -> None:
    schema = {"type": "object", "properties": {"card": {"type": "string", "secret": True}, "n": {"type": "number"}}}
    assert split_secret_inputs(schema, {"card": "ctok", "n": 1}) == ({"card": "***", "n": 1}, {"card": "ctok"})


# --- webhook signatures ---------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # The example in the Standard Webhooks specification's reference libraries.
    signature = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                     b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_webhook_id_is_stable_per_step_execution() -> None:
    first = signature_headers("key-1234", "run-1/notify", 1_700_000_000, b"{}")
    again = signature_headers("key-1234", "run-1/notify", 1_700_000_099, b"{}")
    assert first["webhook-id"] == again["webhook-id"] == webhook_id("run-1/notify")
    assert first["webhook-signature"] != again["webhook-signature"]  # the timestamp is signed
    assert webhook_id("run-1/loop[1]/notify") != webhook_id("run-1/loop[0]/notify")


def test_redaction_covers_cut_encoded_and_non_string_forms_of_a_secret() -> None:
    """What a length limit, a JSON echo, a host name or a number makes of a secret is masked too."""
    from actors.secrets import masked_strings, redact

    key, pin, card = "sk_live_ABCDEFGHIJKLMNOPQRSTUVWXYZ1234", 98765432, {"number": "4111-SECRET-CARD-1111"}
    odd = 'q"uote-v\u00e4lue-\u20acx'
    secrets = masked_strings([key, pin, card, odd])
    cut = "refused http://blocked.example/" + "p" * 40 + "/" + key[:-1]  # cut one short by a limit
    assert key[:8] not in redact(cut, secrets) and redact(cut, secrets).endswith("/***")
    assert key[:8] not in redact(cut + "\u2026", secrets)
    echoed = {"pin": pin, "card": card, "raw": json.dumps(odd)[1:-1], "host": f"{key.lower()}.example.com"}
    masked = json.dumps(redact(echoed, secrets))
    for leaked in (str(pin), card["number"], "v\\u00e4lue", key.lower()):
        assert leaked not in masked, leaked
    assert redact("a plain sentence", secrets) == "a plain sentence"


@pytest.mark.parametrize("name", ["t" * 201, "a\x00b"], ids=["too-long", "nul"])
def test_a_secret_input_name_the_secret_store_cannot_key_is_refused_at_validation(name: str) -> None:
    # Validation names it (a field path), instead of the store refusing the run at execute time.
    assert _issues(_pack(_call(), inputs={name: {"type": "string", "secret": True}})) == [
        ("invalid_secret_input_name", f"/inputs/{name}")]
    validate_document(_pack(_call(), inputs={"t" * 200: {"type": "string", "secret": True}}), "pack.yaml")
    validate_document(_pack(_call(), inputs={name: {"type": "string"}}), "pack.yaml")  # not secret: no key needed
