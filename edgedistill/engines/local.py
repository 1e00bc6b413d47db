"""The torch engine: the teacher's transformers model in this process, float32."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from edgedistill.engines import Answer, Engine, EngineSpec, register


def answers(model, tokenizer, conversations: Sequence[Sequence[dict]], settings, *, max_prompt_tokens=None,
            logprobs: int = 0) -> Iterator[Answer]:
    """Answer each conversation with `model`, batch by batch, as the batches finish. Prompts are sorted by length
    so a batch holds similar lengths (less padding), and left-padded, as decoder-only generation needs. With
    `logprobs` > 0 each answer carries the top-k log-probabilities of every generated token."""
    import torch

    from edgedistill.tensors import left_pad
    from edgedistill.engines import plan, topk_rows

    encoded, too_long, todo = plan(tokenizer, conversations, max_prompt_tokens)
    for i in too_long:
        yield Answer(i, None, 0, "prompt_too_long")
    from edgedistill.models.families import end_of_generation_ids

    ends = end_of_generation_ids(model, tokenizer)  # Gemma's <end_of_turn>, Llama 3's <|eot_id|>, ... with eos
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else ends[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if settings.sample:
        torch.manual_seed(settings.seed)
    for start in range(0, len(todo), settings.answer_batch):
        idx = todo[start : start + settings.answer_batch]
        ids, mask = left_pad([encoded[i] for i in idx], pad, model.device)  # (B, T), where the model is
        width = ids.shape[1]
        kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.sample, pad_token_id=pad,
                      eos_token_id=ends, return_dict_in_generate=True, output_logits=logprobs > 0)
        if settings.sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, **kwargs)
        new = out.sequences[:, width:]  # (B, new_tokens)
        steps = torch.stack(out.logits, 1).float().log_softmax(-1).cpu().numpy() if logprobs else None  # (B, n, V)
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            stop = next((n for n, t in enumerate(toks) if t in ends), None)
            if stop is not None:
                n, finish = stop, "stop"
                kept = toks[: n + 1]
            else:
                toks = [t for t in toks if t != pad] if pad != eos else toks
                n, finish, kept = len(toks), "length", toks
            text = tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
            a = Answer(i, text, n, finish, tokens=kept)
            if steps is not None:
                top_ids, top_lp = topk_rows(steps[row, : len(kept)], logprobs)
                a.topk_ids, a.topk_logprobs = top_ids.tolist(), top_lp.tolist()
            yield a


@register("torch")
class TorchEngine(Engine):
    model: object = None

    @classmethod
    def open(cls, spec: EngineSpec, *, loaded=None) -> TorchEngine:
        from edgedistill.models.locate import load_model, resolve

        ref = resolve(spec.model, pull=True)
        teacher_id, fp, settings = cls.identity(spec)
        e = cls(spec, teacher_id=teacher_id, fingerprint=fp, settings=settings)
        e.model, e.tokenizer = loaded or load_model(ref, trust_remote_code=spec.trust_remote_code)
        e.context = int(getattr(e.model.config, "max_position_embeddings", 2048))
        return e

    @classmethod
    def identity(cls, spec: EngineSpec) -> tuple[str, str, dict]:
        """Records made by this engine carry no engine settings: data from before the engines stays valid."""
        from edgedistill.models.fingerprint import spec_fingerprint
        from edgedistill.models.locate import resolve

        ref = resolve(spec.model, pull=True)
        return ref.name or ref.spec, spec_fingerprint(ref), {}

    def answer(self, conversations, gen, *, logprobs=0, max_prompt_tokens=None):
        return answers(self.model, self.tokenizer, conversations, gen, max_prompt_tokens=max_prompt_tokens,
                       logprobs=logprobs)

    def score(self, examples, k, *, batch_size=4, progress=None):
        return score_rows(self.model, self.tokenizer, examples, k, batch_size=batch_size)


def score_rows(model, tokenizer, examples, k: int, *, batch_size: int = 4):
    """Per example, teacher-forced through `model`: (ids (n, k), logprobs (n, k)) at its n response positions."""
    import torch

    from edgedistill.tensors import IGNORE, collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    dev = model.device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        b = collate(chunk, pad)
        with torch.inference_mode():
            logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
            top = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)  # (B, T, k), sorted
        for row in range(len(chunk)):
            m = (b["labels"][row] != IGNORE).to(dev)
            yield top.indices[row][m].cpu().numpy(), top.values[row][m].cpu().numpy()
