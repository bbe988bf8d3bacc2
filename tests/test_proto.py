from services.gen_protos import stale_files


def test_generated_stubs_match_the_protos():
    assert stale_files() == [], "run `python -m services.gen_protos` and commit services/gen"


def test_every_proto_field_is_documented():
    from pathlib import Path

    for proto in Path("proto/editloop/v1").glob("*.proto"):
        for line in proto.read_text().splitlines():
            stripped = line.strip()
            if stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "option")):
                assert "//" in line or "rpc " in line, f"{proto.name}: undocumented field: {stripped}"
