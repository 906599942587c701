"""Explainer / simulator backends behind one small interface, picked by name:

- ``baseline``: the offline token-lookup explainer and the simulator that reads its table back (no model at all);
- ``openai:<model>``: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, OpenRouter) at ``base_url``,
  key from an environment variable; timeouts, retries with exponential backoff. Errors raise BackendError and
  are recorded as failures by the pipeline, never turned into scores.
- ``hf:<model spec>``: an in-process transformers model (the embedded models included), with exact prompt
  logprobs, so the original all-at-once simulator works without any API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

log = logging.getLogger(__name__)

DIGITS = [str(i) for i in range(11)]
GONE_AFTER = 3
"""Requests in a row without any answer after which a run stops (BackendGone)."""


class BackendError(Exception):
    """A failed or unparseable call; counted as a failure."""


class BackendGone(Exception):
    """The server stopped answering altogether (several requests in a row failed on the connection): the run stops
    with what it has saved, instead of spending retries on every remaining unit."""


class Backend(ABC):
    """Explains units and simulates explanations; the language-model backends do it through `chat` (and prompt
    logprobs where they have them), the offline baseline overrides `explain` and `simulate` directly."""

    name: str = ""
    usage: dict[str, int]
    is_llm: ClassVar[bool] = True
    """Whether this is a language model (then delphi-style detection/fuzzing are asked of it as well)."""

    @abstractmethod
    def chat(self, messages: list[dict[str, str]], max_tokens: int = 60, temperature: float = 0.0) -> str: ...

    def explain(self, records: list[dict[str, Any]], style: str = "tdb") -> str:
        """One explanation from the explainer's records (TDB or delphi prompt style)."""
        from saescope.interp.prompts import delphi_explain_messages, explain_messages, parse_explanation

        msgs = delphi_explain_messages(records) if style == "delphi" else explain_messages(records)
        text = parse_explanation(self.chat(msgs, max_tokens=60))
        if not text:
            raise BackendError("empty explanation")
        return text

    def simulate(self, explanation: str, tokens: list[str]) -> tuple[list[float], str]:
        """(predicted activations on the 0–10 scale, method); raises BackendError on failure."""
        from saescope.interp.simulate import simulate_with_llm

        return simulate_with_llm(self, explanation, tokens)

    def digit_distributions(self, prompt: str, offsets: list[int]) -> list[dict[int, float]] | None:
        """For each character offset, the next-token distribution over '0'…'10' (renormalised), or None when
        the backend cannot give prompt logprobs."""
        return None


class OpenAIBackend(Backend):
    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0) -> None:
        import httpx

        self.name, self.model = f"openai:{model}", model
        self.base_url, self.retries, self.backoff = base_url.rstrip("/"), retries, backoff
        self.api_key_env = api_key_env
        self.has_key = bool(os.environ.get(api_key_env, ""))
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self._lock = threading.Lock()
        self._unreachable = 0
        """Requests in a row whose every attempt failed on the connection (reset by any answer)."""

    def check(self, wait: float = 10.0) -> None:
        """Reach the server once, before any unit is read: a missing or refused key, a refused connection or a
        server that accepts and never answers is one SaescopeError within `wait` seconds, instead of minutes of
        retries per unit recorded as failures. GET /models is free on OpenAI, vLLM and llama.cpp; any other answer
        (even 404 or 501 from a server without that route) shows the server is there."""
        import httpx

        from saescope.errors import SaescopeError

        fix = f"set ${self.api_key_env} (or name another variable with --api_key_env)"
        if not self.has_key and "api.openai.com" in self.base_url:
            raise SaescopeError(f"{self.name} needs an API key and ${self.api_key_env} is not set; {fix}")
        try:
            r = self.client.get(f"{self.base_url}/models", timeout=httpx.Timeout(wait, connect=min(wait, 5.0)))
        except httpx.TimeoutException:
            raise SaescopeError(f"{self.base_url}: no answer within {wait:g} s; check that the server is up and "
                                f"--base_url is right (or raise --timeout)") from None
        except httpx.HTTPError as e:
            raise SaescopeError(f"{self.base_url}: cannot reach the server ({type(e).__name__}: {e}); check that it "
                                f"is running and --base_url is right") from None
        if r.status_code in (401, 403):
            why = "no API key was sent" if not self.has_key else f"the key in ${self.api_key_env} was refused"
            raise SaescopeError(f"{self.base_url}: HTTP {r.status_code}, {why}; {fix}")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self._unreachable >= GONE_AFTER:  # units still queued behind the one that found the server gone
            raise BackendGone(f"{self.base_url}: no answer; stopped")
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.client.post(f"{self.base_url}{path}", json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            self._unreachable = 0  # an answer, whatever its status
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise BackendError(f"HTTP {r.status_code} from {self.base_url}{path}: {r.text[:200]}")
            try:
                data = r.json()
            except ValueError:
                raise BackendError(f"non-JSON answer from {self.base_url}{path}") from None
            with self._lock:
                u = data.get("usage") or {}
                self.usage["prompt_tokens"] += int(u.get("prompt_tokens", 0))
                self.usage["completion_tokens"] += int(u.get("completion_tokens", 0))
                self.usage["requests"] += 1
            return data
        if last.startswith(("Connect", "ReadTimeout", "Remote", "ReadError", "WriteError", "PoolTimeout")):
            with self._lock:
                self._unreachable += 1
                if self._unreachable >= GONE_AFTER:
                    raise BackendGone(f"{self.base_url}: {GONE_AFTER} requests in a row got no answer ({last}); "
                                      f"stopped, with every finished unit saved: re-run when the server is back")
        raise BackendError(f"{self.base_url}{path} failed after {self.retries + 1} attempts ({last})")

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 60, temperature: float = 0.0) -> str:
        data = self._post("/chat/completions", {"model": self.model, "messages": messages,
                                                "max_tokens": max_tokens, "temperature": temperature})
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError("answer has no choices[0].message.content") from None

    def digit_distributions(self, prompt: str, offsets: list[int]) -> list[dict[int, float]] | None:
        """Legacy completions with echo + logprobs (vLLM, llama.cpp); None when the server does not offer them."""
        try:
            data = self._post("/completions", {"model": self.model, "prompt": prompt, "max_tokens": 0, "echo": True,
                                               "logprobs": 15})
            lp = data["choices"][0]["logprobs"]
            starts, tops = lp["text_offset"], lp["top_logprobs"]
        except (BackendError, KeyError, IndexError, TypeError):
            return None
        out = []
        for off in offsets:
            idx = next((i for i, s in enumerate(starts) if s >= off), None)
            top = tops[idx] if idx is not None and tops[idx] else {}
            out.append(_digits_from_logprobs(top))
        return out


def _digits_from_logprobs(top: dict[str, float]) -> dict[int, float]:
    import math

    probs = {int(t.strip()): math.exp(v) for t, v in top.items() if t.strip() in DIGITS}
    z = sum(probs.values())
    return {k: p / z for k, p in probs.items()} if z > 0 else {}


class HFBackend(Backend):
    def __init__(self, spec: str, hm: Any = None) -> None:
        from saescope.models import load_model

        self.name = f"hf:{spec}"
        self.hm = hm or load_model(spec)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        tok = self.hm.tokenizer
        self.digit_ids = {}
        for d in DIGITS:
            ids = tok(d, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                self.digit_ids[int(d)] = ids[0]
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 60, temperature: float = 0.0) -> str:
        import torch

        tok = self.hm.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
        else:
            text = "\n\n".join(m["content"] for m in messages)
            ids = tok(text, return_tensors="pt").input_ids
        with self._lock, torch.no_grad():
            out = self.hm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                         do_sample=temperature > 0, temperature=temperature or None,
                                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
        gen = out[0, ids.shape[1]:]
        self.usage["prompt_tokens"] += int(ids.shape[1])
        self.usage["completion_tokens"] += int(gen.shape[0])
        self.usage["requests"] += 1
        return tok.decode(gen, skip_special_tokens=True)

    def digit_distributions(self, prompt: str, offsets: list[int]) -> list[dict[int, float]] | None:
        """One forward pass over the prompt; at each offset, p(next token = digit) from the preceding position."""
        import torch

        tok = self.hm.tokenizer
        enc = tok(prompt, return_offsets_mapping=True, return_tensors="pt")
        starts = [s for s, _ in enc["offset_mapping"][0].tolist()]
        positions = []
        for off in offsets:
            pos = next((i for i, s in enumerate(starts) if s >= off), None)
            positions.append(pos - 1 if pos else None)
        keep = sorted({p for p in positions if p is not None})
        if not keep:
            return [{} for _ in offsets]
        with self._lock, torch.no_grad():
            # unembed only where a digit is predicted: the vocabulary projection dominates a long prompt otherwise
            logits = self.hm.model(input_ids=enc["input_ids"], use_cache=False,
                                   logits_to_keep=torch.tensor(keep)).logits[0]  # [len(keep), V]
        self.usage["prompt_tokens"] += int(enc["input_ids"].shape[1])
        self.usage["requests"] += 1
        ids = torch.tensor(list(self.digit_ids.values()))
        row = {p: i for i, p in enumerate(keep)}
        out = []
        for p in positions:
            if p is None:
                out.append({})
                continue
            probs = logits[row[p]].float().softmax(-1)[ids]
            probs = probs / probs.sum().clamp_min(1e-30)
            out.append({d: float(v) for d, v in zip(self.digit_ids, probs)})
        return out


def check_backend_name(name: str, option: str, same: bool = False) -> None:
    """A backend name's grammar (not whether it works): checked where the option is parsed, before any work."""
    from saescope.errors import SaescopeError

    kind, _, arg = name.partition(":")
    if name in ("baseline", "") or (same and name == "same") or (kind in ("openai", "hf") and arg.strip()):
        return
    also = ", same" if same else ""
    raise SaescopeError(f"{option} '{name}': use baseline, openai:<model> or hf:<model spec>{also}")


def make_backend(name: str, base_url: str = "", api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 3, hm: Any = None, check: bool = True) -> Backend:
    """'baseline' (offline); 'openai:<model>' (its server is reached once here unless check=False); 'hf:<spec>'."""
    from saescope.errors import SaescopeError

    if name in ("baseline", ""):
        from saescope.interp.baseline import BaselineBackend

        return BaselineBackend()
    kind, _, arg = name.partition(":")
    if kind == "openai" and arg:
        b = OpenAIBackend(arg, base_url or "https://api.openai.com/v1", api_key_env, timeout, retries)
        if check:
            b.check(min(timeout, 10.0))
        return b
    if kind == "hf" and arg:
        return HFBackend(arg, hm=hm if hm is not None and arg in ("default", getattr(hm, "name", None)) else None)
    raise SaescopeError(f"backend '{name}': use baseline, openai:<model> or hf:<model spec>")
