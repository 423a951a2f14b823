"""One client for the language models that write and judge: labels, explanations, autointerp scoring, LLM judges.

    chat = OpenAIChat("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B")   # any OpenAI-compatible endpoint
    chat.check("or pass a local model")                               # one line naming the fallback if it is down
    chat = HFChat(model, tokenizer)                                   # or a local Hugging Face causal LM
    chat.complete("Say hi.", max_tokens=5)                            # greedy text
    HFChat(model, tokenizer).yes_probability(["Is the sky blue? Answer yes or no."])   # [0.93]

Both answer greedily, through the chat template when the model has one. ``system`` (constructor or class attribute)
is sent as a system message before every prompt. ``yes_probability`` (local models only) reads the first answer
token's distribution: p(yes) / (p(yes) + p(no)), summed over the first tokens of the spellings "yes", "Yes", " yes",
" Yes" (and the same for no) that the two words do not share, one forward per prompt batch with no generation, so an
answer is never unreadable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from qwenscope.errors import QwenscopeError
from qwenscope.models.batching import pad_ids
from qwenscope.models.partial import logits_at


class Chat(Protocol):
    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        """The model's answer to one user message."""
        ...


def strip_thinking(answer: str) -> str:
    """``answer`` without ``<think>…</think>`` blocks (reasoning models)."""
    return re.sub(r"<think>.*?</think>", "", answer, flags=re.S)


def says_yes(answer: str) -> bool:
    """Whether an answer starts with yes (quotes, stars and thinking blocks aside)."""
    return strip_thinking(answer).strip().lower().lstrip("\"'*").startswith("yes")


class OpenAIChat:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (``qwenscope serve``, vLLM, llama.cpp, Ollama, OpenAI
    ...), via httpx. ``base_url`` ends in ``/v1``; ``api_key`` defaults to ``$OPENAI_API_KEY`` (none is sent if
    neither is set)."""

    system: str | None = None

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        system: str | None = None,
    ) -> None:
        import httpx

        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = base_url
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.client = httpx.Client(headers=headers, timeout=timeout)
        if system is not None:
            self.system = system

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": prompt}]

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        import httpx

        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens, "messages": self._messages(prompt)}
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except httpx.HTTPError as error:
            raise QwenscopeError(f"the endpoint {self.url} failed ({error}); check the URL, model and key") from None
        except (KeyError, IndexError, TypeError, ValueError):
            raise QwenscopeError(f"{self.url} did not answer like /v1/chat/completions; check the base URL") from None

    def check(self, fallback: str, what: str = "LLM") -> None:
        """Raise one line naming ``fallback`` unless the endpoint answers a one-token request."""
        import httpx

        body = {"model": self.model, "max_tokens": 1, "messages": [{"role": "user", "content": "Say yes."}]}
        try:
            self.client.post(self.url, json=body).raise_for_status()
        except httpx.HTTPStatusError as e:
            raise QwenscopeError(
                f"the {what} endpoint {self.url} answered HTTP {e.response.status_code}; check the URL and model "
                f"name, or {fallback}"
            ) from None
        except httpx.HTTPError as e:
            raise QwenscopeError(
                f"the {what} endpoint {self.url} is unreachable ({type(e).__name__}); {fallback}"
            ) from None


class HFChat:
    """A local Hugging Face causal LM, greedy, prompted through its chat template when it has one."""

    system: str | None = None

    def __init__(self, model: Any, tokenizer: Any, *, system: str | None = None, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        if system is not None:
            self.system = system

    def _ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            head = [{"role": "system", "content": self.system}] if self.system else []
            messages = [*head, {"role": "user", "content": prompt}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = f"{self.system}\n\n{prompt}\n" if self.system else f"{prompt}\n"
        return list(tok(text)["input_ids"])

    @torch.no_grad()
    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        tok = self.tokenizer
        ids = torch.tensor([self._ids(prompt)], device=self.model.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

    def _answer_tokens(self, words: Sequence[str]) -> list[int]:
        ids = set()
        for w in words:
            for spelling in (w, w.capitalize(), " " + w, " " + w.capitalize()):
                pieces = self.tokenizer(spelling, add_special_tokens=False)["input_ids"]
                if pieces:
                    ids.add(int(pieces[0]))
        return sorted(ids)

    @torch.no_grad()
    def yes_probability(self, prompts: Sequence[str]) -> list[float]:
        """Per prompt, p(yes) / (p(yes) + p(no)) of the first answer token (the module doc)."""
        yes_ids, no_ids = set(self._answer_tokens(["yes"])), set(self._answer_tokens(["no"]))
        yes, no = sorted(yes_ids - no_ids), sorted(no_ids - yes_ids)  # a shared first token (" ") tells nothing
        if not yes or not no:
            raise QwenscopeError("this tokenizer spells yes and no with the same first tokens; score by list answers")
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = [self._ids(p) for p in prompts[start : start + self.batch_size]]
            ids, mask = pad_ids(rows)  # right-padded: the real tokens never see the padding
            last = torch.zeros_like(mask)
            last[torch.arange(len(rows)), mask.sum(1) - 1] = True
            with logits_at(self.model, last):
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
            logp = F.log_softmax(logits.logits[0].float(), dim=-1)  # (rows, vocab), row-major
            odds = torch.logsumexp(logp[:, yes], -1) - torch.logsumexp(logp[:, no], -1)
            out += torch.sigmoid(odds).tolist()
        return out
