"""Dry-run diffs never show a secret: well-known leaves, the inventory's, resolved credentials."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from baton.logs import remember_secret
from baton.playbook.dryrun import config_diff, is_secret_leaf

RUNNING = """<data xmlns="urn:lab"><management>
<trap-target><address>10.0.0.1</address><port>162</port><community>s3cr3t-comm</community></trap-target>
<aaa><server>10.1.1.1</server></aaa>
<tacacs><shared-key>tac-key-1</shared-key><server>10.2.2.2</server></tacacs>
<contact>noc@a</contact>
</management></data>"""


def test_secrets_in_context_lines_are_masked() -> None:
    """The community sits next to the change: it shows as ***, the change shows as it is."""
    candidate = RUNNING.replace("noc@a", "noc@b")
    diff = config_diff(RUNNING, candidate, "a-core1")
    assert "s3cr3t-comm" not in diff
    assert "tac-key-1" not in diff
    assert "-<contact>noc@a</contact>" in diff.replace(" ", "")
    assert "+<contact>noc@b</contact>" in diff.replace(" ", "")


def test_a_changed_secret_shows_that_it_changed_not_what_to() -> None:
    candidate = RUNNING.replace("s3cr3t-comm", "n3w-comm")
    diff = config_diff(RUNNING, candidate, "a-core1")
    assert "n3w-comm" not in diff
    assert "s3cr3t-comm" not in diff
    assert "<community>*** (changed)</community>" in diff


def test_leaves_the_inventory_marks_secret_are_masked() -> None:
    running = RUNNING.replace("<contact>noc@a</contact>", "<enable-hash>$6$abc</enable-hash><x>1</x>")
    candidate = running.replace("<x>1</x>", "<x>2</x>")
    assert "$6$abc" in config_diff(running, candidate, "d")
    assert "$6$abc" not in config_diff(running, candidate, "d", frozenset({"enable_hash"}))


def test_credentials_baton_resolved_are_masked_anywhere() -> None:
    remember_secret("pl41n-t3xt-pw")
    diff = config_diff("<a><note>1</note></a>", "<a><note>pl41n-t3xt-pw</note></a>", "d")
    assert "pl41n-t3xt-pw" not in diff


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["community", "password", "auth-key", "priv_key", "secret", "encrypted-password"]),
    value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=6, max_size=20),
    context=st.integers(0, 5),
)
def test_no_secret_leaf_value_ever_appears_in_a_diff(name: str, value: str, context: int) -> None:
    """Whatever the secret and wherever the change, its value is not in the diff."""
    filler = "".join(f"<n{i}>v{i}</n{i}>" for i in range(context))
    running = f"<c><{name}>{value}</{name}>{filler}<z>1</z></c>"
    candidate = running.replace("<z>1</z>", "<z>2</z>")
    assert is_secret_leaf(name)
    assert value not in config_diff(running, candidate, "d")
