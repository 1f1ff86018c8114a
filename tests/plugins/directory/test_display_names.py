"""Display names are unique within a community (NFKC, then case folding)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import registered, server
from united_directory.client.session import DirectoryClient, DirectoryError
from united_directory.protocol import name_key

from united_core.identity import Identity
from united_core.wire import frames_pb2 as pb


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("alice", "ALICE"),
        ("Alice", "\uff21\uff4c\uff49\uff43\uff45"),  # full-width letters
        ("Stra\u00dfe", "STRASSE"),  # case folding, not lower()
        ("caf\u00e9", "cafe\u0301"),  # composed and decomposed
        ("\u2168", "IX"),  # compatibility: the Roman numeral nine
    ],
)
def test_names_that_are_the_same(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


def test_names_that_differ() -> None:
    assert name_key("alice") != name_key("alice2")
    assert name_key("al ice") != name_key("alice")


def test_a_taken_display_name_is_refused_and_the_invite_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):
            alice, _, _, _ = await registered(url, service, "Alice")
            await alice.close()
            code = (await service.create_invite())["code"]
            for taken in ("alice", "ALICE", "\uff21\uff4c\uff49\uff43\uff45", "aLiCe"):
                client = await DirectoryClient.connect(url)
                with pytest.raises(DirectoryError) as info:
                    await client.register(Identity.generate(), taken, code)
                assert info.value.code == pb.ERROR_CODE_NAME_TAKEN
                assert "is taken" in str(info.value) and "'Alice'" in str(info.value)
                await client.close()
            # The refused registrations used nothing: the invite registers someone else.
            client = await DirectoryClient.connect(url)
            welcome = await client.register(Identity.generate(), "bob", code)
            assert welcome.you.display_name == "bob"
            await client.close()
            assert sorted(m.display_name for m in service.member_set().members) == ["Alice", "bob"]

            # An invite naming a taken name is refused; a removed member's name is free.
            with pytest.raises(Exception, match="is taken"):
                await service.create_invite("BOB")
            await service.remove_member("Alice")
            again, _, welcome, _ = await registered(url, service, "alice")
            assert welcome.you.display_name == "alice"
            await again.close()

    asyncio.run(scenario())


def test_registrations_racing_for_one_name_give_it_to_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with server(tmp_path) as (_, service, url):

            async def attempt(name: str) -> bool:
                client = await DirectoryClient.connect(url)
                try:
                    code = (await service.create_invite())["code"]
                    await client.register(Identity.generate(), name, code)
                    return True
                except DirectoryError as exc:
                    assert exc.code == pb.ERROR_CODE_NAME_TAKEN
                    return False
                finally:
                    await client.close()

            results = await asyncio.gather(*(attempt(n) for n in ("carol", "Carol", "CAROL")))
            assert sorted(results) == [False, False, True]

    asyncio.run(scenario())
