"""How a student learns from its teacher, decided before any work from what the pair is:

  logits    the two share a tokenizer (the same token -> id map; a vocabulary padded past the tokenizer, as Qwen's
            151,936 and 152,064 rows, is the same tokenizer): the teacher's next-token distributions are compared
            with the student's (live, or its top-k from the logit cache; a served teacher's top-k, k <= 20)
  cross     the tokenizers differ and a logit cache holds the teacher's top-k projected onto the student's
            vocabulary (distill.cross_tokenizer): trained like a top-k cache, measured on the text
  sequence  the tokenizers differ, or a served teacher gave no log-probabilities: the student learns the teacher's
            text (sequence-level KD: cross-entropy on the teacher's answers, Kim & Rush, 2016), and its fidelity is
            measured on the text (data.text_fidelity)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pairing:
    kind: str  # "logits" | "cross" | "sequence"
    why: str

    @property
    def logits(self) -> bool:
        """The two share a tokenizer: the teacher's distributions are compared with the student's directly."""
        return self.kind == "logits"

    @property
    def kd(self) -> bool:
        """The student learns from the teacher's probabilities (same tokenizer, or projected onto its own)."""
        return self.kind != "sequence"

    @property
    def words(self) -> str:
        return WORDS[self.kind]

    def line(self) -> str:
        return f"pairing: {self.words} ({self.why})"


WORDS = {"logits": "logit distillation", "cross": "cross-tokenizer distillation from the teacher's top-k",
         "sequence": "sequence-level distillation on the teacher's text"}


def same_tokenizer(a, b) -> bool:
    """One tokenizer: the same token -> id map (the models' output rows may still differ by padding)."""
    return a.get_vocab() == b.get_vocab()


def tokenizer_fingerprint(tokenizer) -> str:
    """A tokenizer's token -> id map as a short hash: what a projected cache names as the student's tokenizer."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def decide(student_tok, teacher_tok=None, *, teacher: str, student: str, served: bool = False,
           cached: bool = False, projected: dict | None = None) -> Pairing:
    """The pairing of `student` (its tokenizer loaded) with `teacher`: a local one (its tokenizer given), or a served
    one (`served`), which teaches through its logits only through a cache of its top-k aligned to the student's
    tokenizer (`cached`). `projected`: a cache's projection record (cache.json), the teacher's top-k projected onto
    the student's tokenizer."""
    if projected is not None:
        return Pairing("cross", f"{teacher}'s top-k projected onto {student}'s tokenizer at "
                                f"{projected['aligned_share']:.0%} of its positions")
    if served:
        if cached:
            return Pairing("logits", f"{teacher}'s top-k log-probabilities, aligned to {student}'s tokenizer")
        return Pairing("sequence", f"{teacher} is served and its log-probabilities are not cached for {student}'s "
                                   "tokenizer")
    if teacher_tok is not None and same_tokenizer(teacher_tok, student_tok):
        return Pairing("logits", f"{teacher} and {student} share a tokenizer of {len(student_tok)} tokens")
    n = f"{len(teacher_tok)} and {len(student_tok)}" if teacher_tok is not None else "?"
    return Pairing("sequence", f"the tokenizers differ: {teacher} and {student} have {n} tokens, not the same ones")
