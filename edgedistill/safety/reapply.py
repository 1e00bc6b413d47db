"""Re-applying safety to a distilled student: a short phase of its own after distillation.

Refusals do not carry over by distillation alone (the teacher's own answers to harmful requests are what is
copied). The phase trains the student on the safety suite's train split alone: each harmful prompt with this
tool's refusal, each benign look-alike with the teacher's own answer, both by cross-entropy on that text, plus
  - an unlikelihood term (Welleck et al. 2020) on the look-alike's wrong start: -log(1 - p) of its twin's refusal
    token at the position where the two texts part ways (`avoid_weight` response tokens each);
  - the decision weight: the first `decision_tokens` response tokens, where greedy decoding decides between
    refusing and answering, count `decision_weight` times (`refusal_weight` times more again on a refusal);
  - hidden-state hints (safety.hint, FitNets): the student's state pulled towards the teacher's on the prompt
    tokens, and along the teacher's harmful/look-alike directions at the last prompt token;
and keeps the checkpoint with the largest refusal minus over-refusal on a validation slice of the train split
(every `holdout`-th pair, never trained on; safety.select). Every default is the measured recipe
(docs/safety.md); the options without a measured benefit were removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.safety.judge import is_refusal, refusal_for
from edgedistill.safety.suite import SafetyPrompt, holdout, load_suite, suite_dir
from edgedistill.distill.settings import TrainSettings
from edgedistill.settings import Settings, like, setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapplySettings(Settings):
    student: str = setting(None, "The distilled student (a Hugging Face folder, e.g. RUN/student).", required=True)
    out: Path = setting(None, "Run folder; the re-applied student is written to OUT/student.", required=True)
    teacher: str = setting(DEFAULT_TEACHER, "Answers the benign look-alikes; its hidden states feed the hints.")
    data_dir: Path | None = setting(None, "Folder holding safety/train.jsonl [default: the project's calibration_data].",
                                    exists="dir", flag="--data")
    # the loop's knobs, declared in distill.settings; the phase's measured recipe (docs/safety.md) is longer and on
    # shorter sequences than distillation's: it teaches how answers start
    steps: int = like(TrainSettings, "steps", 300)
    repeat: int = setting(2, "Copies of each harmful train prompt with its refusal.", min=1, max=20)
    benign_repeat: int = setting(2, "Copies of each benign look-alike with the teacher's answer.", min=1, max=20)
    max_length: int = like(TrainSettings, "max_length", 128)
    batch_size: int = like(TrainSettings, "batch_size", 4)
    grad_accum: int = like(TrainSettings, "grad_accum", 2)
    lr: float = like(TrainSettings, "lr", 5e-4)
    warmup_steps: int = like(TrainSettings, "warmup_steps", 4)
    seed: int = like(TrainSettings, "seed", 0)
    avoid_weight: float = setting(40.0, "Weight of each record's unlikelihood term, in response tokens.", min=0)
    decision_weight: float = setting(10.0, "Weight of the first --decision-tokens response tokens of each record.",
                                     min=0)
    decision_tokens: int = setting(4, "How many first response tokens the decision weight covers.", min=1)
    refusal_weight: float = setting(4.0, "Those first tokens weigh this many times more again on a refusal (a class "
                                         "weight: above 1 moves the student towards refusing).", min=0)
    hint_weight: float = setting(10.0, "Hidden-state hint on the prompt tokens (squared error per token, counted "
                                       "like this many response tokens); 0: off.", min=0)
    hint_decision_weight: float = setting(40.0, "Decision hint at the last prompt token along the teacher's "
                                                "harmful/look-alike directions; 0: off.", min=0)
    hint_layers: tuple[int, int] | None = setting(None, "Student block S and teacher block T of the hints "
                                                        "[default: each at 60% of its depth].", kind="pair")
    holdout: int = setting(5, "Hold out every K-th pair of each category of the train split as the validation "
                              "slice (0: none; then the last step is kept).", min=0)
    pick_every: int = setting(100, "Judge the validation slice every N steps and keep the best checkpoint (0: keep "
                                   "the last).", min=0)
    answer_tokens: int = setting(160, "Length of the teacher's answers to the look-alikes.", min=8)
    judge_tokens: int = setting(96, "Length of the greedy answers the picker judges.", min=8)
    save_steps: int = like(TrainSettings, "save_steps", 100)

    def extra_problems(self) -> list[str]:
        out = []
        if self.holdout == 1:
            out.append("holdout=1 would hold out every prompt; use 0 (none) or K >= 2")
        if self.pick_every and not self.holdout:
            out.append("pick_every needs a validation slice: set holdout K >= 2 or pick_every 0")
        if self.hint_layers is not None and min(self.hint_layers) < 1:
            out.append(f"hint_layers {self.hint_layers}: block numbers start at 1")
        return out

    @property
    def hinted(self) -> bool:
        return self.hint_weight > 0 or self.hint_decision_weight > 0


def mix_records(train: Sequence[SafetyPrompt], benign_answers: dict[str, str], repeat: int = 1,
                benign_repeat: int | None = None) -> list[dict]:
    """Training records from the train split: harmful prompts with this tool's refusal (`repeat` copies each),
    benign look-alikes with the teacher's own answer (`benign_repeat` copies each, default `repeat`) and their
    twin's refusal as the start to avoid. A teacher answer that the judge calls a refusal is left out: it would
    teach over-refusal. Copies carry an id suffix '#n'; copy n of every record comes before copy n + 1."""
    benign_repeat = repeat if benign_repeat is None else benign_repeat
    out = []
    for p in train:
        if p.kind == "harmful":
            rec, copies = {"response": refusal_for(p)}, repeat
        elif p.id in benign_answers and not is_refusal(benign_answers[p.id]):
            rec, copies = {"response": benign_answers[p.id], "avoid": refusal_for(p)}, benign_repeat
        else:
            continue
        out.append(({"id": p.id, "kind": p.kind, "category": p.category, "messages": list(p.messages), **rec}, copies))
    rounds = max([c for _, c in out], default=0)
    return [dict(r, id=f"{r['id']}#{n}" if n else r["id"]) for n in range(rounds) for r, c in out if n < c]


def mix_counts(mix: Sequence[dict]) -> dict[str, int]:
    """Distinct prompts in mix_records' output (copies carry an id suffix '#n')."""
    firsts = [r for r in mix if "#" not in r["id"]]
    return {"refusals": sum(r["kind"] == "harmful" for r in firsts), "benign": sum(r["kind"] == "benign" for r in firsts)}


def encode_records(tokenizer, records: Sequence[dict], max_length: int) -> list[dict]:
    """distill.dataset.encode, plus what the phase's objective reads: `avoid` (position and token of the
    unlikelihood term: where the response and the text it must not become part ways), `group` (kind/category:
    the decision hint's groups) and `refuse` (a refusal: the refusal weight)."""
    from edgedistill.distill.dataset import encode
    from edgedistill.models.generate import turn_end
    from edgedistill.tensors import IGNORE

    end = turn_end(tokenizer)
    by_id = {r["id"]: r for r in records}
    examples = encode(tokenizer, records, max_length).examples
    for ex in examples:
        rec = by_id[ex["id"]]
        start = next(t for t, x in enumerate(ex["labels"]) if x != IGNORE)  # last prompt position
        if rec.get("avoid"):
            r_ids = tokenizer(rec["response"] + end, add_special_tokens=False).input_ids
            a_ids = tokenizer(rec["avoid"] + end, add_special_tokens=False).input_ids
            j = next((j for j, (a, r) in enumerate(zip(a_ids, r_ids)) if a != r), None)
            if j is not None and start + j < len(ex["input_ids"]) - 1:
                ex["avoid"] = [start + j, a_ids[j]]  # position, token to push down there
        if rec.get("kind"):
            ex["group"] = f"{rec['kind']}/{rec.get('category', '')}"
            if rec["kind"] == "harmful":
                ex["refuse"] = True
    return examples


def collate_records(examples: Sequence[dict], pad_id: int) -> dict:
    """tensors.collate plus `avoid` (B, 2; -1 for none) and `refuse` (B,) bool."""
    import torch

    from edgedistill.tensors import collate

    batch = collate(examples, pad_id)
    batch["avoid"] = torch.tensor([e.get("avoid", [-1, -1]) for e in examples])
    batch["refuse"] = torch.tensor([bool(e.get("refuse")) for e in examples])
    return batch


def safety_trainer(hint, s: ReapplySettings):
    """train()'s trainer_factory: the generic DistillTrainer with the phase's objective."""

    def factory(base, device):
        class SafetyTrainer(base):
            def __init__(self, *args, hint=None, **kw):
                super().__init__(*args, **kw)
                self.hint = hint

            def objective(self, model, inputs, on_policy: bool):
                import torch

                from edgedistill.tensors import IGNORE
                from edgedistill.distill.losses import LossSettings, masked_sum, per_token_objective
                from edgedistill.safety.hint import capturing, hidden_after, last_prompt_index, prompt_mask

                ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
                grab = (capturing(self.accelerator.unwrap_model(model), self.hint.student_layer)
                        if self.hint is not None else contextlib.nullcontext({}))
                with grab as student_hidden:
                    out = model(input_ids=ids, attention_mask=mask)
                per_token = per_token_objective(LossSettings(kd_weight=0.0), out.logits, None, labels)
                resp = labels != IGNORE
                total = masked_sum(per_token, resp)  # cross-entropy on the record's response
                if s.decision_weight != 1 or s.refusal_weight != 1:
                    # The answer is decided by its first tokens (refusal or not): weigh them more, so the gradient
                    # goes to telling the kinds of prompt apart rather than to the rest of the text.
                    first = resp.int().argmax(1, keepdim=True)
                    pos = torch.arange(labels.shape[1], device=labels.device)[None, :]
                    head = resp & (pos < first + s.decision_tokens)
                    weight = torch.full((labels.shape[0],), s.decision_weight, device=per_token.device)
                    weight = torch.where(inputs["refuse"].to(weight.device), weight * s.refusal_weight, weight)
                    total = total + masked_sum(per_token * (weight - 1)[:, None], head)
                if self.hint is not None:
                    t_hidden = hidden_after(self.teacher, self.hint.teacher_layer, ids, mask)
                    if s.hint_weight:
                        total = total + s.hint_weight * self.hint.loss(student_hidden["h"], t_hidden,
                                                                       prompt_mask(labels, mask))
                    if s.hint_decision_weight:
                        rows = torch.ones(len(ids), dtype=torch.bool, device=labels.device)
                        total = total + s.hint_decision_weight * self.hint.decision_loss(
                            student_hidden["h"], t_hidden, rows, last_prompt_index(labels, mask))
                avoid = inputs["avoid"]
                rows = (avoid[:, 0] >= 0).nonzero().squeeze(1).to(ids.device)
                if len(rows) and s.avoid_weight:
                    where, tok = avoid[rows, 0].to(ids.device), avoid[rows, 1].to(ids.device)
                    p = out.logits[rows, where].float().softmax(-1).gather(1, tok[:, None]).squeeze(1)
                    total = total - s.avoid_weight * torch.log1p(-p.clamp(max=1 - 1e-6)).sum()
                return total, out

        return SafetyTrainer, {"hint": hint.to(device) if hint is not None else None}

    return factory


def reapply(s: ReapplySettings, *, teacher=None, progress=None, resume: bool = False, echo=None) -> dict:
    """The whole stage: the teacher answers the look-alikes (resumable, OUT/safety-benign.jsonl), the phase trains
    from `s.student` (checkpoints in OUT/checkpoints, metrics in OUT/metrics.jsonl), the checkpoint picked on the
    validation slice (or the last) goes to OUT/student with reapply.json and settings.yaml, in one rename.
    `teacher`: an already loaded (model, tokenizer) of s.teacher. Returns the report (reapply.json)."""
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.data.load import load_prompts, read_jsonl
    from edgedistill.distill.settings import LossSettings
    from edgedistill.distill.train import train
    from edgedistill.models.locate import load_model
    from edgedistill.paths import atomic_dir, check_writable_dir
    from edgedistill.safety.hint import check_layers, default_layers, fit_hint_map
    from edgedistill.safety.select import checkpoint_picker

    say = echo or log.info
    out = Path(s.out)
    final = out / "student"
    if final.exists():
        raise EdgeDistillError(f"{final} already exists: this run is finished; choose another --out")
    check_writable_dir(out, "--out")
    train_split = load_suite("train", s.data_dir)
    held = holdout(train_split, s.holdout) if s.holdout else []
    held_ids = {p.id for p in held}
    t_pair = teacher or load_model(s.teacher)
    s_pair = load_model(s.student)
    student, tok = s_pair
    layers = s.hint_layers or default_layers(student.config.num_hidden_layers, t_pair[0].config.num_hidden_layers)
    if s.hinted:
        check_layers(layers, student.config.num_hidden_layers, t_pair[0].config.num_hidden_layers)

    # the teacher answers every benign train prompt (the held-out ones too: the file is reusable across slices)
    kinds = {p.id: p.kind for p in train_split}
    prompts = [p for p in load_prompts(suite_dir(s.data_dir) / "train.jsonl")[0] if kinds.get(p.id) == "benign"]
    answers_path = out / "safety-benign.jsonl"
    generate(s.teacher, prompts, answers_path, DecodeSettings(max_new_tokens=s.answer_tokens), loaded=t_pair,
             progress=progress)
    benign = {r["id"]: r["response"] for _, r in read_jsonl(answers_path) if isinstance(r, dict) and "response" in r}
    mix = [r for r in mix_records(train_split, benign, s.repeat, s.benign_repeat)
           if r["id"].split("#")[0] not in held_ids]
    counts = mix_counts(mix)
    say(f"safety phase: {counts['refusals']} refusals x{s.repeat}, {counts['benign']} look-alikes x{s.benign_repeat} "
        f"({len(mix)} records; teacher answers that refuse are left out), {len(held)} held-out prompts")
    examples = encode_records(tok, mix, s.max_length)
    cfg = TrainSettings(steps=s.steps, batch_size=s.batch_size, grad_accum=s.grad_accum, lr=s.lr,
                        warmup_steps=s.warmup_steps, max_length=s.max_length, save_steps=s.save_steps, logging_steps=10,
                        seed=s.seed, precision="fp32", kd_chunk=0)
    hint = None
    if s.hinted:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        hint = fit_hint_map(t_pair[0], student, examples, pad, tuple(layers), decision=s.hint_decision_weight > 0)
        log.info("hint: student block %d -> teacher block %d, fitted on %d records", *layers, len(examples))
    best = out / ".best"
    picker = checkpoint_picker(held, tok, s.pick_every, best, s.judge_tokens, log=say) if s.pick_every else None
    from edgedistill.models.fingerprint import spec_fingerprint

    inputs = {"teacher": spec_fingerprint(s.teacher), "student_init": spec_fingerprint(s.student),
              "settings": s.to_dict()}
    inputs["settings"].pop("steps", None)  # the budget may change on --resume
    model, trainer = train(t_pair if s.hinted else (None, t_pair[1]), s_pair, examples, out,
                           LossSettings(kd_weight=0.0), cfg, resume=resume, progress=progress,
                           extra_callbacks=[picker] if picker else (), trainer_factory=safety_trainer(hint, s),
                           collator=collate_records, inputs=inputs)
    report = {"student_init": str(s.student), "teacher": s.teacher, "steps": trainer.state.global_step,
              "records": len(mix), **counts, "held_out": {"harmful": sum(p.kind == "harmful" for p in held),
                                                          "benign": sum(p.kind == "benign" for p in held)},
              "hint_layers": list(layers) if s.hinted else None,
              "picked": picker.best if picker else None, "curve": picker.curve if picker else []}
    with atomic_dir(final) as tmp:
        if picker:
            shutil.rmtree(tmp)
            best.rename(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            from edgedistill.models.locate import save_tokenizer

            save_tokenizer(tok, tmp)
        (tmp / "reapply.json").write_text(json.dumps(report, indent=2) + "\n")
        write_settings(s, tmp / "settings.yaml")
    write_settings(s, out / "settings.yaml")
    return report
