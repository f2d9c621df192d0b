"""Column names do not depend on the order attributes arrive in (podyn_py.core.naming.assign_names, schema evolution).

Issue 10, case 5: with ``-lc``, ``Id``, ``id`` and ``ID`` in different items used to give ``id`` to whichever
attribute a segment met first. The rule: an attribute already named like its column keeps it; a name asked for by
several others goes to none of them (each is tagged); when a better claim arrives, existing columns are renamed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podyn_py.core.naming import NameClaim, assign_names, base_name, name_tag, rename_steps, tagged
from podyn_py.core.schema import KeyAttribute, TableSchema, TableSpec, initial_schema, plan_evolution
from podyn_py.core.values import PgType


def spec(lower_case: bool = True) -> TableSpec:
    return TableSpec("T", "public", "t", KeyAttribute("pk", "S"), lower_case=lower_case)


def names_of(attributes: list[str], *, lower_case: bool = True, fixed: tuple[str, ...] = ()) -> dict[str, str]:
    claims = [NameClaim(a, "text") for a in attributes]
    assigned = assign_names(claims, lower_case=lower_case, fixed=fixed)
    return {c.attribute: assigned[c] for c in claims}


def grow(schema: TableSchema, items: list[dict[str, Any]]) -> TableSchema:
    return schema.with_change(plan_evolution(schema, items))


def mapping(schema: TableSchema) -> dict[tuple[str, PgType], str]:
    return {(c.attribute, c.type): c.name for c in schema.columns if c.attribute is not None}


LONG = "A" * 70


@pytest.mark.parametrize(
    ("attributes", "lower_case", "expected"),
    [
        # the case: id keeps id, the others are tagged after their own name
        (["Id", "id", "ID"], True, {"id": "id", "Id": "id_" + name_tag("Id"), "ID": "id_" + name_tag("ID")}),
        (["ID", "Id", "id"], True, {"id": "id", "Id": "id_" + name_tag("Id"), "ID": "id_" + name_tag("ID")}),
        # alone, a mixed-case attribute is lowercased: that is what -lc is for
        (["UserName"], True, {"UserName": "username"}),
        # two asking for one name, neither already it: neither gets it
        (["Id", "ID"], True, {"Id": "id_" + name_tag("Id"), "ID": "id_" + name_tag("ID")}),
        # without -lc nothing collides
        (["Id", "id", "ID"], False, {"Id": "Id", "id": "id", "ID": "ID"}),
        # a cut name is already tagged; an attribute literally named like it has the better claim
        (
            [LONG.lower(), base_name(LONG, True)],
            False,
            {LONG.lower(): base_name(LONG.lower(), False), base_name(LONG, True): base_name(LONG, True)},
        ),
        ([base_name(LONG, True), LONG], True, {base_name(LONG, True): base_name(LONG, True)}),
        # U+0000 removed: the attribute without it keeps the name
        (["a\x00b", "ab"], False, {"ab": "ab", "a\x00b": "ab_" + name_tag("a\x00b")}),
        # a tagged fallback already taken by an attribute of that exact name gets a counter
        (
            ["Id", "id", "id_" + name_tag("Id")],
            True,
            {"id": "id", "id_" + name_tag("Id"): "id_" + name_tag("Id"), "Id": f"id_{name_tag('Id')}_2"},
        ),
    ],
    ids=repr,
)
def test_rule(attributes: list[str], lower_case: bool, expected: dict[str, str]) -> None:
    got = names_of(attributes, lower_case=lower_case)
    assert {a: got[a] for a in expected} == expected
    assert len(set(got.values())) == len(got)
    assert names_of(list(reversed(attributes)), lower_case=lower_case) == got


def test_long_name_cut_is_tagged_and_the_exact_one_wins() -> None:
    cut = base_name(LONG, True)
    got = names_of([LONG, cut], lower_case=True)
    assert got[cut] == cut
    assert got[LONG] != cut and len(got[LONG].encode()) <= 63


def test_fixed_names_are_never_given() -> None:
    got = names_of(["extra", "Extra"], lower_case=False, fixed=("extra",))
    assert got["extra"] == "extra_" + name_tag("extra")
    assert got["Extra"] == "Extra"


def test_variant_names_lose_to_an_exact_attribute() -> None:
    claims = [NameClaim("amount", "numeric"), NameClaim("amount", "text", True), NameClaim("amount_text", "text")]
    for order in (claims, list(reversed(claims))):
        got = assign_names(order, lower_case=False)
        assert got[NameClaim("amount_text", "text")] == "amount_text"
        assert got[NameClaim("amount", "text", True)] == tagged("amount_text", name_tag("amount", "text"))
        assert got[NameClaim("amount", "numeric")] == "amount"


def test_variants_follow_their_renamed_column() -> None:
    schema = grow(initial_schema(spec()), [{"Id": {"S": "x"}}, {"Id": {"N": "1"}}])
    assert mapping(schema)[("Id", PgType.TEXT)] == "id"
    assert mapping(schema)[("Id", PgType.NUMERIC)] == "id_numeric"
    change = plan_evolution(schema, [{"id": {"S": "y"}}, {"id": {"N": "2"}}])
    moved = "id_" + name_tag("Id")
    assert change.renamed == {"id": moved, "id_numeric": f"{moved}_numeric"}
    grown = schema.with_change(change)
    assert mapping(grown)[("id", PgType.TEXT)] == "id"
    assert mapping(grown)[("id", PgType.NUMERIC)] == "id_numeric"
    assert grown.column_names[: len(schema.columns)] == ("pk", moved, f"{moved}_numeric")


def test_key_column_keeps_priority_rules() -> None:
    table = TableSpec("T", "public", "t", KeyAttribute("Id", "S"), lower_case=True)
    schema = initial_schema(table)
    assert schema.column_names == ("id",)
    change = plan_evolution(schema, [{"Id": {"S": "k"}, "id": {"S": "v"}}])
    assert change.renamed == {"id": "id_" + name_tag("Id")}
    assert [c.name for c in change.added] == ["id"]


def test_no_rename_without_a_better_claim() -> None:
    schema = grow(initial_schema(spec()), [{"Id": {"S": "x"}}])
    assert plan_evolution(schema, [{"Other": {"S": "y"}}]).renamed == {}
    assert plan_evolution(schema, [{"Id": {"S": "x"}}]).renamed == {}


def test_a_table_named_by_the_old_rule_keeps_its_names() -> None:
    """keep_names (tables from podyn_py 0.1): the newcomer is named around the existing columns, none renamed."""
    schema = replace(grow(initial_schema(spec()), [{"Id": {"S": "x"}}, {"Id": {"N": "1"}}]), keep_names=True)
    change = plan_evolution(schema, [{"id": {"S": "y"}}, {"id": {"N": "2"}}, {"ID": {"S": "z"}}])
    assert change.renamed == {}
    added = {(c.attribute, c.type): c.name for c in change.added}
    assert added[("id", PgType.TEXT)] == "id_" + name_tag("id")
    assert added[("ID", PgType.TEXT)] == "id_" + name_tag("ID")
    assert added[("id", PgType.NUMERIC)] == f"id_{name_tag('id')}_numeric"
    grown = schema.with_change(change)
    assert grown.keep_names and len(set(grown.column_names)) == len(grown.column_names)


def test_pinned_claims_keep_their_names_and_variants_follow_them() -> None:
    pinned = {NameClaim("Id", "text"): "id"}
    got = assign_names(
        [*pinned, NameClaim("Id", "numeric", True), NameClaim("id", "text")], lower_case=True, pinned=pinned
    )
    assert got[NameClaim("Id", "text")] == "id"
    assert got[NameClaim("Id", "numeric", True)] == "id_numeric"
    assert got[NameClaim("id", "text")] == "id_" + name_tag("id")


TEMPORARY = tagged("a", "podyn_rename_1")


@pytest.mark.parametrize(
    ("renames", "names", "expected"),
    [
        ({"id": "id_x"}, {"id"}, [("id", "id_x")]),
        ({"a": "b", "b": "c"}, {"a", "b"}, [("b", "c"), ("a", "b")]),
        ({"a": "b", "b": "a"}, {"a", "b"}, [("a", TEMPORARY), ("b", "a"), (TEMPORARY, "b")]),
        ({"a": "a"}, {"a"}, []),
    ],
)  # fmt: skip
def test_rename_steps(renames: dict[str, str], names: set[str], expected: list[tuple[str, str]]) -> None:
    steps = rename_steps(renames, names)
    assert steps == expected
    current = {n: n for n in names}  # column (by original name) → its name now
    for old, new in steps:
        assert new not in current.values()
        (column,) = [c for c, n in current.items() if n == old]
        current[column] = new
    assert {c: n for c, n in current.items() if c in renames} == renames


NAMES = st.lists(
    st.sampled_from(["id", "Id", "ID", "iD", "Name", "a\x00b", "ab", "AB", LONG, LONG.lower(), base_name(LONG, True)])
    | st.text(alphabet="aAbB_", min_size=1, max_size=4),
    min_size=1,
    max_size=8,
    unique=True,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(NAMES, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=4))
def test_any_arrival_order_gives_the_same_mapping(attributes: list[str], random: Any, batches: int) -> None:
    """Attributes arriving one batch after another, in any order and batching, end in the same mapping."""
    types = [{"S": "x"}, {"N": "1"}]

    def arrive(order: list[str], cuts: int) -> dict[tuple[str, PgType], str]:
        schema = initial_schema(spec())
        step = max(1, len(order) // cuts)
        for start in range(0, len(order), step):
            # each attribute once as its primary type (S), then a variant (N) in a later item of the batch
            items = [{a: types[0]} for a in order[start : start + step]]
            items += [{a: types[1]} for a in order[start : start + step]]
            schema = grow(schema, items)
            assert len(set(schema.column_names)) == len(schema.columns)
        return mapping(schema)

    shuffled = list(attributes)
    random.shuffle(shuffled)
    assert arrive(shuffled, batches) == arrive(sorted(attributes), 1)
