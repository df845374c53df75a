"""``hub.mqtt.BufferedSocket`` on a real socket pair: paho's reads (one byte, one byte,
the rest) come out of one system call, byte for byte, and its end-of-data and
would-block signals pass through unchanged."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.mqtt import BufferedSocket


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_small_reads_come_from_one_chunk(pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = pair
    writer.sendall(b"\x30\x05hello\x30\x02hi")
    buffered = BufferedSocket(reader)
    assert buffered.recv(1) == b"\x30"
    assert buffered.pending() == 10  # the rest is already out of the kernel
    assert buffered.recv(1) == b"\x05"
    assert buffered.recv(5) == b"hello"
    assert buffered.recv(100) == b"\x30\x02hi"  # what was read, not a new system call
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):  # nothing more yet: paho waits for the loop
        buffered.recv(1)


def test_a_closed_peer_reads_as_empty(pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = pair
    writer.sendall(b"ab")
    writer.shutdown(socket.SHUT_WR)
    buffered = BufferedSocket(reader)
    assert buffered.recv(1) == b"a"
    assert buffered.recv(1) == b"b"
    assert buffered.recv(1) == b""


def test_everything_else_is_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = pair
    buffered = BufferedSocket(reader)
    assert buffered.fileno() == reader.fileno()
    assert buffered.send(b"x") == 1
    assert writer.recv(1) == b"x"


@settings(max_examples=50, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=50),
)
def test_any_read_sizes_give_back_the_same_bytes(chunks: list[bytes], sizes: list[int]) -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        sent = b"".join(chunks)
        for c in chunks:
            a.sendall(c)
        buffered = BufferedSocket(b)
        got = b""
        i = 0
        while len(got) < len(sent):
            got += buffered.recv(sizes[i % len(sizes)])
            i += 1
        assert got == sent
        assert buffered.pending() == 0
    finally:
        a.close()
        b.close()
