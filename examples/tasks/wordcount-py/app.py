"""A wasmos task in Python: a component of the `wasmos:task` world.

`run` gets the job's input bytes, counts the words of the text and returns a
JSON object: the total, the number of distinct words and the top ten words
with their counts (most frequent first, ties alphabetically).
"""

import json
import re
from collections import Counter

import wit_world
from wit_world.imports import context
from componentize_py_types import Err

TOP = 10


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        try:
            text = input.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Err(f"input is not UTF-8 text: {e}")
        words = re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text.lower())
        counts = Counter(words)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        context.log(f"wordcount: {len(words)} words, {len(counts)} distinct")
        result = {"words": len(words), "distinct": len(counts), "top": dict(top)}
        return (json.dumps(result, ensure_ascii=False) + "\n").encode("utf-8")
