"""The entries of a large JSON object, one at a time, without holding the object in memory.

`json.load` of SA-Med2D-20M's `SAMed2D_v1.json` (1.3 GB, 3.7 M keys, 16 M mask paths) builds
tens of millions of Python objects; the compact index needs each (key, value) once. This reads
the file in chunks and decodes each key and value with the standard library's C decoder (the
scanner behind `json.JSONDecoder.raw_decode`), so only one entry and one chunk are alive at a time.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Iterator, Tuple, Union

from medicosam.errors import DataError

#: Characters read at a time; an entry longer than this is read in several chunks.
CHUNK_CHARS = 1 << 22
#: A value still undecoded after this many chunks is broken JSON, not a long entry (an SA-Med2D entry
#: is a few kB): stop instead of reading the rest of a 1 GB file into memory to find out.
MAX_CHUNKS_PER_VALUE = 16

_WHITESPACE = re.compile(r"[ \t\n\r]*")
#: Between a key and its value; between a value and the next key (or the end of the object).
_COLON = re.compile(r'[ \t\n\r]*:[ \t\n\r]*')
_NEXT = re.compile(r'[ \t\n\r]*(?:,[ \t\n\r]*"|\})')


class _ChunkedText:
    """A window on a text file, grown chunk by chunk while what is at `pos` is cut off."""

    def __init__(self, file, chunk_chars: int):
        self.file = file
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of `text`
        self.eof = False

    def refill(self) -> bool:
        """Append the next chunk (dropping what was parsed); False at the end of the file."""
        if self.eof:
            return False
        chunk = self.file.read(self.chunk_chars)
        self.eof = not chunk
        self.consumed += self.pos
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return bool(chunk)

    def skip_whitespace(self) -> str:
        """The next non-whitespace character, not consumed ('' at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.refill():
                return ""

    def expect(self, characters: str, what: str) -> str:
        """Consume whitespace and one of `characters`; raise naming `what` when something else is there."""
        character = self.skip_whitespace()
        if not character or character not in characters:
            raise self.error(f"expected {what}, found {repr(character) if character else 'the end of the file'}")
        self.pos += 1
        return character

    def skip_colon(self) -> None:
        """Consume the ':' after a key and the whitespace before the value."""
        found = _COLON.match(self.text, self.pos)
        if found and found.end() < len(self.text):  # the fast path: all of it is in this chunk
            self.pos = found.end()
            return
        self.expect(":", "':'")
        self.skip_whitespace()

    def skip_to_next_key(self) -> bool:
        """Consume ', "' (True, at the next key's first character) or '}' (False)."""
        found = _NEXT.match(self.text, self.pos)
        if found and found.end() < len(self.text):
            self.pos = found.end()
            return self.text[self.pos - 1] == '"'
        if self.expect(",}", "',' or '}'") == "}":
            return False
        self.expect('"', "a key (a string)")
        return True

    def decode(self, scan) -> Any:
        """The JSON value that starts at `pos` (a string after its opening quote for `scanstring`)."""
        while True:
            try:
                value, self.pos = scan(self.text, self.pos)
                return value
            except (json.JSONDecodeError, StopIteration) as error:
                too_long = len(self.text) - self.pos > MAX_CHUNKS_PER_VALUE * self.chunk_chars
                if too_long or not self.refill():
                    message = error.msg if isinstance(error, json.JSONDecodeError) else "expected a value"
                    raise self.error(message) from error

    def error(self, message: str) -> DataError:
        return DataError(f"{self.file.name}: not valid JSON at character {self.consumed + self.pos}: {message}.")


def iter_object_items(path: Union[str, Path], chunk_chars: int = CHUNK_CHARS) -> Iterator[Tuple[str, Any]]:
    """(key, value) of the top-level JSON object in `path`, in file order (duplicate keys repeat).

    Raises DataError naming the file when it is not a JSON object or not valid JSON.
    """
    scan_value = json.JSONDecoder().scan_once
    try:
        with open(path, encoding="utf-8") as file:
            text = _ChunkedText(file, chunk_chars)
            if text.skip_whitespace() != "{":
                raise DataError(f"{path}: expected a JSON object mapping image paths to lists of mask paths.")
            text.pos += 1
            more = text.expect('"}', "a key (a string) or '}'") == '"'
            while more:
                key = text.decode(scanstring)
                text.skip_colon()
                yield key, text.decode(scan_value)
                more = text.skip_to_next_key()
            if text.skip_whitespace():
                raise text.error("extra data after the object")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the image -> masks JSON ({error}).") from error
