"""Choosing which GGUF file(s) of a Hub repository a tag means.

A tag is a quantization (``Q4_K_M``, case-insensitive) or an exact file name.
Split models (``name-00001-of-00003.gguf``) are one choice made of all parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import AmbiguousFile, RemoteNotFound

DEFAULT_QUANT = "Q4_K_M"
# When a repo has no Q4_K_M: the nearest sensible size/quality trade-off first.
PREFERENCE = (
    "Q4_K_M", "Q4_K_S", "Q4_K_L", "Q4_K_XL", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q6_K", "Q8_0", "Q3_K_L", "Q3_K_M", "Q3_K_S",
    "IQ3_M", "IQ3_XS", "Q2_K", "BF16", "F16", "F32",
)
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?:^|[-_.])(?P<quant>i?q\d(?:_[a-z0-9]+)*|f16|f32|bf16|fp16|mxfp4(?:_[a-z0-9]+)*)(?=$|[-_.])",
    re.IGNORECASE,
)
# files in a GGUF repo that are not the language model itself
_NOT_A_MODEL = re.compile(r"(^|[-_.])(mmproj|imatrix)([-_.]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None  # the LFS hash, if the Hub gave one

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Choice:
    """One model in a repo: a single file or all parts of a split, in order."""

    quant: str | None
    files: tuple[RepoFile, ...]

    @property
    def label(self) -> str:
        first = self.files[0].path
        if len(self.files) > 1:
            return f"{first} (+{len(self.files) - 1} more parts)"
        return first


def quant_of(filename: str) -> str | None:
    base = filename.rsplit("/", 1)[-1]
    split = _SPLIT.match(base)
    stem = split.group("stem") if split else re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    matches = list(_QUANT.finditer(stem))
    return matches[-1].group("quant").upper() if matches else None


def group_models(files: list[RepoFile]) -> list[Choice]:
    """Group a repo's GGUF files into models; split parts of one model go together."""
    singles: list[Choice] = []
    splits: dict[tuple[str, int], list[tuple[int, RepoFile]]] = {}
    for file in files:
        if not file.path.lower().endswith(".gguf") or _NOT_A_MODEL.search(file.basename):
            continue
        split = _SPLIT.match(file.basename)
        if split:
            directory = file.path[: len(file.path) - len(file.basename)]
            key = (directory + split.group("stem"), int(split.group("count")))
            splits.setdefault(key, []).append((int(split.group("no")), file))
        else:
            singles.append(Choice(quant=quant_of(file.path), files=(file,)))
    for (_, count), parts in splits.items():
        parts.sort(key=lambda item: item[0])
        if [no for no, _ in parts] != list(range(1, count + 1)):
            continue  # an incomplete split cannot be loaded
        ordered = tuple(file for _, file in parts)
        singles.append(Choice(quant=quant_of(ordered[0].path), files=ordered))
    return sorted(singles, key=lambda c: c.files[0].path)


def choose(repo_id: str, files: list[RepoFile], selector: str | None) -> Choice:
    """Pick the model a tag asks for; errors list what there is to choose from."""
    choices = group_models(files)
    if not choices:
        raise RemoteNotFound(f"repository '{repo_id}' has no GGUF model files")
    available = ", ".join(sorted({c.quant or c.files[0].basename for c in choices}))

    if selector is None or selector.lower() == "latest":
        if len(choices) == 1:
            return choices[0]
        for quant in PREFERENCE:
            preferred = [c for c in choices if c.quant == quant]
            if len(preferred) == 1:
                return preferred[0]
            if preferred:
                break
        raise AmbiguousFile(
            f"repository '{repo_id}' has {len(choices)} GGUF models and no single default; "
            f"choose one with a tag, e.g. :{choices[0].quant or choices[0].files[0].basename}. "
            f"Available: {available}"
        )

    wanted = selector.lower()
    by_name = [c for c in choices if any(f.basename.lower() == wanted for f in c.files)]
    if by_name:
        return by_name[0]
    by_quant = [c for c in choices if c.quant and c.quant.lower() == wanted]
    if len(by_quant) == 1:
        return by_quant[0]
    if len(by_quant) > 1:
        names = ", ".join(c.files[0].basename for c in by_quant)
        raise AmbiguousFile(
            f"repository '{repo_id}' has {len(by_quant)} files in {selector}: {names}; choose one by file name"
        )
    raise RemoteNotFound(
        f"repository '{repo_id}' has no GGUF file for '{selector}'. Available: {available}"
    )
